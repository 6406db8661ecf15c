"""Devices a plan can name (`device("a100-80gb")`): a memory budget and the rules
that decide what each op allocates and keeps there.

The rules are the observable behaviour of PyTorch (2.4 and later) on each kind of
device; docs/memory.md explains each one and how it was measured. The "cpu"
rules are the ones benchmarks/memory_accuracy.py measures (oneDNN convolutions,
single-tensor optimizers, no allocator rounding); the CUDA rules follow the
caching allocator, cuDNN, the fused attention kernels and the foreach optimizers.
Never imports torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Literal

from .diagnostics import did_you_mean

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3

# -- named constants ------------------------------------------------------------

# The CUDA caching allocator rounds every request up to a multiple of 512 bytes;
# torch.cuda.max_memory_allocated counts the rounded sizes.
CUDA_ALLOC_ROUND = 512
# Memory a CUDA process holds outside PyTorch's allocator: the context and the
# kernels loaded into it (300-600 MiB on recent drivers; we take the upper end).
CUDA_CONTEXT_BYTES = 500 * MiB
# cuBLAS keeps a workspace per stream and handle (CUBLAS_WORKSPACE_CONFIG default
# ":4096:8" on Hopper: 8 x 4 MiB), allocated through PyTorch's allocator on first use.
CUBLAS_WORKSPACE_BYTES = 32 * MiB
# torch.utils.checkpoint(preserve_rng_state=True) keeps the CPU generator state
# (torch.get_rng_state(): a 5056-byte uint8 tensor) per segment; on CUDA it also
# keeps the device generator state, but both are host tensors.
CPU_RNG_STATE_BYTES = 5056
# oneDNN (PyTorch's CPU convolution) computes in channel-blocked layouts: output
# channels are padded to a multiple of this block (AVX-512: 16), and activations and
# weights are reordered into and out of those layouts through temporary buffers.
ONEDNN_CHANNEL_BLOCK = 16
# Below this many input channels oneDNN reads the plain NCHW input without a reorder.
ONEDNN_PLAIN_INPUT_BELOW = 8
# oneDNN's GEMM weight-gradient convolution (the fallback for a 3-D kernel at least as deep
# as its front-padded input) books its float32 reduction buffer as `weight bytes` floats per
# thread: 4x the weight's bytes each; threads split the batch when H_out x W_out per thread
# is below ONEDNN_GEMM_OUTER_BELOW; each scratchpad entry carries ONEDNN_SCRATCH_ALIGN bytes.
ONEDNN_GEMM_WEI_REDUCTION = 4
ONEDNN_GEMM_OUTER_BELOW = 256
ONEDNN_SCRATCH_ALIGN = 128
# Half-precision convolution forward (oneDNN's brgemm kernels on AMX/AVX-512): a scratchpad of
# about this many bytes per thread (accumulators and tile buffers), measured on PyTorch 2.14:
# 72 KiB with a spatial kernel (64 to 512 channels, 3x3), 16 KiB for a 1x1 convolution.
ONEDNN_BRGCONV_SCRATCH = 72 * 1024
ONEDNN_BRGCONV_SCRATCH_1X1 = 16 * 1024
# Half-precision weight gradient (oneDNN's AMX `brgconv_bwd_w`): its scratchpad follows the
# library's booking (ops/conv.py, brgconv_bwd_w_scratch): transposed rows padded to one AMX
# tile row of 32 elements, a float32 reduction buffer per batch-splitting thread, per-thread
# pages. The remainder (barriers, tile configuration, alignment) is fitted on PyTorch 2.14
# (oneDNN 3.12) on an AMX CPU: 17,008 bytes, 8 KiB more when the threads split channels.
ONEDNN_AMX_TILE_ROW = 32
ONEDNN_BRGCONV_BWD_W_FIXED = 17008
ONEDNN_BRGCONV_BWD_W_FIXED_CHANNELS = 8192
# oneDNN's RNN workspace (PyTorch's CPU LSTM, one mkldnn_rnn_layer per layer and direction):
# each region starts on a page, and GEMM operands' rows are padded to a multiple of 64 bytes
# (one more such step when that is a multiple of 256 elements: rnn_utils' get_good_ld).
ONEDNN_PAGE = 4096
ONEDNN_ROW_ALIGN = 64


def _cpu_threads() -> int:
    """PyTorch's intra-op threads on this machine (it defaults to the cores it may use):
    oneDNN keeps per-thread accumulators for weight gradients."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)

# Ops PyTorch's autocast runs in the low-precision dtype (both device kinds):
# convolutions, matrix products and scaled_dot_product_attention.
AUTOCAST_LOW = frozenset({"conv", "conv_transpose", "linear", "matmul", "attention", "mha"})
# CPU autocast also lists mkldnn_rnn_layer (the LSTM: inputs, h_0/c_0 and weights cast, the
# outputs in 16 bits), and ATen's RNN cells run their linears in 16 bits, so the hidden state
# becomes 16-bit after the first step (`rnn`). ATen's GRU cell mixes: its linears take 16-bit
# casts of the weights (cached) and of the input and hidden state, but `(h - n) * z + n`
# promotes back to float32, so its outputs stay float32 (`gru`: weights cast only).
# ConvLSTM's gate convolution (both device kinds) casts its weight; the cell's arithmetic
# runs in whatever dtype its input and state have.
CPU_AUTOCAST_LOW = AUTOCAST_LOW | {"lstm", "rnn"}
AUTOCAST_WEIGHTS = frozenset({"conv_lstm"})
CPU_AUTOCAST_WEIGHTS = AUTOCAST_WEIGHTS | {"gru"}
# Ops CUDA autocast runs in float32 (layer_norm, group_norm: inputs cast to fp32;
# softmax/log_softmax: fp32 output). CPU autocast has no such list for these ops:
# they run in whatever dtype their input has.
CUDA_AUTOCAST_FP32 = frozenset({"layernorm", "groupnorm", "rmsnorm", "softmax"})
# CPU autocast's float32 list has the 3-D pools (max_pool3d, avg_pool3d, adaptive_avg_pool3d,
# adaptive_max_pool3d): their 16-bit input is cast to float32 (the cast is what they keep)
# and their output is float32. "op/rank" names an op by its input rank.
CPU_AUTOCAST_FP32 = frozenset({"max_pool/5", "avg_pool/5", "adaptive_avg_pool/5", "adaptive_max_pool/5",
                               "global_avg_pool/5"})


@dataclass(frozen=True)
class Device:
    """A device's memory budget and the rules that decide what runs on it allocates."""

    name: str
    kind: Literal["cpu", "cuda"]
    memory: int | None  # bytes on the device; None: host memory, no fixed budget
    description: str = ""
    alloc_round: int = 1  # allocations count rounded up to this many bytes
    context_bytes: int = 0  # held outside PyTorch's allocator (not in its statistics)
    workspace_bytes: int = 0  # library workspaces allocated through PyTorch's allocator
    dropout_mask_bytes: int | None = None  # per element; None: the input's dtype
    conv: Literal["onednn", "cudnn"] = "onednn"
    # recurrent layers: "aten" (CPU: LSTM through oneDNN's RNN primitive, GRU and RNN as ATen's
    # cells step by step) or "cudnn" (cuDNN's fused kernels and their reserve space)
    rnn: Literal["aten", "cudnn"] = "aten"
    optimizer_impl: Literal["single", "foreach"] = "single"  # torch.optim's default here
    rng_state_bytes: int = 0  # device bytes a checkpoint segment keeps for RNG state
    autocast_fp32: frozenset = field(default_factory=frozenset)
    loss_casts_logits: bool = True  # autocast casts cross-entropy's input to fp32 first
    attention_upcast: bool = False  # the math attention path computes half inputs in fp32
    attention: Literal["auto", "fused", "composite"] = "auto"  # how attention runs
    threads: int = 1  # CPU threads (per-thread scratch buffers)
    autocast_low: frozenset = AUTOCAST_LOW  # ops autocast runs in 16 bits (inputs and weights cast)
    autocast_weights: frozenset = AUTOCAST_WEIGHTS  # ops whose weights autocast casts, inputs and outputs kept

    def attention_kernel(self, dropout: float, training: bool) -> str:
        """"fused" (a flash / memory-efficient kernel: saves q, k, v, output and
        log-sum-exp) or "composite" (the math path: saves the probabilities)."""
        if self.attention != "auto":
            return self.attention
        if self.kind == "cpu" and dropout > 0 and training:
            return "composite"  # the CPU flash kernel has no dropout: SDPA takes the math path
        return "fused"

    def round(self, n: int) -> int:
        r = self.alloc_round
        return n if r <= 1 or n == 0 else -(-n // r) * r

    @property
    def usable(self) -> int | None:
        """Bytes PyTorch's allocator can hand out."""
        return None if self.memory is None else self.memory - self.context_bytes


def _cuda(name: str, mib: int, description: str) -> Device:
    return Device(name, "cuda", mib * MiB, description, alloc_round=CUDA_ALLOC_ROUND,
                  context_bytes=CUDA_CONTEXT_BYTES, workspace_bytes=CUBLAS_WORKSPACE_BYTES,
                  dropout_mask_bytes=1, conv="cudnn", rnn="cudnn", optimizer_impl="foreach", rng_state_bytes=0,
                  autocast_fp32=CUDA_AUTOCAST_FP32, loss_casts_logits=False, attention_upcast=False)


# Memory as nvidia-smi reports it ("MiB total").
DEVICES: dict[str, Device] = {d.name: d for d in [
    Device("cpu", "cpu", None, "the host CPU (PyTorch's CPU allocator: no rounding; oneDNN convolutions)",
           rng_state_bytes=CPU_RNG_STATE_BYTES, attention_upcast=True, threads=_cpu_threads(),
           autocast_low=CPU_AUTOCAST_LOW, autocast_weights=CPU_AUTOCAST_WEIGHTS, autocast_fp32=CPU_AUTOCAST_FP32),
    _cuda("t4-16gb", 15360, "NVIDIA T4 16 GB"),
    _cuda("v100-16gb", 16384, "NVIDIA V100 16 GB"),
    _cuda("a4000-16gb", 16376, "NVIDIA RTX A4000 16 GB"),
    _cuda("rtx3090-24gb", 24576, "NVIDIA GeForce RTX 3090 24 GB"),
    _cuda("rtx4090-24gb", 24564, "NVIDIA GeForce RTX 4090 24 GB"),
    _cuda("a5000-24gb", 24564, "NVIDIA RTX A5000 24 GB"),
    _cuda("a10-24gb", 23028, "NVIDIA A10 24 GB"),
    _cuda("l4-24gb", 23034, "NVIDIA L4 24 GB"),
    _cuda("v100-32gb", 32768, "NVIDIA V100 32 GB"),
    _cuda("a100-40gb", 40960, "NVIDIA A100 40 GB"),
    _cuda("a6000-48gb", 49140, "NVIDIA RTX A6000 48 GB"),
    _cuda("l40s-48gb", 46068, "NVIDIA L40S 48 GB"),
    _cuda("a100-80gb", 81920, "NVIDIA A100 80 GB"),
    _cuda("h100-80gb", 81559, "NVIDIA H100 80 GB"),
    _cuda("h800-80gb", 81559, "NVIDIA H800 80 GB"),
    _cuda("h200-141gb", 143771, "NVIDIA H200 141 GB"),
]}


def lookup(name: str) -> Device | None:
    return DEVICES.get(name.strip().lower())


def suggest(name: str) -> str:
    """A help line for an unknown device name."""
    return did_you_mean(name.lower(), DEVICES) or "devices: " + ", ".join(DEVICES)


def parse_bytes(text: str | int | float) -> int:
    """`"24GiB"`, `"80GB"`, `"512MiB"`, `2e9` -> bytes (GB and MB are decimal, GiB and MiB binary)."""
    if isinstance(text, (int, float)):
        return int(text)
    s = text.strip().replace(" ", "")
    units = {"kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024 ** 4, "kb": 10 ** 3, "mb": 10 ** 6,
             "gb": 10 ** 9, "tb": 10 ** 12, "b": 1, "": 1}
    i = len(s)
    while i and not (s[i - 1].isdigit() or s[i - 1] == "."):
        i -= 1
    num, unit = s[:i], s[i:].lower()
    if not num or unit not in units:
        raise ValueError(f"not a size: {text!r} (write e.g. \"24GiB\" or \"80GB\")")
    return int(float(num) * units[unit])


def with_overrides(dev: Device, memory: int | None = None, attention: str | None = None) -> Device:
    out = dev
    if memory is not None:
        out = replace(out, memory=memory)
    if attention is not None and attention != "auto":
        out = replace(out, attention=attention)
    return out
