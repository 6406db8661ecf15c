"""How fast does `archc check` answer "does ResNet-50 fit together, and how big is it?"

The peer is what one would otherwise run: torchinfo's summary of torchvision's
resnet50, which imports torch, builds the model and pushes a 1x3x224x224 batch
through it. Both are timed as whole fresh processes (interpreter start, imports,
work, exit), interleaved A/B with alternating order; the figures are medians.
For context it also prints a bare interpreter start and archc's in-process
check time once imports are done (load + name check + elaborate + cost, as
`archc check` does).

    .venv/bin/python benchmarks/check_speed.py [--repeats N] [--warmup N] [--model ResNet50]

Target (the project's claim): archc at least 5x faster than the peer.
"""
from __future__ import annotations

import argparse
import sys
import time

import _timing as T

PEER = ("import torchinfo, torchvision; "
        "torchinfo.summary(torchvision.models.{tv}(), input_size=(1, 3, 224, 224), verbose=0)")


def in_process_check(spec: str, model: str, repeats: int) -> tuple[float, list[float]]:
    """(first call, later calls) of load + check_names + check in this process, imports excluded."""
    import archc  # imported before the clock starts

    def once():
        prog = archc.load(spec)
        assert not prog.check_names()
        prog.check(model)

    first = T.timed(once)
    return first, [T.timed(once) for _ in range(max(repeats, 5))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each process (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--model", default="ResNet50", help="a ResNet of std.resnet (default ResNet50)")
    args = ap.parse_args(argv)

    spec = "archc/specs/resnet.arch"
    tv = args.model.lower()
    env = T.child_env()
    archc_argv = T.python_argv("-m", "archc.cli", "check", spec, "--model", args.model)
    peer_argv = T.python_argv("-c", PEER.format(tv=tv))
    bare_argv = T.python_argv("-c", "pass")

    print(f"check speed: {args.model}, fresh processes, {args.repeats} interleaved run(s) each")
    print(T.machine_line())
    print("A: " + " ".join(["python"] + archc_argv[1:]))
    print("B: python -c " + repr(PEER.format(tv=tv)))
    print()

    # An untimed round first (--warmup): fills the OS file cache and Lark's grammar cache
    # for both, so neither pays a one-off first-ever cost the other does not.
    got = T.interleave({
        "A  archc check (process)": lambda: T.run_fresh(archc_argv, env=env),
        "B  torchinfo.summary (process)": lambda: T.run_fresh(peer_argv, env=env),
        "   python -c pass (process)": lambda: T.run_fresh(bare_argv, env=env),
    }, repeats=args.repeats, warmup=args.warmup)
    a, b, bare = got.values()
    print(T.samples_table([a, b, bare]))

    t0 = time.perf_counter()
    import archc  # noqa: F401  (the import cost, for context)
    imp = time.perf_counter() - t0
    first, warm = in_process_check(str(T.ROOT / spec), args.model, args.repeats)
    print()
    print(T.table(["archc in process (imports excluded)", "time"], [
        ["import archc (its first import in this process)", T.fmt_s(imp)],
        ["first check (load + names + elaborate + cost)", T.fmt_s(first)],
        [f"later checks, median of {len(warm)}", T.fmt_s(T.median(warm))],
    ]))

    paired = T.median([y / x for x, y in zip(a.times, b.times)])
    above_start = (b.median - bare.median) / max(a.median - bare.median, 1e-9)
    print()
    print(f"speed-up of medians, counting interpreter start: {b.median / a.median:.1f}x")
    print(f"speed-up, median of per-round pairs:             {paired:.1f}x")
    print(f"speed-up above a bare interpreter start:         {above_start:.1f}x")
    print(f"speed-up in CPU time (medians):                  {b.cpu_median / a.cpu_median:.1f}x")
    print(f"ratio torchinfo/archc (speed-up, target >= 5x): {b.median / a.median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
