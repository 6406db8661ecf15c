"""Forward + backward speed of the archc-built R(2+1)D-18 against torchvision's r2plus1d_18.

A step is: drop the gradients, forward a clip batch in train mode, cross-entropy loss,
backward (no optimizer update: the same code for both). The archc module
(std.video's R2Plus1D18) loads torchvision's state_dict (strict), so both compute the
same thing; the script checks that their logits and loss agree on the first step. CPU,
torch's default thread count. After warm-up steps the two models step in turn (A B,
B A, A B, ...) and the figures are medians.

    .venv/bin/python benchmarks/r2plus1d_step.py [--repeats N] [--batch 2] [--frames 8] [--size 112]

Target (the project's claim): archc/torchvision <= 1.03.
"""
from __future__ import annotations

import argparse
import sys

import _timing as T


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=6, help="timed steps of each model (default 6)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of each model first (default 1)")
    ap.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    ap.add_argument("--frames", type=int, default=8, help="clip length (default 8)")
    ap.add_argument("--size", type=int, default=112, help="frame side (default 112)")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    import torchvision

    import archc

    torch.manual_seed(0)
    ref = torchvision.models.video.r2plus1d_18(weights=None)
    net = archc.load(T.SPECS / "video.arch").build("R2Plus1D18", frames=args.frames, size=args.size)
    net.load_state_dict(ref.state_dict(), strict=True)
    ref.train()
    net.train()

    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, generator=g)
    y = torch.randint(0, 400, (args.batch,), generator=g)

    def step(model):
        model.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        return out, loss

    # Same weights, same clips: the first step must agree (train-mode batch norm included).
    out_a, loss_a = step(net)
    out_b, loss_b = step(ref)
    diff = (out_a - out_b).abs().max().item()
    torch.testing.assert_close(out_a, out_b, atol=1e-4, rtol=1e-4)
    gdiff = max((pa.grad - pb.grad).abs().max().item() for pa, pb in zip(net.parameters(), ref.parameters()))

    shape = f"{args.batch}x3x{args.frames}x{args.size}x{args.size}"
    print(f"forward + backward: R(2+1)D-18, clips {shape}, CPU, {torch.get_num_threads()} torch threads, "
          f"{args.warmup} warm-up + {args.repeats} timed steps each")
    print(T.machine_line() + f"  torch {torch.__version__}  torchvision {torchvision.__version__}")
    print(f"same weights: max |logits diff| {diff:.2e}, loss {loss_a.item():.6f} vs {loss_b.item():.6f}, "
          f"max |grad diff| {gdiff:.2e}")
    print()

    got = T.interleave({
        "A  archc R2Plus1D18": lambda: step(net) and None,
        "B  torchvision r2plus1d_18": lambda: step(ref) and None,
    }, repeats=args.repeats, warmup=args.warmup)
    a, b = got.values()
    print(T.samples_table([a, b]))
    paired = T.median(T.paired_ratios(a, b))
    print()
    print(f"median of per-step-pair ratios archc/torchvision: {paired:.3f}")
    print(f"CPU-time ratio archc/torchvision (medians):       {a.cpu_median / b.cpu_median:.3f}")
    print(f"ratio archc/torchvision (medians, target <= 1.03): {a.median / b.median:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
