"""The `archc` command: check, build and render .arch specs; run search, compress and train plans.

Exit status: 0 ok, 1 errors in a spec, 2 wrong command-line use.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .compiler.diagnostics import CompileError, Diagnostic


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(_usage(f"{what} takes NAME=VALUE, got `{item}`"))
        out.append((name, value))
    return out


def _usage(msg: str) -> int:
    print(f"archc: error: {msg}", file=sys.stderr)
    return 2


def _value(text: str):
    """A --set value, read as an .arch expression (`64`, `true`, `[1, 2]`, `relu`); else a string."""
    from .compiler.elaborate import Elaborator, Scope
    from .compiler.resolve import Program as Resolved
    from .grammar.parser import parse

    try:
        tree = parse(f"let __value = {text}", "<--set>")
        (decl,) = tree.decls
    except (CompileError, ValueError):
        return text  # not an expression: a string
    try:
        return Elaborator(Resolved("<--set>")).eval(decl.value, Scope("", "--set", ()))
    except CompileError as e:
        if e.diagnostics[0].code == "E0201":  # a bare word: a string
            return text
        raise SystemExit(_usage(f"--set value `{text}`: {e.diagnostics[0].message}"))


def _dims(items) -> dict[str, int]:
    dims = {}
    for name, value in _pairs(items, "--dim"):
        try:
            dims[name] = int(value)
        except ValueError:
            raise SystemExit(_usage(f"--dim {name} needs a whole number, got `{value}`"))
        if dims[name] <= 0:
            raise SystemExit(_usage(f"--dim {name} must be positive"))
    return dims


def _decisions(args) -> dict:
    """--choose label=value ... and --sample SEED, as Program.graph's arguments."""
    choose = {k: v for k, v in _pairs(getattr(args, "choose", None), "--choose")}
    out: dict = {"choose": choose} if choose else {}
    if getattr(args, "sample", None) is not None:
        out["sample"] = args.sample
    if getattr(args, "relax", None):
        out["relax"] = args.relax
    return out


def _print_diagnostics(diags: list[Diagnostic], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": False, "diagnostics": [d.to_json() for d in diags]}, indent=2))
        return
    for d in diags:
        print(d.render() + "\n", file=sys.stderr)
    n = len(diags)
    print(f"error: {n} error{'s' if n != 1 else ''} found", file=sys.stderr)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- commands ------------------------------------------------------------------

def cmd_check(args) -> int:
    from . import api
    from .compiler.passes.count_cost import count_cost

    diags: list[Diagnostic] = []
    results = []
    matches = []  # with --plan: what each graph-rewriting directive matched
    settings = dict((k, _value(v)) for k, v in _pairs(args.set, "--set"))
    dims = _dims(args.dim)
    for file in args.files:
        try:
            prog = api.load(file)
        except CompileError as e:
            diags += e.diagnostics
            continue
        name_errors = prog.check_names()
        if name_errors:
            diags += name_errors
            continue
        if args.plan or args.model:
            jobs = [(args.model, args.plan)]
        else:  # every model with its defaults, and every plan
            jobs = [(m, None) for m in prog.models] + [(None, p) for p in prog.plans]
        for model, plan in jobs:
            try:
                graph = prog.graph(model, plan=plan, dims=dims, args=settings, strict=False)
                if plan is not None:  # a search plan: objectives, constraints, storage, data
                    from .search.config import check_search_plan

                    plan_diags = check_search_plan(prog, plan)
                    if plan_diags:
                        diags += plan_diags
                        continue
                    from .compress.check import check_compress_plan  # no torch: E08xx

                    plan_diags = check_compress_plan(prog, plan)
                    if plan_diags:
                        diags += plan_diags
                        continue
                    if prog.plan(plan).kind in ("train", "finetune"):  # device, precision, dims: E0502, E0504
                        from .compiler.passes.estimate_memory import settings_from_plan

                        settings_from_plan(graph, prog.plan(plan))
                if graph.decisions and plan is None:  # a search space: check every candidate
                    from .compiler.space import check_space

                    space_diags = check_space(prog.space(model, dims=dims, args=settings))
                    if space_diags:
                        diags += space_diags
                        continue
                from .compiler.ops.stochastic import check_graph  # EMA targets, a train plan's inputs

                graph_diags = check_graph(graph)
                if graph_diags:
                    diags += graph_diags
                    continue
                results.append((file, count_cost(graph)))
                if args.plan and graph.plan is not None:
                    matches.append((file, _matched(graph.plan)))
            except CompileError as e:
                diags += e.diagnostics
    if args.json:
        if diags:
            _print_diagnostics(diags, True)
        else:
            print(json.dumps({"ok": True, "models": [{"file": f, **r.to_json(dims)} for f, r in results]},
                             indent=2))
    elif diags:
        _print_diagnostics(diags, False)
    else:
        for file, r in results:
            print(f"ok  {file}: {r.model}  {r.params:,} parameters")
        for file, lines in matches:
            for line in lines:
                print(line)
        for file in args.files:
            if not any(f == file for f, _ in results):
                print(f"ok  {file}: no models (its blocks are checked where they are used)")
    return 1 if diags else 0


def _matched(plan, most: int = 12) -> list[str]:
    """`  lora("h.*.attn.c_attn") matched 12: h.0.attn.c_attn, ...` per graph-rewriting directive."""
    lines = []
    for d in plan.directives:
        if d.matched is None:
            continue
        fields = list(type(d.args).model_fields)
        first = getattr(d.args, fields[0]) if fields else None
        call = f"{d.name}({json.dumps(first)})" if isinstance(first, str) else f"{d.name}()"
        shown = ", ".join(d.matched[:most]) + (f", ... ({len(d.matched)} in all)" if len(d.matched) > most else "")
        lines.append(f"  {call} matched {len(d.matched)}: {shown}")
    return lines


def cmd_build(args) -> int:
    from . import api
    from .compiler.lower.report import summary_table
    from .compiler.lower.torch import generate
    from .compiler.passes.count_cost import count_cost

    settings = dict((k, _value(v)) for k, v in _pairs(args.set, "--set"))
    dims = _dims(args.dim)
    try:
        prog = api.load(args.file)
        graph = prog.graph(args.model, plan=args.plan, dims=dims, args=settings, **_decisions(args))
        report = count_cost(graph)
        api.check_size(graph, args.allow_large)
        gen = generate(graph, os.path.basename(args.file))
        from .compiler.lower.torch import load

        module = load(gen)()  # proves the generated code runs
    except CompileError as e:
        _print_diagnostics(e.diagnostics, args.json)
        return 1
    built = sum(p.numel() for p in module.parameters())
    assert built == report.params, f"built {built} parameters, counted {report.params}"
    written = None
    if args.output:
        written = Path(args.output) / f"{gen.class_name.lower()}.py"
        write_atomic(written, gen.source)
    if args.json:
        out = report.to_json(dims)
        out["written"] = str(written) if written else None
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console

    console = Console()
    console.print(summary_table(report, dims))
    console.print(f"{report.model}: {report.params:,} parameters, built as torch.nn.Module")
    from .compiler.passes.stream_costs import stream_summary

    if (streams := stream_summary(graph, dims)) is not None:  # models with several inputs
        console.print(streams)
    if report.arch_params:
        console.print(f"architecture parameters (kept apart, `arch_parameters()`): {report.arch_params:,}")
    if report.trainable != report.params:
        console.print(f"trainable: {report.trainable:,} of {report.params:,} "
                      f"({100 * report.trainable / max(1, report.params):.2f}%)")
    console.print(_memory_line(prog, graph, args.plan, dims))
    if written:
        console.print(f"wrote {written}")
    return 0


def _memory_line(prog, graph, plan_name, dims) -> str:
    """One line of `archc mem` for `archc build`: the training step's peak and its parts."""
    from .compiler.dims import Sym
    from .compiler.passes.estimate_memory import estimate_memory

    try:
        plan = prog.plan(plan_name) if plan_name else None
        if plan is not None and plan.kind not in ("train", "finetune"):
            plan = None
        free = sorted({s for i in graph.inputs for d in graph.node(i).outputs[0].shape
                       if isinstance(d, Sym) for s in d.symbols()} - set(dims) - set(plan.dims() if plan else {}))
        r = estimate_memory(graph, plan, dims={**{k: 1 for k in free}, **dims}, solve=False)
    except CompileError as e:
        return f"memory: not estimated ({e.diagnostics[0].message})"
    at = ", ".join(f"{k}={v}" for k, v in r.dims.items())
    return (f"memory ({r.mode}, {r.settings.precision}, {r.device.name}{', ' + at if at else ''}): peak "
            f"{_bytes(r.peak)} = parameters {_bytes(r.parameters)}, gradients {_bytes(r.gradients)}, optimizer "
            f"{_bytes(r.optimizer)}, activations {_bytes(r.activations)} and the rest (`archc mem` for more)")


def _bytes(n) -> str:
    if n is None:
        return "-"
    n = int(n)
    for unit, scale in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def cmd_mem(args) -> int:
    from . import api
    from .compiler.passes.estimate_memory import estimate_memory

    settings = dict((k, _value(v)) for k, v in _pairs(args.set, "--set"))
    dims = _dims(args.dim)
    try:
        prog = api.load(args.file)
        plan = prog.plan(args.plan) if args.plan else None
        model = plan.model if plan is not None else args.model
        margs = {**(plan.args if plan is not None else {}), **settings}
        try:  # symbolic sizes let the estimate solve for the largest batch and context
            graph = prog.graph(model, args=margs)
            if plan is not None:
                from .compiler.passes.apply_plan import apply_plan

                graph = apply_plan(graph, plan)  # freeze, checkpoint marks...
        except CompileError:
            graph = prog.graph(model, plan=plan, dims=dims, args=settings)
        report = estimate_memory(graph, plan, dims=dims, device=args.device,
                                 training=False if args.inference else None, attention=args.attention)
    except CompileError as e:
        _print_diagnostics(e.diagnostics, args.json)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    _print_memory(report, args.top)
    return 0


def _print_memory(r, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    s = r.settings
    dims = ", ".join(f"{k}={v}" for k, v in r.dims.items())
    head = (f"{r.model}: {r.mode} on {r.device.name}, {s.precision}"
            + (f", {s.optimizer}" if r.mode == "training" else "")
            + (f", {s.shard} over {s.gpus} GPUs" if s.shard != "none" else "")
            + (f", accumulate {s.accumulate}" if s.accumulate > 1 else "")
            + (f", {len(s.checkpoint)} checkpointed segment(s)" if s.checkpoint else "")
            + (f"  [{dims}]" if dims else ""))
    console.print(head)

    def table(title, rows):
        t = Table(title=title, header_style="bold")
        t.add_column("path", no_wrap=True)
        t.add_column("op", no_wrap=True)
        for col in ("weights+grads+opt", "saved", "workspace", "total"):
            t.add_column(col, justify="right", no_wrap=True)
        for n in rows:
            t.add_row(n.path, n.op, _bytes(n.params + n.gradients + n.optimizer), _bytes(n.saved),
                      _bytes(n.workspace), _bytes(n.total))
        console.print(t)

    table("largest blocks", [b for _, b in r.blocks()[:top]])
    table("largest ops", r.nodes[:top])
    console.print(f"parameters  {_bytes(r.parameters):>12}   ({r.params_count:,}, trainable {r.trainable_count:,})")
    console.print(f"buffers     {_bytes(r.buffers):>12}")
    if r.mode == "training":
        console.print(f"gradients   {_bytes(r.gradients):>12}")
        console.print(f"optimizer   {_bytes(r.optimizer):>12}")
        if r.master:
            console.print(f"master      {_bytes(r.master):>12}")
        console.print(f"activations {_bytes(r.activations):>12}   (saved for backward)")
    console.print(f"inputs      {_bytes(r.inputs):>12}")
    console.print(f"peak        {_bytes(r.peak):>12}   at {r.peak_at}")
    parts = ", ".join(f"{k} {_bytes(v)}" for k, v in sorted(r.peak_parts.items(), key=lambda kv: -kv[1]))
    console.print(f"            made of {parts}")
    if r.kv_cache:
        console.print(f"KV cache    {_bytes(r.kv_cache):>12}   (decoding at the plan's batch and context)")
    if r.budget is None:
        console.print("fits        no fixed budget on this device (name a GPU with `device(...)` or --device)")
    else:
        verdict = "yes" if r.fits else "NO"
        console.print(f"fits        {verdict}: {_bytes(r.peak)} of {_bytes(r.budget)} usable "
                      f"({_bytes(r.device.memory)} less {_bytes(r.device.context_bytes)} CUDA context)")
    if r.per_sample is not None:
        console.print(f"per sample  {_bytes(r.per_sample):>12}   (+ {_bytes(r.fixed)} fixed, at the peak)")
    if r.max_batch is not None:
        console.print(f"largest {r.batch_symbol:<4}{r.max_batch:>12,}   that fits"
                      + (f" (x {s.accumulate} accumulated)" if s.accumulate > 1 else ""))
    if r.max_context is not None:
        cap = f", capped by the model's {r.context_cap} positions" if r.context_cap == r.max_context else ""
        console.print(f"largest {r.context_symbol:<4}{r.max_context:>12,}   that fits at {r.batch_symbol}="
                      f"{r.dims.get(r.batch_symbol)}{cap}")
    for a in r.assumptions:
        console.print(f"assumes: {a}", style="dim")


def cmd_render(args) -> int:
    from . import api
    from .compiler.lower.graphviz import AlphasError, check_alphas, load_alphas, render

    settings = dict((k, _value(v)) for k, v in _pairs(args.set, "--set"))
    alphas = None
    decide = _decisions(args)
    if args.alphas:  # torch is imported only for a torch file
        try:
            alphas = load_alphas(args.alphas)
        except AlphasError as e:
            return _usage(f"--alphas: {e}")
        decide.setdefault("relax", "pcdarts" if any(k.endswith("_beta") for k in alphas) else "darts")
    try:
        prog = api.load(args.file)
        graph = prog.graph(args.model, plan=args.plan, dims=_dims(args.dim), args=settings, strict=False,
                           **decide)
    except CompileError as e:
        _print_diagnostics(e.diagnostics, False)
        return 1
    if alphas is not None:
        try:
            check_alphas(graph, alphas)
        except AlphasError as e:
            return _usage(f"--alphas {args.alphas}: {e}")
    color_by = None
    if getattr(args, "color", None) == "memory":
        try:
            color_by = _memory_colours(prog, graph, args.plan, _dims(args.dim))
        except CompileError as e:
            _print_diagnostics(e.diagnostics, False)
            return 1
    dot = render(graph, color_by=color_by, alphas=alphas)
    out = Path(args.output or Path(args.file).with_suffix("." + args.format).name)
    fmt = args.format if args.output is None else (out.suffix.lstrip(".") or args.format)
    if fmt == "dot":
        write_atomic(out, dot.source)
    else:
        import graphviz

        try:
            data = dot.pipe(format=fmt)
        except graphviz.ExecutableNotFound:
            return _usage("Graphviz's `dot` is not installed (apt-get install graphviz); "
                          "`--format dot` writes the source without it")
        write_atomic(out, data)
    print(f"wrote {out}")
    return 0


def _memory_colours(prog, graph, plan_name, dims):
    """A fill colour per node from its memory (parameters, gradients, optimizer state and
    saved activations): white for none, deepening red for the largest."""
    from .compiler.dims import Sym
    from .compiler.passes.estimate_memory import estimate_memory

    plan = prog.plan(plan_name) if plan_name else None
    if plan is not None and plan.kind not in ("train", "finetune"):
        plan = None
    free = {s for i in graph.inputs for d in graph.node(i).outputs[0].shape if isinstance(d, Sym)
            for s in d.symbols()} - set(dims) - set(plan.dims() if plan else {})
    r = estimate_memory(graph, plan, dims={**{k: 1 for k in free}, **dims}, solve=False)
    by_path = {n.path: n.total for n in r.nodes}
    top = max(by_path.values(), default=0) or 1

    def colour(node):
        v = by_path.get(node.path, 0)
        if not v:
            return None
        f = (v / top) ** 0.5
        g = int(255 - 200 * f)
        return f"#ff{g:02x}{g:02x}"

    return colour


def cmd_space(args) -> int:
    from . import api
    from .compiler.space import check_space

    settings = dict((k, _value(v)) for k, v in _pairs(args.set, "--set"))
    try:
        prog = api.load(args.file)
        space = prog.space(args.model, dims=_dims(args.dim), args=settings)
    except CompileError as e:
        _print_diagnostics(e.diagnostics, args.json)
        return 1
    problems = check_space(space)
    if args.json:
        print(json.dumps({"model": space.model, "size": str(space.size),
                          "decisions": [{"label": d.label, "candidates": d.candidates,
                                         "line": d.span.line if d.span else None}
                                        for d in space.decisions.values()],
                          "diagnostics": [d.to_json() for d in problems]}, indent=2))
        return 1 if problems else 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{space.model}: {len(space.decisions)} decisions")
    table.add_column("label")
    table.add_column("candidates")
    for d in space.decisions.values():
        table.add_row(d.label, " | ".join(d.candidates))
    Console().print(table)
    print(f"size of the space: {space.size:,} architectures ({space.size:.3e})")
    if problems:
        _print_diagnostics(problems, False)
        return 1
    return 0


def cmd_sample(args) -> int:
    from . import api

    settings = dict((k, _value(v)) for k, v in _pairs(args.set, "--set"))
    decide = _decisions(args)
    if args.seed is not None:
        decide["sample"] = args.seed
    try:
        prog = api.load(args.file)
        text = prog.derive(args.model, args=settings, **decide)
    except CompileError as e:
        _print_diagnostics(e.diagnostics, False)
        return 1
    if args.output:
        write_atomic(Path(args.output), text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_fmt(args) -> int:
    """Rewrite specs in the canonical layout (archc/grammar/printer.py); a file
    that does not parse is never touched."""
    import difflib
    import stat

    from .grammar.parser import parse
    from .grammar.printer import canonical_order, print_file

    rc, diags, changed = 0, [], []
    for file in args.files:
        path = Path(file)
        try:
            data = path.read_bytes()
        except OSError as e:
            rc = max(rc, _usage(f"cannot read {file}: {e.strerror or e}"))
            continue
        try:
            tree = parse(data, file)
        except CompileError as e:
            diags += e.diagnostics
            continue
        old = data.decode("utf-8").removeprefix("\ufeff")
        try:
            new = print_file(tree)
            again = parse(new, f"{file} (formatted)")
            same = (again.decls == canonical_order(tree.decls)
                    and sorted(c.text for c in again.comments) == sorted(c.text for c in tree.comments))
        except (CompileError, ValueError, TypeError, RecursionError):
            same = False
        if not same:  # a printer bug must never cost the user their spec
            print(f"archc: error: cannot format {file} safely; left unchanged (a bug in archc fmt: please report it)",
                  file=sys.stderr)
            rc = max(rc, 1)
            continue
        if new == data.decode("utf-8"):
            continue
        changed.append(file)
        if args.diff:
            for line in difflib.unified_diff(old.splitlines(True), new.splitlines(True), file, f"{file} (formatted)"):
                sys.stdout.write(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
        if args.check:
            print(f"would reformat {file}", file=sys.stderr if args.diff else sys.stdout)
        elif not args.diff:
            target = path.resolve()  # through a symlink, keeping the file's permissions
            mode = stat.S_IMODE(target.stat().st_mode)
            write_atomic(target, new)
            os.chmod(target, mode)
            print(f"reformatted {file}")
    if diags:
        _print_diagnostics(diags, False)
        rc = max(rc, 1)
    if args.check and changed:
        rc = max(rc, 1)
    return rc


def cmd_search(args) -> int:
    """Run (or resume, or join) the search a `search` plan describes; write the best candidate."""
    from . import api
    from .search.config import load_config

    if args.trials is not None and args.trials < 1:
        return _usage("--trials must be at least 1")
    if args.threads is not None and args.threads < 1:
        return _usage("--threads must be at least 1")
    darts = False
    try:
        prog = api.load(args.file)
        name_errors = prog.check_names()
        if name_errors:
            raise CompileError(name_errors)
        cfg = load_config(prog, args.plan, storage=args.storage, trials=args.trials)
        darts = cfg.strategy == "darts"
        if not darts and (args.checkpoint or args.restart):
            return _usage("--checkpoint and --restart are for `darts` plans (a study resumes by itself)")
        from .search.driver import run_search

        extra = {"checkpoint": args.checkpoint, "resume": not args.restart} if darts else {}
        result = run_search(prog, cfg, output=args.output, progress=not (args.quiet or args.json),
                            device=args.device, threads=args.threads, verbose=not (args.quiet or args.json),
                            **extra)
    except CompileError as e:
        _print_diagnostics(e.diagnostics, args.json)
        return 1
    except KeyboardInterrupt:
        if darts:
            print("archc: search interrupted; its checkpoint keeps every finished epoch: run the same command to "
                  "resume", file=sys.stderr)
        else:
            print("archc: search interrupted; its study keeps every finished trial: run the same command to resume",
                  file=sys.stderr)
        return 130
    except ValueError as e:
        if not darts:
            raise
        from .runtime.train.darts import CheckpointMismatch  # torch is loaded: a DARTS search ran

        if not isinstance(e, CheckpointMismatch):
            raise
        print(f"archc: {e} (or pass --restart to start over)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ok": True, "study": result.study, "storage": result.storage,
                          "objectives": result.objectives, "complete": result.complete, "ran": result.ran,
                          "counts": result.counts, "seconds": round(result.seconds, 3),
                          "written": str(result.written) if result.written else None,
                          ("front" if len(result.objectives) > 1 else "best"): result.best}, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    from .search.candidates import fmt_metric

    console = Console()
    for note in cfg.notes:
        console.print(f"note: {note}")
    if darts:
        _print_darts(console, result)
        return 0
    multi = len(result.objectives) > 1
    title = (f"Pareto front of {result.study}: {len(result.best)} candidates" if multi
             else f"best of {result.study}")
    table = Table(title=title)
    table.add_column("trial", justify="right")
    names = [n for n, _ in result.objectives]
    for n, d in result.objectives:
        table.add_column(f"{n} ({d})", justify="right")
    extra = [m for m in ("test_accuracy", "params", "flops", "memory", "latency") if m not in names
             and any(m in row["metrics"] for row in result.best)]
    for m in extra:
        table.add_column(m.replace("_", " "), justify="right")
    for row in result.best:
        metrics = row["metrics"]
        cells = [str(row["trial"])] + [fmt_metric(n, row["values"][n]) for n in names]
        cells += [fmt_metric("accuracy" if m == "test_accuracy" else m, metrics.get(m)) for m in extra]
        table.add_row(*cells)
    console.print(table)
    if result.best:  # one column of decisions per trial above
        decisions = Table(title="their decisions" if multi else f"decisions of trial {result.best[0]['trial']}")
        decisions.add_column("choice")
        for row in result.best:
            decisions.add_column(f"trial {row['trial']}" if multi else "candidate", overflow="fold")
        labels = list(dict.fromkeys(k for row in result.best for k in row["arch"]))
        for k in labels:
            decisions.add_row(k, *[row["arch"].get(k, "-") for row in result.best])
        console.print(decisions)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(result.counts.items()))
    console.print(f"{result.complete} complete trials in study {result.study} ({counts}); "
                  f"this worker ran {result.ran} in {result.seconds:.1f}s")
    if result.written:
        console.print(f"wrote {result.written}")
    return 0


def _print_darts(console, result) -> None:
    """A DARTS search's result: the supernet, the derived network, its genotype, where it went."""
    from rich.table import Table

    from .search.candidates import fmt_metric

    row = result.best[0]
    m = row["metrics"]
    table = Table(title=f"darts search {result.study}")
    for col in ("epochs", "supernet accuracy", "derived params", "order", "relax", "rule"):
        table.add_column(col, justify="right")
    table.add_row(str(m["epochs"]), fmt_metric("accuracy", m.get("supernet_accuracy")),
                  fmt_metric("params", m.get("params")), str(m["order"]), str(m.get("relax", "darts")), m["rule"])
    console.print(table)
    arch = dict(row["arch"])
    genotype = arch.pop("genotype", None)
    if genotype:
        console.print("genotype:", highlight=False)
        console.print("  " + genotype.replace("\n", "\n  "), highlight=False, soft_wrap=True)
    if arch:  # op choices outside cells
        console.print("decisions:", highlight=False)
        for label, cand in arch.items():
            console.print(f"  {label} = {cand}", highlight=False, soft_wrap=True)
    done = m.get("resumed_from", 0)
    what = ("the checkpoint held the whole search" if not result.ran else
            f"resumed after {done} epoch{'s' * (done != 1)}" if done else "")
    console.print(f"checkpoint {result.storage}" + (f" ({what})" if what else "") +
                  f"; this run took {result.seconds:.1f}s", highlight=False, soft_wrap=True)
    if result.written:
        console.print(f"wrote {result.written}", highlight=False, soft_wrap=True)


def cmd_compress(args) -> int:
    """Run a `compress` plan: a before/after table; the compressed spec and weights written atomically."""
    from . import api

    if args.batch < 1:
        return _usage("--batch must be at least 1")
    try:
        prog = api.load(args.file)
        name_errors = prog.check_names()
        if name_errors:
            raise CompileError(name_errors)
        from .compress.driver import UsageError, run_compress

        quiet = args.quiet or args.json
        try:
            result = run_compress(prog, args.plan, weights=args.weights, spec_out=args.output,
                                  weights_out=args.weights_out, in_place=args.in_place, progress=not quiet,
                                  batch=args.batch, dims=_dims(args.dim),
                                  log=None if quiet else (lambda m: print(m, file=sys.stderr)))
        except UsageError as e:
            return _usage(str(e))
    except CompileError as e:
        _print_diagnostics(e.diagnostics, args.json)
        return 1
    if args.json:
        print(json.dumps({"ok": True, **result.to_json()}, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{result.model}: plan {result.plan}")
    table.add_column("")
    for st in result.stages:
        table.add_column(st.name, justify="right")

    def fmt_flops(f):
        if not isinstance(f, (int, float)):
            return str(f)
        for unit, k in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(f) >= k:
                return f"{f / k:.2f}{unit}"
        return str(f)

    rows = [("parameters", [f"{s.params:,}" for s in result.stages])]
    if any(s.nonzero != s.params for s in result.stages):
        rows.append(("nonzero", [f"{s.nonzero:,}" for s in result.stages]))
    rows += [("FLOPs (1 example)", [fmt_flops(s.flops) for s in result.stages]),
             ("bytes on disk", [_bytes(s.bytes) for s in result.stages]),
             (f"CPU latency (1 thread, batch {result.batch})", ["-" if s.latency is None else f"{s.latency * 1e3:.3f} ms"
                                                     for s in result.stages]),
             ("accuracy (test)", ["-" if s.accuracy is None else f"{100 * s.accuracy:.2f}%" for s in result.stages])]
    for name, cells in rows:
        table.add_row(name, *cells)
    console.print(table)
    if result.pruned_groups:
        console.print(f"pruned {len(result.pruned_groups)} channel group(s): "
                      + "; ".join(f"{', '.join(g['layers'][:3])}{' ...' if len(g['layers']) > 3 else ''} "
                                  f"{g['atoms']} -> {g['atoms'] - g['removed']}" for g in result.pruned_groups[:8])
                      + (" ..." if len(result.pruned_groups) > 8 else ""))
    if result.quantized or result.left_float:
        console.print(f"quantized ({result.engine}):")
        for path, op, how in result.quantized:
            console.print(f"  {path} ({op}): {how}")
        if result.left_float:
            console.print("left in float:")
            for path, op, why in result.left_float:
                console.print(f"  {path} ({op}): {why}")
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {result.spec_path} and {result.weights_path}")
    return 0


def _train_settings(plan, graph, args) -> dict:
    """A `train` plan's settings, read from its directives (no torch here): the loop's
    configuration, the data, the augmentations, where checkpoints and weights go."""
    budget, opt, seed_d = plan.one("budget"), plan.one("optimizer"), plan.one("seed")
    ev, save, members = plan.one("evaluate"), plan.one("save"), plan.one("members")
    has_loss = any(graph.node(o).path == "loss" for o in graph.outputs)
    b = budget.args if budget else None
    epochs = args.epochs if args.epochs is not None else (b.epochs if b else None)
    steps = args.steps if args.steps is not None else (b.steps if b else None)
    if epochs is None and steps is None:
        epochs = 10
    o = opt.args if opt else None
    precision = plan.one("precision")
    accumulate = plan.one("accumulate")
    seed = seed_d.args.value if seed_d else 0
    monitor = (ev.args.monitor if ev and ev.args.monitor else None) or ("loss" if has_loss else "accuracy")
    mode = (ev.args.mode if ev and ev.args.mode else None) or ("min" if monitor in ("loss",) else "max")
    patience = b.patience if b else None
    config = dict(epochs=epochs, steps=steps, optimizer=o.name if o else "adamw", lr=o.lr if o else 1e-3,
                  weight_decay=o.weight_decay if o else 0.0, momentum=o.momentum if o else 0.0,
                  betas=tuple(o.betas) if o else (0.9, 0.999),
                  precision=precision.args.mode if precision else "fp32",
                  accumulate=accumulate.args.steps if accumulate else 1,
                  eval_every=ev.args.every if ev else None, monitor=monitor, mode=mode, patience=patience,
                  restore_best=patience is not None, seed=seed, progress=not (args.quiet or args.json),
                  description=f"{plan.model} ({plan.name})")
    aug = plan.one("augment")
    augment = {k: getattr(aug.args, k) for k in type(aug.args).model_fields} if aug else {}
    spec = Path(args.file)
    stem = spec.parent / f"{spec.stem}.{plan.name}"

    def where(given, planned, default):  # the command line's path, the plan's (relative to the spec), or default
        if given:
            return str(given)
        if planned:
            return planned if Path(planned).is_absolute() else str(spec.parent / planned)
        return default

    checkpoint = where(args.checkpoint, save.args.path if save else None, f"{stem}.ckpt")
    weights = where(args.output, save.args.weights if save else None, f"{stem}.safetensors")
    data = plan.one("data").args
    return {"config": config, "augment": augment, "checkpoint": checkpoint, "weights": weights,
            "data": data, "batch": b.batch if b else 64, "seed": seed, "has_loss": has_loss,
            "members": members.args if members else None}


def _ensemble_members(graph) -> tuple[list[str], str] | None:
    """The labelled modules whose outputs an `ensemble` combines, and its mode (None: no ensemble)."""
    nodes = [n for n in graph.nodes() if n.op == "ensemble"]
    if len(nodes) != 1:
        return None
    n = nodes[0]
    return [graph.node(v.node).path.split(".")[0] for v in graph.in_values(n.id)], n.attrs.mode


def cmd_train(args) -> int:
    """Run a `train` plan: optimise the model's `loss` output (or its logits' cross-entropy) on
    the plan's data with the plan's optimizer, precision, accumulation and checkpointing, on
    archc's one training loop; write resumable checkpoints and the final weights."""
    from . import api
    from .compiler.ops.stochastic import check_graph

    for flag in ("epochs", "steps", "threads"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            return _usage(f"--{flag} must be at least 1")
    dims = _dims(args.dim)
    try:
        prog = api.load(args.file)
        name_errors = prog.check_names()
        if name_errors:
            raise CompileError(name_errors)
        plan = prog.plan(args.plan)
        if plan.kind != "train":
            return _usage(f"plan `{plan.name}` is a `{plan.kind}` plan: run it with `archc {plan.kind}`"
                          if plan.kind in ("search", "compress") else
                          f"plan `{plan.name}` is a `{plan.kind}` plan; `archc train` runs `train` plans")
        if plan.one("data") is None:
            raise CompileError(Diagnostic("E1105", f"plan `{plan.name}` has no data to train on", plan.span,
                                          help="add `data(\"digits\")` or `data(\"module:function\")` to the plan"))
        graph = prog.graph(plan=args.plan, dims=dims)
        diags = check_graph(graph)
        if diags:
            raise CompileError(diags)
        api.check_size(graph, args.allow_large)
        s = _train_settings(plan, graph, args)
        ens = _ensemble_members(graph) if s["members"] is not None else None
        if s["members"] is not None and ens is None:
            raise CompileError(Diagnostic("E1104", f"plan `{plan.name}` trains ensemble members, but `{plan.model}` "
                                          "has no `ensemble(...)` (or more than one)", plan.one("members").span))
        if not s["has_loss"] and ens is None and not any(graph.node(o).path == "logits" for o in graph.outputs) \
                and len(graph.outputs) != 1:
            raise CompileError(Diagnostic("E0212", f"`{plan.model}` has no `loss` output and no `logits` to train "
                                          "with cross-entropy", plan.span,
                                          help="add `output loss = ...` (an objective op) to the model"))
        inputs = [(graph.node(i).path, tuple(d if isinstance(d, int) else None for d in graph.node(i).outputs[0].shape),
                   graph.node(i).outputs[0].dtype) for i in graph.inputs]
    except CompileError as e:
        _print_diagnostics(e.diagnostics, args.json)
        return 1

    import torch

    from .compiler.lower.torch import build_module
    from .runtime import ensemble as ens_rt
    from .runtime.data import DataError, load_data
    from .runtime.objectives import Augment, InputSpec, train, zero_shot_accuracy
    from .runtime.train import TrainConfig, seed_everything

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    d = s["data"]
    try:
        data = load_data(d.name, batch=s["batch"], seed=d.seed, val=d.val, test=d.test,
                         search_path=[str(Path(args.file).resolve().parent)], **d.kwargs())
    except DataError as e:
        print(f"archc: error: plan `{plan.name}`: {e}", file=sys.stderr)
        return 1
    config = TrainConfig(device=device, **s["config"])
    seed_everything(s["seed"])
    model = build_module(graph, os.path.basename(args.file)).to(device)
    specs = [InputSpec(*i) for i in inputs]
    aug = Augment(**s["augment"])
    summary: dict = {"plan": plan.name, "model": plan.model, "device": device}
    try:
        if ens is not None:
            members, mode = ens
            m = s["members"]
            report = ens_rt.train_members(model, members, data, config, method=m.method, shrinkage=m.shrinkage,
                                          seed=s["seed"], batch=s["batch"])
            if mode == "stack":
                ens_rt.fit_meta(model, data.val, config.but(epochs=m.meta_epochs, steps=None, lr=m.meta_lr,
                                                            weight_decay=1e-4, precision="fp32"), seed=s["seed"])
            summary.update(method=m.method, member_weights=report.member_weights,
                           val=ens_rt.accuracies(model, members, data.val) if data.val is not None else {},
                           test=ens_rt.accuracies(model, members, data.test) if data.test is not None else {})
            if report.errors:
                summary["boosting_errors"] = report.errors
        else:
            r = train(model, data, specs, config, augment=aug, checkpoint=s["checkpoint"], resume=args.resume)
            summary.update(steps=r.fit.steps, epochs=r.fit.epochs, stop_reason=r.fit.stop_reason,
                           resumed_from_epoch=r.resumed_from, best=r.fit.best, monitor=config.monitor,
                           val=r.fit.metrics, test=r.test, checkpoint=s["checkpoint"])
            if {"image_embeds", "text_embeds"} <= set(getattr(model, "output_names", ())) and data.test is not None:
                summary["test"] = {**r.test, "zero_shot_accuracy": zero_shot_accuracy(model, data, specs)}
    except KeyboardInterrupt:
        print(f"archc: training interrupted; `archc train {args.file} --plan {plan.name} --resume` continues "
              "from the last checkpoint", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError) as e:
        print(f"archc: error: plan `{plan.name}`: {e}", file=sys.stderr)
        return 1
    from safetensors.torch import save as save_safetensors

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    write_atomic(Path(s["weights"]), save_safetensors(state))
    summary["weights"] = s["weights"]
    if args.json:
        print(json.dumps({"ok": True, **summary}, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if ens is not None:
        table = Table(title=f"{plan.model}: plan {plan.name} ({summary['method']})")
        for col in ("", "validation accuracy", "test accuracy", "weight"):
            table.add_column(col, justify="right" if col else "left")
        weights = dict(zip(ens[0], summary["member_weights"]))
        for k in list(ens[0]) + ["ensemble"]:
            v, t = summary["val"].get(k), summary["test"].get(k)
            table.add_row(k if k != "ensemble" else f"ensemble ({ens[1]})", "-" if v is None else f"{100 * v:.2f}%",
                          "-" if t is None else f"{100 * t:.2f}%",
                          f"{weights[k]:.3g}" if k in weights else "")
        console.print(table)
    else:
        table = Table(title=f"{plan.model}: plan {plan.name}")
        table.add_column("metric")
        table.add_column("validation", justify="right")
        table.add_column("test", justify="right")
        keys = [k for k in dict.fromkeys(list(summary["val"]) + list(summary["test"]))
                if k not in ("count", "step", "epoch")]
        for k in keys:
            def fmt(v):
                if v is None:
                    return "-"
                return f"{100 * v:.2f}%" if "accuracy" in k else f"{v:.4f}"
            table.add_row(k, fmt(summary["val"].get(k)), fmt(summary["test"].get(k)))
        console.print(table)
        how = f"{summary['steps']} steps, {summary['epochs']} epochs"
        if summary["resumed_from_epoch"] is not None:
            how += f" (resumed at epoch {summary['resumed_from_epoch']})"
        if summary["stop_reason"]:
            how += f"; stopped early: {summary['stop_reason']}"
        console.print(how)
        console.print(f"checkpoint {summary['checkpoint']} (`--resume` continues from it)")
    console.print(f"wrote {summary['weights']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="archc", description="Compile .arch architecture specs.")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p, many=False):
        if many:
            p.add_argument("files", nargs="+", help=".arch files")
        else:
            p.add_argument("file", help="an .arch file")
        p.add_argument("--model", help="which model (default: the file's only model)")
        p.add_argument("--plan", help="apply a plan declared in the file (its model, arguments and dims)")
        p.add_argument("--set", action="append", metavar="NAME=VALUE", help="a model argument")
        p.add_argument("--dim", action="append", metavar="SYM=N", help="bind a symbolic dimension")
        p.add_argument("--choose", action="append", metavar="LABEL=VALUE",
                       help="decide a choice of a search space (a candidate as written, or its index)")
        p.add_argument("--sample", type=int, metavar="SEED", help="draw the undecided choices from a seed")
        p.add_argument("--relax", choices=["darts", "gdas", "pcdarts"],
                       help="build a search space's supernet: every cell edge and op choice a mixed op")

    p = sub.add_parser("check", help="check specs: diagnostics only (never imports torch)")
    common(p, many=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("build", help="build a model: summary table, optional generated module")
    common(p)
    p.add_argument("-o", "--output", metavar="DIR", help="write the generated module into DIR")
    p.add_argument("--allow-large", action="store_true",
                   help=f"build models over {1_000_000_000:,} parameters (allocates their weights)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("space", help="the decisions of a search space and its exact size")
    p.add_argument("file", help="an .arch file")
    p.add_argument("--model", help="which model (default: the file's only model)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="a model argument")
    p.add_argument("--dim", action="append", metavar="SYM=N", help="bind a symbolic dimension")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_space)

    p = sub.add_parser("sample", help="write one candidate of a search space as a plain .arch file")
    p.add_argument("file", help="an .arch file")
    p.add_argument("--model", help="which model (default: the file's only model)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="a model argument")
    p.add_argument("--choose", action="append", metavar="LABEL=VALUE", help="decide a choice")
    p.add_argument("--seed", type=int, help="draw the undecided choices from this seed")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of printing")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("render", help="draw a model with Graphviz")
    common(p)
    p.add_argument("-o", "--output", metavar="FILE", help="output file (format from its suffix)")
    p.add_argument("--format", default="svg", choices=["svg", "png", "pdf", "dot"])
    p.add_argument("--color", choices=["memory"], help="fill ops by what they hold in a training step")
    p.add_argument("--alphas", metavar="FILE", help="a supernet's α: a DARTS search's checkpoint "
                   "(STEM.PLAN.darts.pt), tensors (.pt, .safetensors) or JSON; edges drawn by softmax weight "
                   "(implies --relax darts)")
    p.set_defaults(fn=cmd_render)

    p = sub.add_parser("mem", help="memory of a training step (or inference): peak, make-up, fit, largest batch")
    p.add_argument("file", help="an .arch file")
    p.add_argument("--model", help="which model (default: the plan's, or the file's only model)")
    p.add_argument("--plan", help="a `train` or `finetune` plan: precision, optimizer, checkpoint, shard, device")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="a model argument")
    p.add_argument("--dim", action="append", metavar="SYM=N", help="bind a symbolic dimension")
    p.add_argument("--device", help="a device name (overrides the plan's): cpu, a100-80gb, rtx4090-24gb ...")
    p.add_argument("--attention", choices=["auto", "fused", "composite"], help="how attention runs")
    p.add_argument("--inference", action="store_true", help="a forward pass without gradients")
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows in each table (default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_mem)

    p = sub.add_parser("fmt", help="rewrite specs in the canonical layout (keeps comments)")
    p.add_argument("files", nargs="+", help=".arch files")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 listing the files that would change")
    p.add_argument("--diff", action="store_true", help="change nothing; print a unified diff of the changes")
    p.set_defaults(fn=cmd_fmt)

    p = sub.add_parser("search", help="run a search plan (resumes, and shares its study with other workers)")
    p.add_argument("file", help="an .arch file")
    p.add_argument("--plan", required=True, help="the `search` plan to run")
    p.add_argument("--trials", type=int, metavar="N", help="complete trials the study should hold (overrides the plan)")
    p.add_argument("--storage", metavar="URL", help="an Optuna storage URL (overrides the plan; default: "
                   "a SQLite file next to the spec)")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the best candidate (default: "
                   "SPEC_DIR/STEM.PLAN.best.arch)")
    p.add_argument("--device", default="auto", help="where candidates train: auto, cpu, cuda, cuda:1...")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads for this worker")
    p.add_argument("--checkpoint", metavar="FILE", help="darts: the resumable checkpoint (default: "
                   "SPEC_DIR/STEM.PLAN.darts.pt)")
    p.add_argument("--restart", action="store_true", help="darts: start over instead of resuming the checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-trial lines")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("compress", help="run a compress plan: prune, quantize, distill; a before/after table")
    p.add_argument("file", help="an .arch file")
    p.add_argument("--plan", required=True, help="the `compress` plan to run")
    p.add_argument("--weights", metavar="FILE", help="the model's trained weights (safetensors, keyed by module "
                   "path); without them the plan's data and budget train it first")
    p.add_argument("-o", "--output", metavar="FILE", help="the compressed spec (default: SPEC_DIR/STEM.PLAN.arch)")
    p.add_argument("--weights-out", metavar="FILE", help="the compressed weights (default: the spec's path with "
                   ".safetensors)")
    p.add_argument("--in-place", action="store_true", help="overwrite the original spec (and --weights)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the latency measurement (default 1)")
    p.add_argument("--dim", action="append", metavar="SYM=N", help="bind a symbolic dimension")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(fn=cmd_compress)

    p = sub.add_parser("train", help="run a train plan: optimise the model's loss output on the plan's data")
    p.add_argument("file", help="an .arch file")
    p.add_argument("--plan", required=True, help="the `train` plan to run")
    p.add_argument("--resume", action="store_true", help="continue from the plan's checkpoint (if it exists)")
    p.add_argument("--checkpoint", metavar="FILE", help="the resumable checkpoint (default: the plan's `save`, "
                   "else SPEC_DIR/STEM.PLAN.ckpt)")
    p.add_argument("-o", "--output", metavar="FILE", help="the final weights, safetensors (default: the plan's "
                   "`save(weights=...)`, else SPEC_DIR/STEM.PLAN.safetensors)")
    p.add_argument("--epochs", type=int, metavar="N", help="train for N epochs (overrides the plan's budget)")
    p.add_argument("--steps", type=int, metavar="N", help="stop after N optimizer steps (overrides the plan's budget)")
    p.add_argument("--dim", action="append", metavar="SYM=N", help="bind a symbolic dimension")
    p.add_argument("--device", default="auto", help="where to train: auto, cpu, cuda, cuda:1...")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    p.add_argument("--allow-large", action="store_true", help="build models over 1,000,000,000 parameters")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(fn=cmd_train)

    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # argparse's usage errors: exit status 2, also when called in-process
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        return args.fn(args)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    except CompileError as e:
        _print_diagnostics(e.diagnostics, getattr(args, "json", False))
        return 1


if __name__ == "__main__":
    sys.exit(main())
