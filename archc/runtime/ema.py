"""Moving-average target networks (BYOL, MoCo): what the `ema` op declares.

A spec declares `... -> target: Net(...) -> ema(target, of=online, decay=0.996)`; the
built model holds both networks (their weights are `target.*` and `online.*` in its
state_dict) and an `EMA` marker module per declaration. Training calls

    archc.runtime.ema.init(model)      # once, before the optimizer is made: target <- source, target frozen
    archc.runtime.ema.update(model)    # after every optimizer step: target <- decay·target + (1-decay)·source

(`archc train` and `EMACallback` for `fit` do both). Parameters move by the average;
buffers (batch-norm statistics) are copied. Imports torch, never the compiler.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .train.loop import Callback, TrainState


class EMA(nn.Module):
    """The `ema` op's module: returns its input (detached unless `detach=False`) and names the
    pair (`target`, `source`) and the decay that `update` applies. No weights of its own."""

    def __init__(self, target: str, source: str, decay: float = 0.996, detach: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.target, self.source, self.decay, self.detach = target, source, float(decay), detach

    def forward(self, x):
        return x.detach() if self.detach else x

    def extra_repr(self) -> str:
        return f"target={self.target!r}, of={self.source!r}, decay={self.decay}"


@dataclass(frozen=True)
class Pair:
    target: str
    source: str
    decay: float


def pairs(model: nn.Module) -> list[Pair]:
    """Every (target, source, decay) the model declares, once per target."""
    out: dict[str, Pair] = {}
    for m in model.modules():
        if isinstance(m, EMA):
            p = Pair(m.target, m.source, m.decay)
            if out.setdefault(m.target, p) != p:
                raise ValueError(f"`{m.target}` is declared the moving average of `{out[m.target].source}` "
                                 f"(decay {out[m.target].decay}) and of `{m.source}` (decay {m.decay})")
    return list(out.values())


def _tensors(model: nn.Module, p: Pair) -> list[tuple[str, torch.Tensor, torch.Tensor, bool]]:
    """(name, target tensor, source tensor, is_parameter), matched by their names under each module."""
    target, source = model.get_submodule(p.target), model.get_submodule(p.source)
    t_params, s_params = dict(target.named_parameters()), dict(source.named_parameters())
    t_bufs, s_bufs = dict(target.named_buffers()), dict(source.named_buffers())
    if set(t_params) != set(s_params) or set(t_bufs) != set(s_bufs):
        missing = sorted((set(s_params) | set(s_bufs)) ^ (set(t_params) | set(t_bufs)))
        raise ValueError(f"EMA target `{p.target}` and source `{p.source}` have different weights: {missing[:5]}")
    out = []
    for name, s in s_params.items():
        t = t_params[name]
        if t.shape != s.shape:
            raise ValueError(f"EMA target `{p.target}.{name}` is {list(t.shape)} but `{p.source}.{name}` is "
                             f"{list(s.shape)}")
        out.append((name, t, s, True))
    for name, s in s_bufs.items():
        t = t_bufs[name]
        if t.shape != s.shape:
            raise ValueError(f"EMA target buffer `{p.target}.{name}` is {list(t.shape)} but its source's is "
                             f"{list(s.shape)}")
        out.append((name, t, s, False))
    return out


@torch.no_grad()
def init(model: nn.Module) -> list[Pair]:
    """Copy each source into its target and freeze the target (call before making the optimizer)."""
    found = pairs(model)
    for p in found:
        for _, t, s, is_param in _tensors(model, p):
            t.copy_(s)
            if is_param:
                t.requires_grad_(False)
    return found


@torch.no_grad()
def update(model: nn.Module, found: list[Pair] | None = None) -> None:
    """One moving-average step of every target: t <- decay·t + (1 - decay)·s (buffers copied)."""
    for p in pairs(model) if found is None else found:
        for _, t, s, is_param in _tensors(model, p):
            if is_param and t.is_floating_point():
                t.mul_(p.decay).add_(s.detach().to(t.dtype) * (1.0 - p.decay))  # decay·t + (1-decay)·s, as written
            else:
                t.copy_(s)


class EMACallback(Callback):
    """`update(model)` after every optimizer step of `fit` (pass the model that holds the EMA
    modules; `fit` may be training a wrapper around it)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.found = pairs(model)

    def on_step_end(self, state: TrainState) -> None:
        update(self.model, self.found)
