"""DARTS's bilevel search, run by archc's one training loop (`fit`) through a callback.

    from archc.runtime.train import TrainConfig
    from archc.runtime.train.darts import DartsConfig, darts_search

    net = prog.build("DartsSearch", relax="darts")        # an rt.Supernet: weights and α apart
    result = darts_search(net, data.train, data.val, TrainConfig(epochs=50, lr=0.025),
                          DartsConfig(order=2), genotype_fn=lambda alphas: ..., checkpoint="search.pt")
    result.alphas        # {"normal": tensor, "reduce": tensor}
    result.genotypes     # what genotype_fn said after each epoch

Each training step is the reference's: first an architecture step on a batch of
`valid` (α's Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3), then the
weight step on the training batch (`fit`'s optimizer over the weights only:
SGD, momentum 0.9, weight decay 3e-4, gradients clipped at 5, the learning
rate annealed by a cosine from `lr` to `lr_min` over the epochs).

- `order=1`: α follows the gradient of the validation loss at the current weights.
- `order=2`: the gradient at the weights after one virtual SGD step on the
  training batch, w' = w - η (momentum buffer + ∇w L_train + weight decay · w), minus
  η times the Hessian-vector product ∇²_{α,w} L_train · ∇w' L_val, by finite
  differences at w ± R v with R = 0.01 / ‖v‖. The virtual step is taken in
  place on the model's weights (no copy of the model) and undone exactly; the
  batch-norm statistics the forward at w' updates are put back (the reference
  runs it on a copy), so the steps match the reference's (tests/specs/test_darts_parity.py).

Checkpoints (`checkpoint=PATH`): after every `checkpoint_every` epochs and at
the end, the model (weights and α), both optimizers, the epoch, the genotypes
so far and the random states; `darts_search` resumes from an existing one
(`resume=True`) and runs only the epochs left.

Imports torch, never the compiler: the caller passes `genotype_fn` to turn α
into something to report (archc.search.darts passes a derivation rule).
"""
from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .loop import Callback, FitResult, TrainConfig, TrainState, _call, _to, cross_entropy, fit, \
    primary_output, split_batch


@dataclass
class DartsConfig:
    """The architecture side of a DARTS search (the weight side is the TrainConfig)."""

    order: int = 1  # 1: first-order; 2: second-order (virtual step + Hessian-vector product)
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    r: float = 1e-2  # finite differences: R = r / ||v||
    lr_min: float | None = 0.001  # the weights' cosine schedule ends here; None: keep `lr`
    checkpoint_every: int = 1  # epochs between checkpoints

    def __post_init__(self):
        if self.order not in (1, 2):
            raise ValueError(f"DARTS `order` is 1 or 2, got {self.order}")
        if self.arch_lr <= 0:
            raise ValueError(f"`arch_lr` must be positive, got {self.arch_lr}")


@dataclass
class DartsResult:
    fit: FitResult  # the weight training (metrics: the supernet on the evaluation data)
    alphas: dict[str, torch.Tensor]  # the final architecture parameters, by name
    genotypes: list[Any]  # genotype_fn(alphas) after each epoch (all epochs, resumed ones too)
    epochs: int  # epochs done in all (resumed ones included)
    seconds: float  # this run's wall time
    resumed_from: int = 0  # epochs the checkpoint already held
    history: list[dict] = field(default_factory=list)  # per epoch: supernet metrics, seconds


class _Cycle:
    """Batches of `loader`, pass after pass, with a position that a checkpoint can keep: the
    shuffling generator's state when the pass began and the batches taken since."""

    def __init__(self, loader: Iterable, position: tuple | None = None):
        self.loader = loader
        gen = getattr(loader, "generator", None)
        self.gen = gen if isinstance(gen, torch.Generator) else None
        self.it, self.cursor, self.start = None, 0, None
        if position is not None:  # re-create the pass in progress, then the generator as it was
            start, cursor = position
            now = self.gen.get_state() if self.gen is not None else None
            if self.gen is not None and start is not None:
                self.gen.set_state(start)
            self.it, self.start = iter(loader), start
            for _ in range(cursor):
                next(self.it)
            self.cursor = cursor
            if now is not None:
                self.gen.set_state(now)

    def __next__(self):
        while True:
            if self.it is None:
                self.start = self.gen.get_state() if self.gen is not None else None
                self.it, self.cursor = iter(self.loader), 0
            try:
                batch = next(self.it)
            except StopIteration:
                if self.cursor == 0:
                    raise ValueError("the validation data for the architecture steps is empty") from None
                self.it = None
                continue
            self.cursor += 1
            return batch

    def position(self) -> tuple | None:
        return (self.start, self.cursor) if self.it is not None else None


class DartsCallback(Callback):
    """The architecture step before each weight step, the weights' learning rate per
    epoch, genotypes and checkpoints. Use through `darts_search`, or add it to `fit`
    yourself (then pass `fit(..., optimizer=weights_optimizer)`)."""

    def __init__(self, alphas: Sequence[nn.Parameter], valid: Iterable, config: DartsConfig,
                 train_config: TrainConfig, *, names: Sequence[str] | None = None,
                 loss_fn: Callable | None = None, genotype_fn: Callable[[dict], Any] | None = None,
                 checkpoint: str | os.PathLike | None = None, total_epochs: int | None = None,
                 start_epoch: int = 0, arch_state: dict | None = None, genotypes: list | None = None,
                 history: list | None = None, train: Iterable | None = None,
                 valid_position: tuple | None = None, meta: dict | None = None):
        self.train = train
        self.meta = meta
        self._valid_position = valid_position
        self.alphas = list(alphas)
        if not self.alphas:
            raise ValueError("the model has no architecture parameters: build it with relax=\"darts\"")
        self.names = list(names) if names is not None else [f"alpha{i}" for i in range(len(self.alphas))]
        self.valid = valid
        self.cfg, self.train_cfg = config, train_config
        self.loss_fn = loss_fn or cross_entropy
        self.genotype_fn = genotype_fn
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.total_epochs = total_epochs
        self.start_epoch = start_epoch
        self.genotypes = list(genotypes or [])
        self.history = list(history or [])
        self.arch_opt = torch.optim.Adam(self.alphas, lr=config.arch_lr, betas=config.arch_betas,
                                         weight_decay=config.arch_weight_decay)
        if arch_state:
            self.arch_opt.load_state_dict(arch_state)
        self._valid_iter = None
        self._pending: int | None = None
        self._epoch_t0 = 0.0
        self.arch_steps = 0

    # -- fit's hooks
    def on_fit_start(self, state: TrainState) -> None:
        self._valid_iter = _Cycle(self.valid, self._valid_position)
        state.extras["darts"] = self  # for other callbacks: genotypes, history, start_epoch

    def lr_at(self, epoch: int) -> float:
        base, lo, total = self.train_cfg.lr, self.cfg.lr_min, self.total_epochs
        if lo is None or not total:
            return base
        return lo + (base - lo) * (1 + math.cos(math.pi * epoch / total)) / 2

    def on_epoch_start(self, state: TrainState) -> None:
        lr = self.lr_at(self.start_epoch + state.epoch)
        for g in state.optimizer.param_groups:
            g["lr"] = lr
        self._epoch_t0 = time.perf_counter()

    def on_step_start(self, state: TrainState, batch) -> None:
        if state.micro_step % state.config.accumulate:
            return  # one architecture step per optimizer step
        valid = next(self._valid_iter)
        if self.cfg.order == 1:
            grads = self._first_order(state, valid)
        else:
            grads = self._second_order(state, batch, valid)
        for a, g in zip(self.alphas, grads):
            a.grad = g
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)
        self.arch_steps += 1

    def on_epoch_end(self, state: TrainState) -> None:
        epoch = self.start_epoch + state.epoch + 1
        if self.genotype_fn is not None:
            self.genotypes.append(self.genotype_fn(self.current_alphas()))
        self.history.append({"epoch": epoch, "seconds": round(time.perf_counter() - self._epoch_t0, 3),
                             "lr": state.optimizer.param_groups[0]["lr"], "loss": state.loss})
        if self.checkpoint and (epoch % self.cfg.checkpoint_every == 0 or epoch == self.total_epochs):
            self._pending = epoch  # saved after the epoch's evaluation (it may draw from the loaders' RNGs)

    def on_evaluate(self, state: TrainState, metrics: dict) -> None:
        if self.history and self.history[-1]["epoch"] == self.start_epoch + state.epoch + 1:
            self.history[-1].update({k: v for k, v in metrics.items() if k in ("loss", "accuracy")})
        if self._pending is not None:
            self.save(state, self._pending)
            self._pending = None

    def on_fit_end(self, state: TrainState) -> None:
        if self._pending is not None:  # no evaluation followed the last epoch
            self.save(state, self._pending)
            self._pending = None

    # -- the architecture gradient
    def _loss(self, model, batch, device) -> torch.Tensor:
        inputs, target = split_batch(_to(batch, device))
        return self.loss_fn(primary_output(model, _call(model, inputs)), target)

    def _first_order(self, state: TrainState, valid) -> list[torch.Tensor]:
        loss = self._loss(state.model, valid, state.device)
        return list(torch.autograd.grad(loss, self.alphas))

    def _weights(self, state: TrainState) -> list[nn.Parameter]:
        return [p for g in state.optimizer.param_groups for p in g["params"] if p.requires_grad]

    def _second_order(self, state: TrainState, train_batch, valid) -> list[torch.Tensor]:
        model, device = state.model, state.device
        weights = self._weights(state)
        group = state.optimizer.param_groups[0]
        eta, wd, momentum = group["lr"], group.get("weight_decay", 0.0), group.get("momentum", 0.0)

        def grads(loss, params):
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]

        # the virtual step: w' = w - η (μ·buf + ∇w L_train(w) + λ w)
        g_train = grads(self._loss(model, train_batch, device), weights)
        backup = [w.detach().clone() for w in weights]
        with torch.no_grad():
            for w, g in zip(weights, g_train):
                d = g + wd * w
                buf = state.optimizer.state.get(w, {}).get("momentum_buffer")
                if buf is not None and momentum:
                    d = d + momentum * buf
                w.sub_(eta * d)
        # ∇α L_val(w', α) and v = ∇w' L_val(w', α); the reference runs this on a copy of the
        # model, so the batch norms' running statistics it updates are put back
        buffers = [b.detach().clone() for b in model.buffers()]
        g_val = grads(self._loss(model, valid, device), self.alphas + weights)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        d_alpha, v = g_val[:len(self.alphas)], g_val[len(self.alphas):]
        # the Hessian-vector product by finite differences around w
        R = self.cfg.r / torch.cat([x.reshape(-1) for x in v]).norm().clamp_min(1e-12)
        with torch.no_grad():
            for w, b, x in zip(weights, backup, v):
                w.copy_(b).add_(x, alpha=float(R))
        g_pos = grads(self._loss(model, train_batch, device), self.alphas)
        with torch.no_grad():
            for w, b, x in zip(weights, backup, v):
                w.copy_(b).sub_(x, alpha=float(R))
        g_neg = grads(self._loss(model, train_batch, device), self.alphas)
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)
        return [da - eta * (p - n) / (2 * R) for da, p, n in zip(d_alpha, g_pos, g_neg)]

    # -- checkpoints
    def current_alphas(self) -> dict[str, torch.Tensor]:
        return {n: a.detach().clone() for n, a in zip(self.names, self.alphas)}

    def _generators(self):
        for name, loader in (("train", self.train), ("valid", self.valid)):
            gen = getattr(loader, "generator", None)
            if isinstance(gen, torch.Generator):
                yield name, gen

    def save(self, state: TrainState, epoch: int) -> None:
        ckpt = {
            "epoch": epoch,
            "total_epochs": self.total_epochs,
            "model": state.model.state_dict(),
            "weights_optimizer": state.optimizer.state_dict(),
            "arch_optimizer": self.arch_opt.state_dict(),
            "genotypes": self.genotypes,
            "history": self.history,
            "darts": asdict(self.cfg),
            "rng": {**_rng_state(), "loaders": {name: gen.get_state() for name, gen in self._generators()}},
            "valid_position": self._valid_iter.position() if self._valid_iter is not None else None,
            "meta": self.meta,
        }
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, tmp)
        os.replace(tmp, self.checkpoint)


class CheckpointMismatch(ValueError):
    """A checkpoint that belongs to another search than the one asked for."""


def _differs(old: dict, new: dict) -> str:
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys[:3])


def _rng_state() -> dict:
    out = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        st = np.random.get_state()  # the key as a list: the checkpoint loads with weights_only=True
        out["numpy"] = (st[0], st[1].tolist(), *st[2:])
    except ImportError:  # pragma: no cover
        pass
    return out


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    torch.set_rng_state(s["torch"])
    if "numpy" in s:
        import numpy as np

        st = s["numpy"]
        np.random.set_state((st[0], np.asarray(st[1], dtype=np.uint32), *st[2:]))


class _Reseed(Callback):
    """On resume: the random states as they were when the checkpoint was written (fit
    seeds everything at its start; this runs right after), the loaders' shuffling included."""

    def __init__(self, rng: dict, loaders: dict):
        self.rng, self.loaders = rng, loaders

    def on_fit_start(self, state):
        _set_rng_state(self.rng)
        for name, loader in self.loaders.items():
            gen = getattr(loader, "generator", None)
            if isinstance(gen, torch.Generator) and name in self.rng.get("loaders", {}):
                gen.set_state(self.rng["loaders"][name])


def darts_search(model: nn.Module, train: Iterable, valid: Iterable, config: TrainConfig | None = None,
                 darts: DartsConfig | None = None, *, evaluate_on: Iterable | None = None,
                 callbacks: Sequence[Callback] = (), loss_fn: Callable | None = None,
                 genotype_fn: Callable[[dict], Any] | None = None, checkpoint: str | os.PathLike | None = None,
                 resume: bool = True, arch_parameters: Sequence[nn.Parameter] | None = None,
                 arch_names: Sequence[str] | None = None, meta: dict | None = None) -> DartsResult:
    """Search: weights on `train`, α on `valid` (the bilevel problem's validation data).

    `config` is the weight side (default: the reference's SGD, lr 0.025, momentum 0.9,
    weight decay 3e-4, clip 5; its `epochs` is the search length); `darts` the
    architecture side. `evaluate_on` (default `valid`) is what `fit` evaluates the
    supernet on after each epoch. α are `model.arch_parameters()` (an rt.Supernet)
    unless given. With `checkpoint`, progress is saved there and resumed from it; `meta`
    (what identifies the search, e.g. a plan's fingerprint) is saved with it, and a
    checkpoint whose `meta` differs is refused (CheckpointMismatch) rather than resumed.
    """
    config = config or TrainConfig(epochs=50, optimizer="sgd", lr=0.025, momentum=0.9, weight_decay=3e-4,
                                   clip_grad=5.0)
    darts = darts or DartsConfig()
    if config.epochs is None:
        raise ValueError("a DARTS search is measured in epochs: set `epochs`")
    if arch_parameters is None:
        named = model.named_arch_parameters() if hasattr(model, "named_arch_parameters") else []
        arch_names = arch_names or [n for n, _ in named]
        arch_parameters = [p for _, p in named]
    arch_ids = {id(a) for a in arch_parameters}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in arch_ids]
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    model.to(device)
    opt = torch.optim.SGD(weights, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay) \
        if config.optimizer == "sgd" else None
    if opt is None:
        from .loop import make_optimizer

        opt = make_optimizer(weights, config)
    start, extra, arch_state, genotypes, history, position = 0, [], None, [], [], None
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path and resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if meta is not None and ckpt.get("meta") is not None and ckpt["meta"] != meta:
            raise CheckpointMismatch(f"checkpoint {ckpt_path} is of another search ({_differs(ckpt['meta'], meta)}): "
                                     "remove it or use another path")
        if ckpt.get("total_epochs") not in (None, config.epochs):
            raise CheckpointMismatch(f"checkpoint {ckpt_path} is of a {ckpt['total_epochs']}-epoch search, not "
                                     f"{config.epochs}: remove it or use another path")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:  # another network's weights
            first = str(e).strip().splitlines()[0]
            raise CheckpointMismatch(f"checkpoint {ckpt_path} is of another network ({first}): remove it or use "
                                     "another path") from None
        opt.load_state_dict(ckpt["weights_optimizer"])
        start, arch_state = ckpt["epoch"], ckpt["arch_optimizer"]
        genotypes, history = ckpt.get("genotypes", []), ckpt.get("history", [])
        position = ckpt.get("valid_position")
        extra = [_Reseed(ckpt["rng"], {"train": train, "valid": valid})]
    t0 = time.perf_counter()
    cb = DartsCallback(arch_parameters, valid, darts, config, names=arch_names, loss_fn=loss_fn,
                       genotype_fn=genotype_fn, checkpoint=ckpt_path, total_epochs=config.epochs,
                       start_epoch=start, arch_state=arch_state, genotypes=genotypes, history=history,
                       train=train, valid_position=position, meta=meta)
    left = config.epochs - start
    if left <= 0:
        fit_result = FitResult({}, None, None, [], 0, 0, 0.0, "already done")
    else:
        fit_result = fit(model, train, evaluate_on if evaluate_on is not None else valid,
                         config.but(epochs=left, schedule="constant", warmup_steps=0), callbacks=[*extra, cb,
                                                                                                 *callbacks],
                         loss_fn=loss_fn, optimizer=opt)
    return DartsResult(fit_result, cb.current_alphas(), cb.genotypes, max(start, start + fit_result.epochs),
                       time.perf_counter() - t0, start, cb.history)


__all__ = ["CheckpointMismatch", "DartsCallback", "DartsConfig", "DartsResult", "darts_search"]
