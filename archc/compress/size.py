"""Honest sizes: what a model stores and reads, saved as safetensors, measured on disk.

- Live tensors only (archc.compress.quantize.live_tensors): a tied weight counts once;
  an exported graph's dead float weights do not count; a pruning mask is a buffer the
  model holds (`weight_orig` and `weight_mask` while masked): no saving until
  `make_permanent`.
- `parameters`: weight and bias values stored (an int8 weight counts one per value;
  scales, zero points, batch-norm statistics and masks do not);
- `bytes on disk`: the size of the safetensors file actually written;
- latency: the fastest of 30 timed CPU forward passes on one thread, without gradients
  (the others measure whatever else the machine runs).
"""
from __future__ import annotations

import json
import re
import time

import torch

_QPARAM = re.compile(r"(^|\.)_?(scale|zero_point)(_\d+)?$")
_BUFFER = re.compile(r"(running_mean|running_var|num_batches_tracked)$")
_MASK = re.compile(r"_mask$")


def kind(name: str) -> str:
    if _MASK.search(name):
        return "mask"
    if _BUFFER.search(name):
        return "buffer"
    if _QPARAM.search(name):
        return "qparam"
    return "param"


def count_parameters(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for k, t in tensors.items() if kind(k) == "param")


def nonzero_parameters(tensors: dict[str, torch.Tensor]) -> int:
    return sum(int((t != 0).sum()) for k, t in tensors.items() if kind(k) == "param")


def _pack_int4(t: torch.Tensor) -> torch.Tensor:
    flat = (t.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: torch.Tensor, shape) -> torch.Tensor:
    lo, hi = packed & 0xF, packed >> 4
    flat = torch.stack([lo, hi], 1).reshape(-1)[: int(torch.tensor(shape).prod())]
    return (flat.to(torch.int16) - 8).to(torch.int8).reshape(shape)


def to_bytes(tensors: dict[str, torch.Tensor], schemes: dict[str, str] | None = None,
             metadata: dict | None = None, int4: bool = False) -> bytes:
    """The safetensors bytes of the live tensors; int4 weights packed two per byte."""
    from safetensors.torch import save

    schemes = dict(schemes or {})
    out = {}
    for k, v in tensors.items():
        v = v.detach()
        if int4 and v.dtype == torch.int8 and k.endswith("qdata"):
            schemes[k] = f"int4 packed two per byte, shape {list(v.shape)}"
            v = _pack_int4(v)
        out[k] = v.contiguous().clone()
    meta = {"format": "pt", "archc": json.dumps({"schemes": schemes, **(metadata or {})})}
    return save(out, metadata=meta)


def measure_latency(model, example: tuple, *, runs: int = 30, warmup: int = 3, threads: int = 1) -> float:
    """Seconds of one forward pass on the CPU without gradients, on `threads` threads: the
    fastest of `runs` timed passes (as timeit advises: slower runs measure other processes).
    One thread by default: on a busy machine a parallel region waits for its slowest thread's
    turn, which measures the scheduler rather than the model."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(*example)
            for _ in range(runs):
                t = time.perf_counter()
                model(*example)
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return min(times)
