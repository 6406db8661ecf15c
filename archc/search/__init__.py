"""Architecture search: runs the `search` plans of a spec (`archc search SPEC --plan NAME`).

    import archc
    from archc.search import load_config, run_search

    prog = archc.load("archc/specs/digits_space.arch")
    cfg = load_config(prog, "DigitsTPE")           # checks the plan: CompileError with diagnostics
    result = run_search(prog, cfg, threads=1)      # one worker; run several to share the study
    result.best[0]["values"], result.written       # {"accuracy": 0.98...}, Path(... .best.arch)

This package glues the compiler (spaces, graphs, costs, `Program.derive`) to the
runtime (`archc.runtime.train.fit`, `archc.runtime.data`) through Optuna
(samplers, pruners, storages). Importing it, or `archc.search.config`, does
not import torch or optuna: `archc check` uses the plan checks without them.

- config.py      a plan -> SearchConfig, with every check that needs only the spec
- candidates.py  deciding a candidate choice by choice, enumerating a space, graph metrics
- samplers.py    random, grid, evolution, rl (archc's) and tpe, nsga2 (Optuna's)
- storage.py     storages, the per-study lock, heartbeats, failing dead workers' trials
- driver.py      the worker loop, measuring and training candidates, the results
"""
from __future__ import annotations

from .config import SearchConfig, check_search_plan, load_config


def run_search(program, cfg: SearchConfig, **kwargs):
    """Run one search worker; see `archc.search.driver.Search` for the options."""
    from .driver import run_search as _run

    return _run(program, cfg, **kwargs)


__all__ = ["SearchConfig", "check_search_plan", "load_config", "run_search"]
