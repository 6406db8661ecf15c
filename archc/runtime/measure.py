"""Measuring what a training step holds, to hold archc's memory estimates to account.

Three measurements, each independent of archc's compiler (this module imports
torch only):

- `saved_for_backward(fn)`: the bytes autograd keeps for backward while `fn`
  runs (a forward pass and its loss), seen through
  torch.autograd.graph.saved_tensors_hooks. Each storage counts once: a tensor
  saved by two ops, or saved as a view, or an in-place result saved with its
  input, is one storage (the naive sum, also reported, is far higher).
  Parameters and buffers are model state, not activations, and are left out.
- `replay_peak(fn)`: the peak of live allocated bytes while `fn` runs,
  replaying torch.profiler's memory events (profile_memory=True) in order,
  on top of the bytes already live when it starts.
- `model_state(model, optimizer)`: parameter, gradient and optimizer-state
  bytes from the real tensors (after a real optimizer step).

`train_step` is the step these measure, and the step archc's estimator models:
forward and cross-entropy loss (inside autocast, if any), backward, optimizer
step, zero_grad(set_to_none=True).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


# -- storages -----------------------------------------------------------------------

def _storage(t: torch.Tensor) -> tuple[int, int]:
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


def distinct_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (None entries skipped)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            ptr, n = _storage(t)
            if n:
                seen[ptr] = n
    return sum(seen.values())


def optimizer_tensors(optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


@dataclass
class ModelState:
    parameters: int
    buffers: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.parameters + self.buffers + self.gradients + self.optimizer


def model_state(model: torch.nn.Module, optimizer=None) -> ModelState:
    """Bytes of parameters, buffers, gradients (as they are now) and optimizer state."""
    params = list(model.parameters())
    return ModelState(distinct_bytes(params), distinct_bytes(model.buffers()),
                      distinct_bytes(p.grad for p in params),
                      distinct_bytes(optimizer_tensors(optimizer)) if optimizer is not None else 0)


# -- (a) saved for backward -------------------------------------------------------------

@dataclass
class SavedReport:
    bytes: int  # distinct storages, parameters and buffers excluded
    naive: int  # every saved tensor's storage summed as if none were shared
    count: int  # tensors packed
    storages: list[tuple[tuple, str, int]] = field(default_factory=list)  # (shape, dtype, bytes) per storage
    result: object = None


def saved_for_backward(fn, *, exclude=()) -> SavedReport:
    """Run `fn()` and count the bytes autograd saves for backward, each storage once.

    `exclude`: tensors whose storages are not activations (a model's parameters and
    buffers). The saved tensors stay referenced only as long as autograd keeps them."""
    skip = {_storage(t)[0] for t in exclude}
    seen: dict[int, tuple[tuple, str, int]] = {}
    naive = count = 0

    def pack(t):
        nonlocal naive, count
        ptr, n = _storage(t)
        count += 1
        if ptr in skip or n == 0:
            return t
        naive += n
        if ptr not in seen:
            seen[ptr] = (tuple(t.shape), str(t.dtype).replace("torch.", ""), n)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return SavedReport(sum(v[2] for v in seen.values()), naive, count, list(seen.values()), result)


# -- (b) peak of live bytes, replayed from the profiler -------------------------------------

@dataclass
class PeakReport:
    peak: int  # base + the highest running total of allocations minus frees
    base: int
    net: int  # bytes allocated and not freed by the end
    events: int
    at: int  # index of the event that reached the peak


def memory_events(prof, device: str = "cpu") -> list[int]:
    """The signed byte counts of a profile's allocation (+) and free (-) events, in order."""
    kind = torch.autograd.DeviceType.CPU if device == "cpu" else torch.autograd.DeviceType.CUDA
    evs = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == kind]
    evs.sort(key=lambda e: e.start_ns())
    return [int(e.nbytes()) for e in evs]


def replay_peak(fn, *, base: int = 0, device: str = "cpu") -> PeakReport:
    """Profile `fn()` with profile_memory=True and replay its memory events in order:
    the peak of the running total, on top of `base` bytes already live."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    with profile(activities=acts, profile_memory=True, record_shapes=False) as prof:
        fn()
    deltas = memory_events(prof, device)
    cur = top = 0
    at = -1
    for i, d in enumerate(deltas):
        cur += d
        if cur > top:
            top, at = cur, i
    return PeakReport(base + top, base, cur, len(deltas), at)


# -- the step ---------------------------------------------------------------------------

def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss archc assumes: cross-entropy of [..., classes] against int64 [...]."""
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def _autocast(device: str, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


def forward_loss(model, inputs, target, *, autocast_dtype=None, device: str = "cpu"):
    """Forward pass and loss, as `train_step` runs them (the output is released at once)."""
    with _autocast(device, autocast_dtype):
        out = model(*inputs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if target is None:  # the model returns its loss
            return out
        loss = cross_entropy(out, target)
        del out
    return loss


def train_step(model, inputs, target, optimizer, *, autocast_dtype=None, accumulate: int = 1,
               device: str = "cpu") -> None:
    """One step: `accumulate` forward/loss/backward passes, optimizer.step(), zero_grad(set_to_none)."""
    for _ in range(accumulate):
        loss = forward_loss(model, inputs, target, autocast_dtype=autocast_dtype, device=device)
        if accumulate > 1:
            loss = loss / accumulate
        loss.backward()
        del loss
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class Measurement:
    saved: SavedReport
    peak: PeakReport
    state: ModelState  # after backward: parameters, buffers, gradients, optimizer state
    inputs: int  # bytes of the batch (inputs and targets)


def measure_training(model, inputs, target, optimizer, *, autocast_dtype=None, accumulate: int = 1,
                     warmup: int = 1) -> Measurement:
    """Measure a steady-state CPU training step of `model` (already in train mode).

    `warmup` steps first create the optimizer's state; then (a) saved-for-backward bytes
    of one forward and loss, (c) model-state bytes right after its backward pass
    (gradients present), and (b) the replayed peak of one `train_step`."""
    for _ in range(warmup):
        train_step(model, inputs, target, optimizer, autocast_dtype=autocast_dtype)
    exclude = list(model.parameters()) + list(model.buffers())
    saved = saved_for_backward(lambda: forward_loss(model, inputs, target, autocast_dtype=autocast_dtype),
                               exclude=exclude)
    saved.result.backward()
    saved.result = None
    state = model_state(model, optimizer)
    optimizer.zero_grad(set_to_none=True)
    batch = distinct_bytes(list(inputs) + [target])
    base = distinct_bytes(exclude + optimizer_tensors(optimizer) + list(inputs) + [target] +
                          [p.grad for p in model.parameters()])
    peak = replay_peak(lambda: train_step(model, inputs, target, optimizer, autocast_dtype=autocast_dtype,
                                          accumulate=accumulate), base=base)
    return Measurement(saved, peak, state, batch)
