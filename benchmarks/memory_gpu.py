"""archc's memory estimate against torch.cuda.max_memory_allocated, on a GPU.

For each case of memory_accuracy.py (the shipped specs at small sizes and a small
GPT), in fp32, with checkpointed segments and in bf16 autocast, run a steady-state
training step on the GPU and print estimated / measured for the bytes saved for
backward and for the peak of allocated bytes (torch.cuda.max_memory_allocated,
which counts the caching allocator's rounded block sizes). The estimate uses the
device rules of the GPU found (docs/memory.md), named after it when archc knows
the card, else the generic CUDA rules with its memory.

    .venv/bin/python benchmarks/memory_gpu.py [--mode fp32|checkpoint|bf16|all] [--spec NAME]

Without a GPU it says so and exits with status 0.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# substrings of torch.cuda.get_device_name() -> archc device names
_CARDS = [("H200", "h200-141gb"), ("H100", "h100-80gb"), ("H800", "h800-80gb"), ("A100-SXM4-80GB", "a100-80gb"),
          ("A100 80GB", "a100-80gb"), ("A100", "a100-40gb"), ("L40S", "l40s-48gb"), ("A6000", "a6000-48gb"),
          ("4090", "rtx4090-24gb"), ("3090", "rtx3090-24gb"), ("A10", "a10-24gb"), ("L4", "l4-24gb"),
          ("V100", "v100-32gb"), ("T4", "t4-16gb")]


def device_name(torch) -> str:
    name = torch.cuda.get_device_name(0)
    for part, dev in _CARDS:
        if part in name:
            return dev
    return "a100-80gb"


def measure_gpu(case, mode: str, torch):
    import memory_accuracy as M

    from archc.runtime.measure import forward_loss, saved_for_backward, train_step

    torch.manual_seed(0)
    model, g = M.build(case, mode)
    model = model.cuda().train()
    inputs, target = M.batch(case, g)
    inputs, target = [x.cuda() for x in inputs], target.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ac = torch.bfloat16 if mode == "bf16" else None
    train_step(model, inputs, target, opt, autocast_dtype=ac, device="cuda")
    exclude = list(model.parameters()) + list(model.buffers())
    saved = saved_for_backward(lambda: forward_loss(model, inputs, target, autocast_dtype=ac, device="cuda"),
                               exclude=exclude)
    saved.result.backward()
    saved.result = None
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, inputs, target, opt, autocast_dtype=ac, device="cuda")
    torch.cuda.synchronize()
    return saved.bytes, torch.cuda.max_memory_allocated()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="all", choices=["fp32", "checkpoint", "bf16", "all"])
    ap.add_argument("--spec", help="only this case")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("memory_gpu: no CUDA device here; nothing to measure (run benchmarks/memory_accuracy.py for the CPU)")
        return 0
    import memory_accuracy as M

    from archc.compiler.passes.estimate_memory import estimate_memory

    dev = device_name(torch)
    print(f"device: {torch.cuda.get_device_name(0)} (archc rules: {dev})")
    print(f"{'case':10} {'mode':10} {'saved est/meas':>15} {'peak est/meas':>14}   peak at")
    modes = ["fp32", "checkpoint", "bf16"] if args.mode == "all" else [args.mode]
    for case in M.CASES:
        if args.spec and case.name != args.spec:
            continue
        for mode in modes:
            prog, plan, sym = M.load_case(case, mode)
            est = estimate_memory(sym, plan, device=dev, solve=False)
            saved, peak = measure_gpu(case, mode, torch)
            print(f"{case.name:10} {mode:10} {est.activations / saved:15.4f} {est.peak / peak:14.4f}   {est.peak_at}")
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
