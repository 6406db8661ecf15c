"""One DARTS search step (architecture step, then weight step) of archc's supernet against a
re-implementation of the reference DARTS search network (benchmarks/darts_reference.py).

archc: `std.darts`'s DartsSearch built with relax="darts", stepped by
archc.runtime.train.darts.DartsCallback (the architecture step `fit` runs before each
weight step) and then the weight step exactly as `fit` does it (forward, cross-entropy,
backward, clip at 5, SGD with momentum 0.9 and weight decay 3e-4). Reference: the
Architect's step, then the same weight step (train_search.py). Both networks have the
same size (the script checks the parameter counts), see the same batches, run on the
CPU, interleaved round by round (A B, B A, ...); the figures are medians.

    .venv/bin/python benchmarks/darts_step.py [--order 1|2] [--C 8] [--layers 5] [--batch 16]
                                              [--size 32] [--repeats 5] [--threads 1]

The reference settings are --C 16 --layers 8 --batch 64 (slow on a CPU).
Target (the project's claim): archc/reference <= 1.0.
"""
from __future__ import annotations

import argparse

import _timing as T


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--order", type=int, default=1, choices=[1, 2], help="first or second order (default 1)")
    ap.add_argument("--C", type=int, default=8, help="initial channels (default 8; the reference's is 16)")
    ap.add_argument("--layers", type=int, default=5, help="cells (default 5; the reference's is 8)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (default 16; the reference's is 64)")
    ap.add_argument("--size", type=int, default=32, help="image side (default 32)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps of each (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of each first (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import archc
    import darts_reference as ref
    from archc.runtime.train import TrainConfig, TrainState
    from archc.runtime.train.darts import DartsCallback, DartsConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prog = archc.load(T.SPECS / "darts.arch")
    net = prog.build("DartsSearch", relax="darts", C=args.C, layers=args.layers, size=args.size)
    theirs = ref.SearchNetwork(args.C, 10, args.layers)
    n_ours = sum(p.numel() for p in net.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    a_ours = sum(a.numel() for a in net.arch_parameters())
    a_theirs = sum(a.numel() for a in theirs.arch_parameters())
    assert (n_ours, a_ours) == (n_theirs, a_theirs), f"sizes differ: {(n_ours, a_ours)} vs {(n_theirs, a_theirs)}"

    g = torch.Generator().manual_seed(1)
    xt = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    yt = torch.randint(0, 10, (args.batch,), generator=g)
    xv = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    yv = torch.randint(0, 10, (args.batch,), generator=g)
    lr, clip = 0.025, 5.0

    # archc: the callback's architecture step, then fit's weight step
    weights = list(net.parameters())
    opt = torch.optim.SGD(weights, lr=lr, momentum=0.9, weight_decay=3e-4)
    cfg = TrainConfig(epochs=1, optimizer="sgd", lr=lr, momentum=0.9, weight_decay=3e-4, clip_grad=clip)
    cb = DartsCallback(net.arch_parameters(), [(xv, yv)], DartsConfig(order=args.order), cfg)
    state = TrainState(net, opt, cfg, torch.device("cpu"))
    net.train()
    cb.on_fit_start(state)

    def archc_step():
        cb.on_step_start(state, (xt, yt))
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(xt), yt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, clip)
        opt.step()

    # the reference: Architect.step, then train_search.py's weight step
    t_opt = torch.optim.SGD(theirs.parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    architect = ref.Architect(theirs)

    def reference_step():
        ref.search_step(theirs, architect, t_opt, xt, yt, xv, yv, lr, unrolled=args.order == 2, grad_clip=clip)

    alphas0 = [a.detach().clone() for a in net.arch_parameters()]
    samples = T.interleave({"archc": archc_step, "reference": reference_step}, args.repeats, warmup=args.warmup)
    moved = max((a - b).abs().max().item() for a, b in zip(net.arch_parameters(), alphas0))
    assert moved > 0, "archc's architecture step did not change α"

    a, b = samples["archc"], samples["reference"]
    print(f"DARTS search step, order {args.order}: C={args.C}, {args.layers} cells, batch {args.batch} x 3 x "
          f"{args.size} x {args.size}, {n_ours:,} weights, {a_ours} architecture parameters, "
          f"{args.threads} thread(s)")
    print(T.machine_line())
    print(T.samples_table([a, b]))
    ratios = T.paired_ratios(a, b)
    print(f"median of per-round ratios: {T.median(ratios):.3f}")
    print(f"ratio archc/reference (medians): {a.median / b.median:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
