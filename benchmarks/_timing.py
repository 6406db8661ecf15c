"""Timing helpers shared by the benchmarks: interleaved A/B runs, medians, fresh processes.

The benchmark machines are small and shared, so a single timing means little.
Every comparison here runs its contestants interleaved, round by round, with the
order alternating from one round to the next (A B, B A, A B, ...) so that slow
drift in the machine's load falls on both sides alike, and reports medians, the
spread (min..max) and two ratios: the ratio of the medians and the median of the
per-round ratios (pairs of runs taken close together in time). Nothing here
asserts a time: the scripts print figures.
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent  # the repository root
SPECS = ROOT / "archc" / "specs"


@dataclass
class Samples:
    """The timings, in seconds, of one contestant."""

    name: str
    times: list[float] = field(default_factory=list)  # wall seconds
    cpu: list[float] = field(default_factory=list)  # CPU seconds: this process's and its children's

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def cpu_now() -> float:
    """CPU seconds (user + system) used so far by this process and its waited-for children.

    Less sensitive than wall time to other processes taking the cores, though
    not immune (shared caches, and threads that spin while they wait count too).
    """
    me = time.process_time()
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me + ch.ru_utime + ch.ru_stime


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call, in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(contestants: dict[str, Callable[[], object]], repeats: int,
               warmup: int = 0) -> dict[str, Samples]:
    """Run each contestant `repeats` times, interleaved, alternating the order each round.

    `warmup` untimed rounds come first (same interleaving). Each callable either
    returns None (its wall time is measured here) or a float, taken as its own
    measured wall time in seconds (for contestants that time a part of what they
    do, or a child process). CPU time (this process and finished children) is
    recorded beside the wall time in `Samples.cpu`.
    """
    names = list(contestants)
    out = {n: Samples(n) for n in names}
    for r in range(warmup + repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            c0, t0 = cpu_now(), time.perf_counter()
            got = contestants[n]()
            t = got if isinstance(got, float) else time.perf_counter() - t0
            c = cpu_now() - c0
            if r >= warmup:
                out[n].times.append(t)
                out[n].cpu.append(c)
    return out


def paired_ratios(a: Samples, b: Samples) -> list[float]:
    """Round-by-round a/b ratios (runs of the same round sit next to each other in time)."""
    return [x / y for x, y in zip(a.times, b.times)]


def run_fresh(argv: Sequence[str], *, cwd: Path | str = ROOT, env: dict | None = None) -> float:
    """The whole wall time of a fresh process, interpreter start included; fails on nonzero exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    t = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return t


def python_argv(*args: str) -> list[str]:
    """This interpreter (the project's venv when run with .venv/bin/python) with `args`."""
    return [sys.executable, *args]


def child_env() -> dict:
    """The environment for child processes: archc importable from the repository root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


# -- printing -------------------------------------------------------------------

def fmt_s(t: float) -> str:
    """Seconds with a unit that keeps three significant figures readable."""
    if t >= 1:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} us"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left/right-aligned text table (first column left, the rest right)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def samples_table(samples: Sequence[Samples]) -> str:
    """Wall-time median, min, max, and the CPU-time median, of each contestant."""
    return table(["", "median", "min", "max", "CPU median", "runs"],
                 [[s.name, fmt_s(s.median), fmt_s(s.min), fmt_s(s.max), fmt_s(s.cpu_median), len(s.times)]
                  for s in samples])


def machine_line() -> str:
    """A line of context: interpreter, cores, load (the figures depend on all three)."""
    load = ""
    if hasattr(os, "getloadavg"):
        load = "  load avg %.2f %.2f %.2f" % os.getloadavg()
    return f"python {sys.version.split()[0]}  cores {os.cpu_count()}{load}"
