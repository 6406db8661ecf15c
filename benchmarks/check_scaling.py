"""How archc's check time grows with the model: ResNet-18/34/50/101/152.

In process, imports done: for each model, the median over N runs of
- `check`: parse + resolve the spec (archc.load), then elaborate + count cost
  (Program.check), which is what `archc check FILE --model M` does after start-up;
- `elaborate + cost`: Program.check alone on an already-loaded spec (the parse
  is the same file, hence the same cost, for every model).
Models are timed interleaved, round by round. Each row shows the model's size
as its conv + linear layers and as its total node count in `Program.graph()`,
and the time per layer. The last lines put the ResNet-152/ResNet-50 time ratio
beside their layer-count ratio: time should grow no faster than the layers.

    .venv/bin/python benchmarks/check_scaling.py [--repeats N]
"""
from __future__ import annotations

import argparse
import sys

import _timing as T

MODELS = ["ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per model (default 7)")
    args = ap.parse_args(argv)

    import archc

    spec = T.SPECS / "resnet.arch"
    prog = archc.load(spec)
    sizes = {}
    for m in MODELS:
        nodes = prog.graph(m).nodes()
        sizes[m] = (sum(n.op in ("conv", "linear") for n in nodes), len(nodes))

    def full(m):
        def run():
            archc.load(spec).check(m)
        return run

    def elab(m):
        def run():
            prog.check(m)
        return run

    # Warm-up round: Lark's parser, op registry and the like, built once per process.
    contestants = {}
    for m in MODELS:
        contestants[("check", m)] = full(m)
        contestants[("elab", m)] = elab(m)
    got = T.interleave(contestants, repeats=args.repeats, warmup=1)

    print(f"check scaling: std.resnet, in process (imports excluded), median of {args.repeats} run(s)")
    print(T.machine_line())
    print()
    rows = []
    for m in MODELS:
        layers, nodes = sizes[m]
        c, e = got[("check", m)].median, got[("elab", m)].median
        rows.append([m, layers, nodes, T.fmt_s(c), T.fmt_s(e),
                     T.fmt_s(c / layers), T.fmt_s(e / layers), T.fmt_s(e / nodes)])
    print(T.table(["model", "conv+linear", "nodes", "check", "elab+cost",
                   "check/layer", "elab/layer", "elab/node"], rows))

    big, base = "ResNet152", "ResNet50"
    t_full = got[("check", big)].median / got[("check", base)].median
    t_elab = got[("elab", big)].median / got[("elab", base)].median
    l_ratio = sizes[big][0] / sizes[base][0]
    n_ratio = sizes[big][1] / sizes[base][1]
    print()
    print(f"{big}/{base}: layers {l_ratio:.2f}x, nodes {n_ratio:.2f}x, "
          f"check time {t_full:.2f}x, elab+cost time {t_elab:.2f}x")
    print(f"ratio {big}/{base} elab+cost time / layer-count ratio (<= 1 means linear or better): "
          f"{t_elab / l_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
