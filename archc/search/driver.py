"""The search worker: runs trials of a `search` plan against its study until the study
holds `trials` complete ones, then writes the best candidate as an `.arch` file.

Any number of workers (`archc search` processes, on any machines that reach the
storage) may run one plan at once; each takes a trial at a time under the
study's lock, so together they start exactly the trials that are missing. A
worker that is killed leaves a running trial behind; it is failed (at once on
the same machine, after its heartbeat goes stale elsewhere) and its place is
taken again, so a resumed search ends with the requested number of complete
trials.

A trial: decide a candidate (the strategy's sampler suggests each choice as it
is met), measure what the graph tells (params, flops, memory) and reject it if
a constraint breaks (state PRUNED, user attr `archc.rejected`); reuse the
values of an identical candidate that already completed (`archc.duplicate_of`);
else build the module, time it (latency), train it with
`archc.runtime.train.fit` on the plan's data reporting the validation accuracy
after each epoch (for pruners), and record the objectives. Every metric is
kept in the trial's user attrs (`archc.metrics`), the decisions as written in
`archc.arch`.
"""
from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from ..compiler.diagnostics import CompileError, Diagnostic
from ..runtime.data import Data, DataError, load_data
from ..runtime.train import Callback, TrainConfig, evaluate, fit, seed_everything
from .candidates import Candidate, broken_constraint, decide, enumerate_candidates, fmt_metric, measure_graph
from .config import GRID_LIMIT, SearchConfig
from .samplers import REJECTED_ATTR, GridArchSampler, make_pruner, make_sampler
from .storage import WORKER_ATTR, Heartbeat, StorageError, StudyLock, open_storage, reap_dead_trials, worker_id

METRICS_ATTR = "archc.metrics"
ARCH_ATTR = "archc.arch"
DUPLICATE_ATTR = "archc.duplicate_of"
ERROR_ATTR = "archc.error"
MAX_FAILURES = 5  # failed trials in a row (errors while training) before a worker gives up
POLL_S = 2.0


@dataclass
class SearchResult:
    study: str
    storage: str
    objectives: list[tuple[str, str]]
    complete: int  # complete trials in the study
    ran: int  # trials this worker ran (complete, pruned, rejected)
    best: list[dict[str, Any]]  # the best trial, or the Pareto front (first objective first)
    written: Path | None
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)  # trials by state in the study


# -- measuring a candidate -------------------------------------------------------

def _example_inputs(graph, batch: int, device) -> list[torch.Tensor]:
    from ..compiler.dims import Sym

    out = []
    for nid in graph.inputs:
        t = graph.node(nid).outputs[0]
        shape = []
        for d in t.shape:
            if isinstance(d, Sym):
                d = d.subs({"B": batch})
            if not isinstance(d, int):
                raise ValueError(f"cannot time a model whose input size `{d}` is unknown: bind it with dims(...)")
            shape.append(d)
        dtype = getattr(torch, t.dtype, torch.float32)
        out.append(torch.randn(shape, device=device).to(dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype, device=device))
    return out


@torch.no_grad()
def measure_latency(module: torch.nn.Module, inputs: list[torch.Tensor], repeats: int = 20, warmup: int = 3) -> float:
    """Median forward time in milliseconds (eval mode; CUDA is synchronised)."""
    was = module.training
    module.eval()
    sync = torch.cuda.synchronize if inputs and inputs[0].is_cuda else (lambda: None)
    try:
        for _ in range(warmup):
            module(*inputs)
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(*inputs)
            sync()
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        module.train(was)
    return statistics.median(times)


class _ReportToTrial(Callback):
    """Reports validation accuracy after each evaluation; prunes through Optuna's pruner."""

    def __init__(self, trial: optuna.Trial, report: bool):
        self.trial, self.report = trial, report

    def on_evaluate(self, state, metrics):
        if not self.report or "accuracy" not in metrics:
            return
        self.trial.report(metrics["accuracy"], len(state.history))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {len(state.history)} evaluation(s): "
                                     f"accuracy {100 * metrics['accuracy']:.2f}%")


# -- the worker ------------------------------------------------------------------

class Search:
    """One worker on one plan. `run()` returns a SearchResult."""

    def __init__(self, program, cfg: SearchConfig, *, output: str | os.PathLike | None = None,
                 progress: bool = True, device: str | None = None, threads: int | None = None,
                 console=None, verbose: bool = True):
        self.program, self.cfg = program, cfg
        self.output = Path(output) if output else cfg.spec.parent / f"{cfg.spec.stem}.{cfg.plan}.best.arch"
        self.progress_on, self.verbose = progress, verbose
        self.device = torch.device(device if device and device != "auto" else
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        if threads:
            torch.set_num_threads(threads)
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self.console = console
        self.data: Data | None = None
        self.ran = 0

    # -- setup: everything that can fail does so before the storage is touched
    def _fail(self, code: str, message: str, span, **kw):
        raise CompileError(Diagnostic(code, message, span, **kw))

    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.strategy == "darts":
            self._fail("E0524", "`darts` relaxes the choices and trains one supernet: it has no trials for a "
                       "study's workers", cfg.strategy_span,
                       help="run it with `archc.search.run_search` (or archc.search.darts.run_darts), which "
                            "dispatches `darts` to archc's DARTS trainer")
        if cfg.needs("accuracy"):
            try:
                self.data = load_data(cfg.data, batch=cfg.batch, search_path=[str(cfg.spec.parent)],
                                      **cfg.data_args)
            except DataError as e:
                self._fail("E0525", f"cannot load data `{cfg.data}`: {e}", cfg.data_span)
            if self.data.val is None:
                self._fail("E0525", f"data `{cfg.data}` has no validation split to score candidates on",
                           cfg.data_span, help="return (train, val) or (train, val, test) from the loader")
        self.grid = None
        if cfg.strategy == "grid":
            self.grid = enumerate_candidates(self.program, cfg, GRID_LIMIT)
        try:
            self.storage = open_storage(cfg.storage)
        except StorageError as e:
            self._fail("E0523", f"cannot open storage `{_redact(cfg.storage)}`: {e}", cfg.storage_span,
                       help="check the URL, that the server runs and that the database exists")
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # archc reports what matters itself
        try:
            self._open_study()
        except (CompileError, KeyboardInterrupt):
            raise
        except Exception as e:  # a database that opened but refuses the study (permissions, schema...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self._fail("E0523", f"cannot use storage `{_redact(cfg.storage)}`: {first}", cfg.storage_span,
                       help="check the database's permissions and that it holds Optuna studies only")

    def _open_study(self) -> None:
        cfg = self.cfg
        self.lock = StudyLock(self.storage, cfg.study_name)
        with self.lock:
            study = optuna.create_study(storage=self.storage, study_name=cfg.study_name,
                                        directions=cfg.directions, load_if_exists=True,
                                        sampler=optuna.samplers.RandomSampler())
            attrs = study.user_attrs
            if "archc.fingerprint" not in attrs:
                for k, v in {"archc.fingerprint": cfg.fingerprint, "archc.spec": cfg.spec.name,
                             "archc.plan": cfg.plan, "archc.model": cfg.model,
                             "archc.objectives": [[o.name, o.direction] for o in cfg.objectives]}.items():
                    study.set_user_attr(k, v)
            self.worker = int(attrs.get("archc.workers", 0))
            study.set_user_attr("archc.workers", self.worker + 1)
        self.sampler = make_sampler(cfg, self.grid, self.worker)
        self.study = optuna.load_study(study_name=cfg.study_name, storage=self.storage, sampler=self.sampler,
                                       pruner=make_pruner(cfg))

    # -- one trial
    def _suggest(self, trial: optuna.Trial):
        return lambda label, n: trial.suggest_categorical(label, list(range(n)))

    def _duplicate(self, cand: Candidate) -> optuna.trial.FrozenTrial | None:
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == cand.decisions and DUPLICATE_ATTR not in t.user_attrs:
                return t
        return None

    def _evaluate(self, trial: optuna.Trial) -> tuple[TrialState, list[float] | None, dict]:
        cfg = self.cfg
        try:
            cand = decide(self.program, cfg, self._suggest(trial))
        except CompileError as e:  # a combination of choices that does not check
            reason = "does not check: " + e.diagnostics[0].message if e.diagnostics else "does not check"
            trial.set_user_attr(REJECTED_ATTR, reason)
            return TrialState.PRUNED, None, {}
        trial.set_user_attr(ARCH_ATTR, cand.arch(cfg))
        metrics: dict[str, Any] = dict(measure_graph(cand, cfg))
        reason = broken_constraint(cfg, metrics)
        if reason:
            trial.set_user_attr(METRICS_ATTR, metrics)
            trial.set_user_attr(REJECTED_ATTR, reason)
            return TrialState.PRUNED, None, metrics
        dup = self._duplicate(cand)
        if dup is not None:
            trial.set_user_attr(DUPLICATE_ATTR, dup.number)
            trial.set_user_attr(METRICS_ATTR, dup.user_attrs.get(METRICS_ATTR, metrics))
            return TrialState.COMPLETE, list(dup.values), dup.user_attrs.get(METRICS_ATTR, metrics)
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        from ..compiler.lower.torch import build_module

        module = build_module(cand.graph, cfg.spec.name).to(self.device)
        if cfg.needs("latency"):
            batch = cfg.dims.get("B", 1)
            metrics["latency"] = measure_latency(module, _example_inputs(cand.graph, batch, self.device))
            reason = broken_constraint(cfg, metrics, ("latency",))
            if reason:
                trial.set_user_attr(METRICS_ATTR, metrics)
                trial.set_user_attr(REJECTED_ATTR, reason)
                return TrialState.PRUNED, None, metrics
        state = TrialState.COMPLETE
        if cfg.needs("accuracy"):
            opt = cfg.optimizer
            tc = TrainConfig(epochs=cfg.epochs, steps=cfg.steps, optimizer=opt.get("name", "adamw"),
                             lr=opt.get("lr", 1e-3), weight_decay=opt.get("weight_decay", 0.0),
                             momentum=opt.get("momentum", 0.0), betas=tuple(opt.get("betas", (0.9, 0.999))),
                             precision=cfg.precision, patience=cfg.patience, restore_best=True, seed=cfg.seed,
                             device=str(self.device))
            report = not cfg.multi
            try:
                result = fit(module, self.data.train, self.data.val, tc, callbacks=[_ReportToTrial(trial, report)])
            except optuna.TrialPruned as e:
                metrics["pruned"] = str(e)
                state = TrialState.PRUNED
            else:
                metrics["accuracy"] = result.best if result.best is not None else result.metrics.get("accuracy")
                metrics["epochs"] = result.epochs
                if self.data.test is not None:
                    metrics["test_accuracy"] = evaluate(module, self.data.test, device=self.device).get("accuracy")
        metrics["seconds"] = round(time.perf_counter() - t0, 3)
        trial.set_user_attr(METRICS_ATTR, metrics)
        if state == TrialState.PRUNED:
            return state, None, metrics
        values = [float(metrics[o.name]) for o in cfg.objectives]
        if not all(math.isfinite(v) for v in values):
            trial.set_user_attr(ERROR_ATTR, f"non-finite objective values {values}")
            return TrialState.FAIL, None, metrics
        return state, values, metrics

    # -- the loop
    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return counts

    def _claim(self):
        """Under the lock: a new trial, "done", or "wait" (others run the missing trials)."""
        cfg = self.cfg
        with self.lock:
            reap_dead_trials(self.study, orphans=self.lock.exact)
            counts = self._counts()
            complete, running = counts.get("COMPLETE", 0), counts.get("RUNNING", 0)
            exhausted = isinstance(self.sampler, GridArchSampler) and self.sampler.exhausted(self.study)
            if complete >= cfg.trials or (exhausted and running == 0):
                return "done"
            if complete + running >= cfg.trials or exhausted:
                return "wait"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = self.study.ask()
            self.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_id())
            self.storage.record_heartbeat(trial._trial_id)
        if not self.lock.exact:  # no lock on this storage: give back a surplus trial at once
            counts = self._counts()
            if counts.get("COMPLETE", 0) + counts.get("RUNNING", 0) > cfg.trials:
                mine = max(t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                if mine == trial.number:
                    self.study.tell(trial, state=TrialState.FAIL)
                    return "wait"
        return trial

    def run(self) -> SearchResult:
        start = time.perf_counter()
        self._setup()
        cfg = self.cfg
        bar = _Bar(self, enabled=self.progress_on)
        failures = rejected_in_a_row = 0
        limit_rejected = max(200, 20 * cfg.trials)
        with bar:
            while True:
                claimed = self._claim()
                if claimed == "done":
                    break
                if claimed == "wait":
                    bar.update(waiting=True)
                    time.sleep(POLL_S)
                    continue
                trial = claimed
                t0 = time.perf_counter()
                try:
                    with Heartbeat(self.storage, trial._trial_id):
                        state, values, metrics = self._evaluate(trial)
                except (KeyboardInterrupt, SystemExit):
                    self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    raise
                except Exception as e:  # an error while building or training: record it, go on
                    trial.set_user_attr(ERROR_ATTR, f"{type(e).__name__}: {e}")
                    self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    failures += 1
                    bar.log(f"trial {trial.number} failed: {type(e).__name__}: {e}")
                    if failures >= MAX_FAILURES:
                        raise
                    continue
                failures = 0
                self.study.tell(trial, values, state=state, skip_if_finished=True)
                self.ran += 1
                frozen = self.storage.get_trial(trial._trial_id)
                rejected_in_a_row = rejected_in_a_row + 1 if REJECTED_ATTR in frozen.user_attrs else 0
                bar.trial_done(frozen, state, values, metrics, time.perf_counter() - t0)
                if rejected_in_a_row >= limit_rejected:
                    c = next((c for c in cfg.constraints), None)
                    self._fail("E0522", f"the constraints rejected {rejected_in_a_row} candidates in a row",
                               c.span if c else cfg.kind_span,
                               help="loosen the constraints, or widen the space")
        return self._finish(time.perf_counter() - start)

    # -- results
    def _finish(self, seconds: float) -> SearchResult:
        cfg = self.cfg
        counts = self._counts()
        complete = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        best: list[optuna.trial.FrozenTrial] = []
        if complete:
            if cfg.multi:
                s = 1 if cfg.objectives[0].direction == "max" else -1
                best = sorted(self.study.best_trials, key=lambda t: (-s * t.values[0], t.values[1:], t.number))
                best = [t for t in best if DUPLICATE_ATTR not in t.user_attrs]
            else:
                best = [self.study.best_trial]
                if DUPLICATE_ATTR in best[0].user_attrs:
                    best = [self.study.trials[best[0].user_attrs[DUPLICATE_ATTR]]]
        written = None
        if best:
            written = self.output
            self._write(best[0], written)
        rows = [self._row(t) for t in best]
        return SearchResult(cfg.study_name, _redact(cfg.storage), [(o.name, o.direction) for o in cfg.objectives],
                            counts.get("COMPLETE", 0), self.ran, rows, written, seconds, counts)

    def _row(self, t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return {"trial": t.number, "values": dict(zip([o.name for o in self.cfg.objectives], t.values)),
                "metrics": t.user_attrs.get(METRICS_ATTR, {}), "decisions": dict(t.params),
                "arch": t.user_attrs.get(ARCH_ATTR, {})}

    def _write(self, t: optuna.trial.FrozenTrial, path: Path) -> None:
        from ..cli import write_atomic

        cfg = self.cfg
        decisions = {k: int(v) for k, v in t.params.items()}
        try:
            text = self.program.derive(cfg.model, decisions, args=cfg.args)
        except CompileError as e:  # never lose a search's result to the writer: keep the space and say how
            text = (f"# Could not write the candidate without choices ({e.diagnostics[0].message}); build it with\n"
                    f"#   Program.build({cfg.model!r}, decisions={decisions!r})\n" + cfg.spec.read_text())
        vals = ", ".join(f"{o.name} {fmt_metric(o.name, v)}" for o, v in zip(cfg.objectives, t.values))
        arch = t.user_attrs.get(ARCH_ATTR, {})
        header = [f"# Best candidate of `archc search {cfg.spec.name} --plan {cfg.plan}` ({cfg.strategy}): "
                  f"trial {t.number} of study {cfg.study_name}",
                  f"# {vals}"]
        header += [f"#   {lbl} = {arch.get(lbl, v)}" for lbl, v in t.params.items()]
        write_atomic(path, "\n".join(header) + "\n" + text + ("" if text.endswith("\n") else "\n"))


def _redact(url: str) -> str:
    """A storage URL without its password."""
    import re

    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class _Bar:
    """The search's rich progress bar: complete trials of the study (all workers), best value, ETA."""

    def __init__(self, search: Search, enabled: bool):
        self.s, self.enabled = search, enabled
        self.progress = None

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        cfg = self.s.cfg
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("trials"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=self.s.console, speed_estimate_period=3600)
        done = self._counts_complete()
        self.task = self.progress.add_task(f"{cfg.plan} ({cfg.strategy})", total=cfg.trials, completed=done,
                                           info=self._info())
        self.progress.start()
        if done and self.s.verbose:
            self.log(f"resuming study {cfg.study_name}: {done} of {cfg.trials} trials complete")
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.update()
            self.progress.stop()

    def _counts_complete(self) -> int:
        return len(self.s.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def _info(self, waiting: bool = False) -> str:
        cfg, study = self.s.cfg, self.s.study
        if waiting:
            return "waiting for other workers' trials"
        if not self._counts_complete():
            return ""
        if cfg.multi:
            return f"front: {len(study.best_trials)} candidates"
        t = study.best_trial
        return f"best {fmt_metric(cfg.objectives[0].name, t.values[0])} (trial {t.number})"

    def update(self, waiting: bool = False) -> None:
        if self.progress:
            self.progress.update(self.task, completed=self._counts_complete(), info=self._info(waiting))

    def log(self, msg: str) -> None:
        if self.s.verbose:
            (self.progress.console if self.progress else self.s.console).print(msg, highlight=False)

    def trial_done(self, t, state, values, metrics: dict, seconds: float) -> None:
        cfg = self.s.cfg
        number = t.number
        if REJECTED_ATTR in t.user_attrs:
            what = f"rejected: {t.user_attrs[REJECTED_ATTR]}"
        elif state == TrialState.PRUNED:
            what = metrics.get("pruned", "pruned")
        else:
            what = ", ".join(f"{o.name} {fmt_metric(o.name, v)}" for o, v in zip(cfg.objectives, values))
            if DUPLICATE_ATTR in t.user_attrs:
                what += f" (same as trial {t.user_attrs[DUPLICATE_ATTR]})"
        self.log(f"trial {number}: {what}  [{seconds:.1f}s]")
        self.update()


def run_search(program, cfg: SearchConfig, **kwargs) -> SearchResult:
    """Run one worker of a checked plan (see `Search` for the keyword arguments).

    `strategy("darts")` trains one supernet instead (archc.search.darts.run_darts, which
    also takes DARTS's own keyword arguments: order, relax, rule, arch_lr, checkpoint, resume);
    it resumes from its checkpoint rather than from a study."""
    if cfg.strategy == "darts":
        from .darts import run_darts

        return run_darts(program, cfg, **kwargs)
    return Search(program, cfg, **kwargs).run()
