"""`search` plans with `strategy("darts", ...)`: a supernet trained by DARTS's bilevel
loop, its α derived into one architecture, written back as a plain `.arch` file.

    search Digits for DartsSearch(C=8, layers=5, size=8, channels=1) {
        strategy("darts", order=2)  # order=1|2, arch_lr=3e-4, rule="darts", relax="darts"
        data("digits")             # weights on the train split, α on the validation split
        budget(epochs=10, batch=64)
        seed(0)
    }

    archc search space.arch --plan Digits          # the result table, the genotype, space.Digits.best.arch

    from archc.search.darts import run
    result = run("space.arch", "Digits", order=1)   # -> archc.search.driver.SearchResult
    result.written                                   # space.Digits.best.arch

`archc search` and `archc.search.run_search` dispatch `strategy("darts")` to
`run_darts(program, cfg, **kwargs)`: a checked plan (`load_config`) and the
keyword arguments of `run_search` (output, progress, device, threads, console,
verbose), and DARTS's own: `order` (1 or 2), `relax` (darts, gdas, pcdarts),
`rule` (a derivation rule of archc.search.derive_rules; default `pcdarts` for
relax="pcdarts", `nb201` when every cell keeps all inputs, else `darts`),
`arch_lr`, `checkpoint` (default: next to the output, `STEM.PLAN.darts.pt`) and
`resume`. Each of `order`, `relax`, `rule` and `arch_lr` is read from the plan's
`strategy(...)` (checked there, E0502 at the argument); a keyword argument here wins.

The weights train with the plan's `optimizer(...)` (default: the reference's SGD,
lr 0.025, momentum 0.9, weight decay 3e-4, gradient clipping at 5, cosine
annealing to 0.001) for `budget(epochs=...)` epochs of `batch`; `seed(...)`
seeds it. The plan's `storage` is not used: a DARTS search is one process, and
its progress is the checkpoint file (the model with α, both optimizers, the
genotypes so far, the random states, and what identifies the search), from which
a second run resumes; a checkpoint of another search (the plan changed) is refused
with CheckpointMismatch. `archc render SPEC --plan NAME --alphas STEM.PLAN.darts.pt`
draws the supernet with α.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..compiler.diagnostics import CompileError, Diagnostic
from .config import SearchConfig, load_config

DEFAULT_OPTIMIZER = {"name": "sgd", "lr": 0.025, "momentum": 0.9, "weight_decay": 3e-4}


def _strategy_args(program, cfg: SearchConfig) -> dict[str, Any]:
    """DARTS's settings as written in the plan's `strategy(...)`."""
    out = {k: cfg.options[k] for k in ("order", "relax", "rule", "arch_lr") if cfg.options.get(k) is not None}
    if out or not cfg.plan:
        return out
    d = program.plan(cfg.plan).one("strategy")  # a SearchConfig made by hand, without options
    for k in ("order", "relax", "rule", "arch_lr"):
        v = getattr(d.args, k, None) if d else None
        if v is not None:
            out[k] = v
    return out


def run(program, plan: str, **kwargs):
    """Check plan `plan` of `program` (an archc.Program or a path) and run its DARTS search."""
    from .. import api

    if isinstance(program, (str, os.PathLike)):
        program = api.load(program)
    return run_darts(program, load_config(program, plan), **kwargs)


def run_darts(program, cfg: SearchConfig, *, output: str | os.PathLike | None = None, progress: bool = True,
              device: str | None = None, threads: int | None = None, console=None, verbose: bool = True,
              order: int | None = None, relax: str | None = None, rule: str | None = None,
              arch_lr: float | None = None, checkpoint: str | os.PathLike | None = None, resume: bool = True):
    import torch
    from torch.utils.data import DataLoader

    from ..cli import write_atomic
    from ..compiler.lower.torch import build_module
    from ..runtime.data import DataError, load_data
    from ..runtime.train import Callback, TrainConfig
    from ..runtime.train.darts import DartsConfig, darts_search
    from .derive_rules import RULES, cell_layouts, derive, derive_arch
    from .driver import SearchResult

    start = time.perf_counter()
    if cfg.strategy != "darts":
        raise ValueError(f"plan `{cfg.plan}` uses strategy `{cfg.strategy}`, not `darts`")
    wrong = [o for o in cfg.objectives if o.name != "accuracy"]
    if wrong:
        raise CompileError(Diagnostic("E0524", f"`darts` optimizes the validation accuracy only; the plan also "
                                      f"asks for `{wrong[0].name}`", wrong[0].span or cfg.strategy_span,
                                      help="remove the other objectives, or use `nsga2` for several"))
    opts = {**_strategy_args(program, cfg), **{k: v for k, v in
                                                 {"order": order, "relax": relax, "rule": rule,
                                                  "arch_lr": arch_lr}.items() if v is not None}}
    order, relax = int(opts.get("order", 1)), opts.get("relax", "darts")
    at = cfg.option_spans.get
    if order not in (1, 2):
        raise CompileError(Diagnostic("E0524", f"DARTS `order` is 1 or 2, got {order}",
                                      at("order", cfg.strategy_span)))
    if relax not in ("darts", "gdas", "pcdarts"):
        raise CompileError(Diagnostic("E0524", f"unknown relaxation `{relax}`", at("relax", cfg.strategy_span),
                                      help="relaxations: darts, gdas, pcdarts"))
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device if device and device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)

    try:
        data = load_data(cfg.data, batch=cfg.batch, search_path=[str(cfg.spec.parent)], **cfg.data_args)
    except DataError as e:
        raise CompileError(Diagnostic("E0525", f"cannot load data `{cfg.data}`: {e}", cfg.data_span))
    if data.val is None:
        raise CompileError(Diagnostic("E0525", f"data `{cfg.data}` has no validation split for the architecture "
                                      "steps", cfg.data_span,
                                      help="return (train, val) or (train, val, test) from the loader"))

    graph = program.graph(cfg.model, dims=cfg.dims, args=cfg.args, relax=relax)
    torch.manual_seed(cfg.seed)
    net = build_module(graph, cfg.spec.name).to(dev)
    layouts = cell_layouts(program, cfg.model, args=cfg.args, dims=cfg.dims, relaxed=graph)
    if "rule" not in opts:
        opts["rule"] = ("pcdarts" if relax == "pcdarts" else
                        "nb201" if layouts and all(lay.keep is None for lay in layouts.values()) else "darts")
    if opts["rule"] not in RULES:
        raise CompileError(Diagnostic("E0524", f"unknown derivation rule `{opts['rule']}`",
                                      at("rule", cfg.strategy_span), help="rules: " + ", ".join(RULES)))
    keeps = [lay for lay in layouts.values() if lay.keep is not None]
    if opts["rule"] == "nb201" and keeps:  # found now, not after the search
        raise CompileError(Diagnostic("E0524", f"rule `nb201` keeps every edge, but the cells of group "
                                      f"`{keeps[0].group}` keep {keeps[0].keep} inputs per node",
                                      at("rule", cfg.strategy_span),
                                      help="use `darts` (the default for such cells), `pcdarts` or `raw`"))

    def genotype_of(alphas):
        return derive(program, cfg.model, alphas, opts["rule"], layouts=layouts).summary()

    opt = {**DEFAULT_OPTIMIZER, **(cfg.optimizer or {})}
    tc = TrainConfig(epochs=cfg.epochs or 1, steps=cfg.steps, optimizer=opt["name"], lr=opt["lr"],
                     weight_decay=opt.get("weight_decay", 0.0), momentum=opt.get("momentum", 0.0),
                     betas=tuple(opt.get("betas", (0.9, 0.999))), clip_grad=5.0, precision=cfg.precision,
                     seed=cfg.seed, device=str(dev), progress=progress,
                     description=f"{cfg.plan} (darts, order {order})")
    dc = DartsConfig(order=order, **({"arch_lr": float(opts["arch_lr"])} if "arch_lr" in opts else {}))
    out_path = Path(output) if output else cfg.spec.parent / f"{cfg.spec.stem}.{cfg.plan}.best.arch"
    ckpt = Path(checkpoint) if checkpoint else out_path.with_name(f"{cfg.spec.stem}.{cfg.plan}.darts.pt")

    class _Log(Callback):
        """After each epoch's evaluation: the supernet's accuracy and the genotype so far."""

        def on_evaluate(self, state, metrics):
            darts = state.extras.get("darts")
            if not verbose or darts is None or not darts.genotypes:
                return
            acc = metrics.get("accuracy")
            line = f"epoch {darts.start_epoch + state.epoch + 1}/{tc.epochs}"
            if acc is not None:
                line += f": supernet validation accuracy {100 * acc:.2f}%"
            console.print(line, highlight=False)
            console.print("  " + str(darts.genotypes[-1]).replace("\n", "\n  "), highlight=False, soft_wrap=True)

    if verbose and ckpt.exists() and resume:
        console.print(f"resuming from {ckpt}", highlight=False)
    # α steps on the validation split in batches of the plan's size, shuffled (evaluation keeps data.val)
    arch_data = DataLoader(data.val.dataset, batch_size=cfg.batch, shuffle=True,
                           generator=torch.Generator().manual_seed(cfg.seed + 1))
    # what makes a checkpoint this search's: a changed plan is refused, not resumed
    meta = {"spec": cfg.spec.name, "plan": cfg.plan, "model": cfg.model, "epochs": tc.epochs, "order": order,
            "relax": relax, "arch_lr": dc.arch_lr, "fingerprint": cfg.fingerprint or None}
    result = darts_search(net, data.train, arch_data, tc, dc, evaluate_on=data.val, genotype_fn=genotype_of,
                          checkpoint=ckpt, resume=resume, callbacks=[_Log()], meta=meta)
    derived = derive(program, cfg.model, result.alphas, opts["rule"], layouts=layouts)
    text = derive_arch(program, cfg.model, derived, args=cfg.args)
    params = program.check(cfg.model, decisions=derived.decisions, args=cfg.args, dims=cfg.dims).params
    acc = result.fit.metrics.get("accuracy")
    if acc is None and result.history:
        acc = result.history[-1].get("accuracy")
    metrics = {"supernet_accuracy": acc, "params": params, "epochs": result.epochs, "order": order,
               "relax": relax, "rule": opts["rule"], "resumed_from": result.resumed_from,
               "checkpoint": str(ckpt), "search_seconds": round(time.perf_counter() - start, 3),
               "history": result.history}

    header = [f"# Best candidate of `archc search {cfg.spec.name} --plan {cfg.plan}` (darts, order {order}, "
              f"{result.epochs} epoch{'s' * (result.epochs != 1)}): supernet validation accuracy "
              + (f"{100 * acc:.2f}%" if acc is not None else "-") + f", {params:,} parameters"]
    write_atomic(out_path, "\n".join(header) + "\n" + text + ("" if text.endswith("\n") else "\n"))
    in_cells = tuple(g + ".node" for g in layouts)
    arch = {"genotype": derived.summary()} if layouts else {}
    arch.update({lbl: cfg.decisions[lbl][i] if lbl in cfg.decisions else i  # op choices outside cells
                 for lbl, i in derived.decisions.items() if not lbl.startswith(in_cells)})
    row = {"trial": 0, "values": {"accuracy": acc}, "metrics": metrics, "decisions": derived.decisions,
           "arch": arch, "alphas": {k: v.tolist() for k, v in result.alphas.items()}}
    ran = int(result.epochs > result.resumed_from)  # 0: the checkpoint held the whole search
    return SearchResult(cfg.study_name or f"{cfg.spec.stem}.{cfg.plan}-darts", str(ckpt), [("accuracy", "max")],
                        1, ran, [row], out_path, time.perf_counter() - start, {"COMPLETE": 1})
