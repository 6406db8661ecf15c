"""Every architecture of NAS-Bench-201 (std.nb201's NB201Search, 15,625 of them) checks, and
its parameter count is the benchmark's: 73,306 + 243,040 * (3x3 convs) + 28,000 * (1x1 convs).

Each candidate is elaborated (shapes inferred, parameters counted) at affine=true, the
benchmark's trained networks; with --build it is also lowered to a torch module whose
parameters are counted. Candidates are split over worker processes. Prints the time per
candidate and the number that disagree (0 expected).

    .venv/bin/python benchmarks/nb201_space.py [--workers 2] [--limit N] [--build]
"""
from __future__ import annotations

import argparse
import itertools
import time
from concurrent.futures import ProcessPoolExecutor

import _timing as T

OPS = 5  # zero, skip, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3


def expected(values) -> int:
    return 73_306 + 243_040 * sum(v == 3 for v in values) + 28_000 * sum(v == 2 for v in values)


def _check(chunk: list[tuple[int, ...]], build: bool) -> list[tuple[tuple[int, ...], int, int | None]]:
    import archc

    prog = archc.load(T.SPECS / "nb201.arch")
    labels = list(prog.graph("NB201Search", strict=False).decisions)
    out = []
    for values in chunk:
        decisions = dict(zip(labels, values))
        counted = prog.check("NB201Search", decisions=decisions, affine=True).params
        built = None
        if build:
            net = prog.build("NB201Search", decisions=decisions, affine=True)
            built = sum(p.numel() for p in net.parameters())
        out.append((values, counted, built))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--limit", type=int, help="only the first N candidates (default: all 15,625)")
    ap.add_argument("--build", action="store_true", help="also build each as a torch module (slow)")
    args = ap.parse_args(argv)

    import archc

    prog = archc.load(T.SPECS / "nb201.arch")
    space = prog.space("NB201Search")
    assert space.size == 15_625, space.size
    every = list(itertools.product(range(OPS), repeat=len(space.decisions)))
    assert len(every) == space.size
    todo = every[: args.limit] if args.limit else every
    chunks = [todo[i::args.workers * 8] for i in range(args.workers * 8)]
    t0 = time.perf_counter()
    bad, n = [], 0
    with ProcessPoolExecutor(args.workers) as pool:
        for result in pool.map(_check, chunks, [args.build] * len(chunks)):
            for values, counted, built in result:
                n += 1
                want = expected(values)
                if counted != want or (built is not None and built != want):
                    bad.append((values, counted, built, want))
    seconds = time.perf_counter() - t0
    print(f"NAS-Bench-201 space: {space.size:,} architectures; checked {n:,}"
          f"{' and built' if args.build else ''} with {args.workers} worker(s)")
    print(T.machine_line())
    print(f"{seconds:.1f} s in all, {1000 * seconds * args.workers / max(n, 1):.1f} ms per candidate per worker")
    print(f"parameter counts that differ from 73,306 + 243,040 n3 + 28,000 n1: {len(bad)}")
    for row in bad[:10]:
        print("  ", row)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
