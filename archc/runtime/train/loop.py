"""The training loop: `fit`, `evaluate`, their configuration, state and callbacks.

See the package docstring (`archc.runtime.train`) for the API and how other
loops (DARTS, distillation, EMA) plug into it. Imports torch (and rich for the
progress bar), never the compiler.
"""
from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "fp16", "bf16", "fp16-mixed", "bf16-mixed")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    """What `fit` does; every field has a default, so `TrainConfig(epochs=2)` is enough.

    Length: `epochs` passes over the training data and/or `steps` optimizer
    steps; training stops at whichever limit comes first (None: no limit from
    that side; one of them must be set). Evaluation on the validation data runs
    after every epoch, or every `eval_every` optimizer steps, and once more at
    the end if the last step was not evaluated.
    """

    epochs: int | None = 1
    steps: int | None = None
    # optimizer (ignored when `fit` is given an optimizer instance)
    optimizer: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # constant | cosine | linear (decay to 0 over the run), after warmup
    warmup_steps: int = 0
    accumulate: int = 1  # micro-batches per optimizer step
    clip_grad: float | None = None  # max global gradient norm
    precision: str = "fp32"  # fp32 | fp16 | bf16 | fp16-mixed | bf16-mixed
    # evaluation and early stopping
    eval_every: int | None = None  # optimizer steps between evaluations; None: once per epoch
    monitor: str = "accuracy"  # the metric early stopping and `best` follow
    mode: str = "max"  # max | min
    patience: int | None = None  # evaluations without improvement before stopping; None: never
    restore_best: bool = False  # load the best evaluated weights back at the end
    # the rest
    seed: int | None = 0  # seeds python, torch, numpy and the train loader's shuffling; None: leave as is
    device: str | None = None  # None: the model's device
    progress: bool = False  # a rich progress bar
    description: str = "train"  # the progress bar's label

    def __post_init__(self):
        if self.epochs is None and self.steps is None:
            raise ValueError("set `epochs` or `steps` (or both)")
        for name in ("epochs", "steps", "eval_every", "patience"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"`{name}` must be at least 1, got {v}")
        if self.accumulate < 1:
            raise ValueError(f"`accumulate` must be at least 1, got {self.accumulate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer `{self.optimizer}`; one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision `{self.precision}`; one of {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule `{self.schedule}`; one of {', '.join(SCHEDULES)}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"`mode` is max or min, got `{self.mode}`")

    def but(self, **changes) -> "TrainConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, ignoring keys that are not fields (handy for plan directives)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})


@dataclass
class TrainState:
    """Everything a callback may read or change while `fit` runs.

    Callbacks may set `stop = True` (with a `stop_reason`) to end training after
    the current step, and keep their own data in `extras`.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    device: torch.device
    scheduler: Any = None
    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # optimizer steps taken so far
    micro_step: int = 0  # micro-batches seen so far
    loss: float | None = None  # the last micro-batch's loss (after on_loss)
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    history: list[dict[str, float]] = field(default_factory=list)  # every evaluation, with step and epoch
    best: float | None = None  # best value of config.monitor so far
    best_step: int | None = None
    best_state: dict | None = None  # weights at the best evaluation (restore_best only)
    evals_since_best: int = 0
    stop: bool = False
    stop_reason: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def improved(self, value: float) -> bool:
        if self.best is None or (isinstance(self.best, float) and math.isnan(self.best)):
            return True
        return value > self.best if self.config.mode == "max" else value < self.best


class Callback:
    """Hooks into `fit`; override the ones you need. Called in list order.

    - on_fit_start(state)                       before the first step
    - on_epoch_start(state) / on_epoch_end(state)
    - on_step_start(state, batch)               before each micro-batch's forward
                                                (DARTS: an architecture step on a validation batch)
    - on_loss(state, batch, outputs, loss)      returns the loss to back-propagate
                                                (distillation: add the teacher's term)
    - on_step_end(state)                        after each optimizer step (EMA: update the average)
    - on_evaluate(state, metrics)               after each evaluation (pruning: report the value,
                                                raise to abandon; early stopping of your own: state.stop)
    - on_fit_end(state)                         after the last step (also when a callback stops it,
                                                not when one raises)
    """

    def on_fit_start(self, state: TrainState) -> None: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_step_start(self, state: TrainState, batch) -> None: ...

    def on_loss(self, state: TrainState, batch, outputs, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def on_step_end(self, state: TrainState) -> None: ...

    def on_evaluate(self, state: TrainState, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, state: TrainState) -> None: ...


class LambdaCallback(Callback):
    """A callback from plain functions: `LambdaCallback(on_evaluate=lambda state, m: ...)`."""

    def __init__(self, **hooks: Callable):
        for name, fn in hooks.items():
            if not hasattr(Callback, name):
                raise TypeError(f"no hook named `{name}`")
            setattr(self, name, fn)


@dataclass
class FitResult:
    metrics: dict[str, float]  # the final evaluation (empty without validation data)
    best: float | None  # best value of config.monitor
    best_step: int | None
    history: list[dict[str, float]]
    steps: int
    epochs: int  # epochs started
    seconds: float
    stop_reason: str | None  # None: ran to its length; else why it stopped early


# -- helpers ---------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed python's `random`, torch (CPU and CUDA) and numpy if it is installed."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def make_optimizer(params: Iterable, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer a config names, over `params` (parameters or param groups)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _make_scheduler(optimizer, config: TrainConfig, total_steps: int | None):
    warm, kind = config.warmup_steps, config.schedule
    if kind == "constant" and not warm:
        return None
    if kind != "constant" and total_steps is None:
        raise ValueError(f"a `{kind}` schedule needs a known length: set `steps`, or `epochs` with a sized loader")

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1 + math.cos(math.pi * t)) if kind == "cosine" else 1.0 - t

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def split_batch(batch) -> tuple[tuple, Any]:
    """A batch is `(inputs..., target)` (a tuple or list) or `{"target": ..., **inputs}`."""
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k != "target"}
        return (inputs,), batch.get("target")
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return (batch[0],), None
        return tuple(batch[:-1]), batch[-1]
    return (batch,), None


def _to(x, device, dtype=None):
    if isinstance(x, torch.Tensor):
        x = x.to(device, non_blocking=True)
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to(v, device, dtype) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device, dtype) for v in x)
    return x


def _call(model, inputs):
    if len(inputs) == 1 and isinstance(inputs[0], dict):
        return model(**inputs[0])
    return model(*inputs)


def primary_output(model, outputs) -> torch.Tensor:
    """The output losses and accuracy read: the one named `logits`, else the first."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        return outputs["logits"] if "logits" in outputs else next(iter(outputs.values()))
    names = getattr(model, "output_names", None) or ()
    if "logits" in names:
        return outputs[list(names).index("logits")]
    return outputs[0]


def cross_entropy(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy over the last axis (sequences are flattened)."""
    if outputs.dim() > 2:
        outputs = outputs.reshape(-1, outputs.shape[-1])
        target = target.reshape(-1)
    return F.cross_entropy(outputs.float(), target)


def _autocast(config: TrainConfig, device: torch.device):
    if config.precision.endswith("-mixed"):
        dtype = torch.bfloat16 if config.precision.startswith("bf16") else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def _param_dtype(config: TrainConfig):
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.precision)


def _device_of(model: nn.Module, config: TrainConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# -- evaluation ------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, loss_fn: Callable | None = None,
             device: torch.device | str | None = None, precision: str = "fp32",
             max_batches: int | None = None) -> dict[str, float]:
    """Mean loss and accuracy of `model` over `loader` (in eval mode; the mode is restored).

    Accuracy is reported when the primary output has one more axis than the
    target (class scores); `count` is the number of examples seen.
    """
    loss_fn = loss_fn or cross_entropy
    cfg = TrainConfig(precision=precision)
    device = torch.device(device) if device is not None else _device_of(model, cfg)
    dtype = _param_dtype(cfg)
    was_training = model.training
    model.eval()
    total_loss, correct, labels, count, classified = 0.0, 0, 0, 0, True
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            inputs, target = split_batch(_to(batch, device, dtype))
            with _autocast(cfg, device):
                out = primary_output(model, _call(model, inputs))
            n = out.shape[0]
            if target is not None:
                total_loss += float(loss_fn(out, target)) * n
                if out.dim() == target.dim() + 1 and not target.is_floating_point():
                    correct += int((out.argmax(-1) == target).sum())
                    labels += target.numel()
                else:
                    classified = False
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        return {"count": 0}
    metrics = {"loss": total_loss / count, "count": count}
    if classified and labels:
        metrics["accuracy"] = correct / labels
    return metrics


# -- training --------------------------------------------------------------------

def fit(model: nn.Module, train: Iterable, val: Iterable | None = None, config: TrainConfig | None = None, *,
        callbacks: Sequence[Callback] = (), loss_fn: Callable | None = None,
        optimizer: torch.optim.Optimizer | None = None, params: Iterable | None = None,
        evaluate_fn: Callable[[nn.Module, Iterable], dict[str, float]] | None = None) -> FitResult:
    """Train `model` on `train` (an iterable of batches, usually a DataLoader).

    `val` is evaluated per `config` (see TrainConfig) with `evaluate_fn(model, val)`
    (default: `evaluate`, mean loss and accuracy). The optimizer is `optimizer`
    if given, else the one `config` names over `params` (default: all of the
    model's parameters; DARTS passes the weights only). `loss_fn(outputs, target)`
    defaults to cross-entropy on the primary output. Exceptions raised by a
    callback (e.g. optuna.TrialPruned) propagate unchanged.
    """
    config = config or TrainConfig()
    if config.seed is not None:
        seed_everything(config.seed)
        gen = getattr(train, "generator", None)  # a DataLoader's shuffling: the same order for the same seed
        if isinstance(gen, torch.Generator):
            gen.manual_seed(config.seed)
    device = _device_of(model, config)
    dtype = _param_dtype(config)
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    loss_fn = loss_fn or cross_entropy
    evaluate_fn = evaluate_fn or (lambda m, data: evaluate(m, data, loss_fn=loss_fn, device=device,
                                                           precision=config.precision))
    if optimizer is None:
        optimizer = make_optimizer([p for p in (params if params is not None else model.parameters())
                                    if p.requires_grad], config)
    try:
        per_epoch = math.ceil(len(train) / config.accumulate)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    total = config.steps
    if config.epochs is not None and per_epoch is not None:
        total = min(total, config.epochs * per_epoch) if total is not None else config.epochs * per_epoch
    state = TrainState(model, optimizer, config, device, scheduler=_make_scheduler(optimizer, config, total))
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16-mixed" and device.type == "cuda" \
        else None
    start = time.perf_counter()
    last_eval_step = -1

    def run_eval() -> None:
        nonlocal last_eval_step
        last_eval_step = state.step
        if val is None:
            return
        metrics = dict(evaluate_fn(model, val))
        metrics.update(step=state.step, epoch=state.epoch)
        state.metrics = metrics
        state.history.append(metrics)
        value = metrics.get(config.monitor)
        if value is not None:
            if state.improved(value):
                state.best, state.best_step, state.evals_since_best = value, state.step, 0
                if config.restore_best:
                    state.best_state = copy.deepcopy(model.state_dict())
            else:
                state.evals_since_best += 1
                if config.patience is not None and state.evals_since_best >= config.patience:
                    state.stop, state.stop_reason = True, (
                        f"no better `{config.monitor}` in {config.patience} evaluation(s)")
        for cb in callbacks:
            cb.on_evaluate(state, metrics)

    progress = _Progress(config, total) if config.progress else None
    model.train()
    for cb in callbacks:
        cb.on_fit_start(state)
    try:
        epoch = state.epoch  # 0, or the epoch a callback's on_fit_start resumed at (archc train --resume)
        while not state.stop and (config.epochs is None or epoch < config.epochs) and \
                (config.steps is None or state.step < config.steps):
            state.epoch = epoch
            for cb in callbacks:
                cb.on_epoch_start(state)
            optimizer.zero_grad(set_to_none=True)
            pending = 0
            for batch in train:
                for cb in callbacks:
                    cb.on_step_start(state, batch)
                inputs, target = split_batch(_to(batch, device, dtype))
                with _autocast(config, device):
                    outputs = _call(model, inputs)
                    loss = loss_fn(primary_output(model, outputs), target)
                for cb in callbacks:
                    loss = cb.on_loss(state, batch, outputs, loss)
                state.loss = float(loss.detach())
                loss = loss / config.accumulate
                (scaler.scale(loss) if scaler else loss).backward()
                state.micro_step += 1
                pending += 1
                if pending < config.accumulate:
                    continue
                _optimizer_step(state, scaler)
                pending = 0
                for cb in callbacks:
                    cb.on_step_end(state)
                if progress:
                    progress.advance(state)
                if config.eval_every and state.step % config.eval_every == 0:
                    run_eval()
                if state.stop or (config.steps is not None and state.step >= config.steps):
                    break
            if pending:  # a last, partial accumulation
                _optimizer_step(state, scaler)
                for cb in callbacks:
                    cb.on_step_end(state)
            epoch += 1
            for cb in callbacks:
                cb.on_epoch_end(state)
            if not config.eval_every and not state.stop:
                run_eval()
        if last_eval_step != state.step:
            run_eval()
        if config.restore_best and state.best_state is not None:
            model.load_state_dict(state.best_state)
        for cb in callbacks:
            cb.on_fit_end(state)
    finally:
        if progress:
            progress.close()
    return FitResult(state.metrics, state.best, state.best_step, state.history, state.step, epoch,
                     time.perf_counter() - start, state.stop_reason)


def _optimizer_step(state: TrainState, scaler) -> None:
    cfg, opt = state.config, state.optimizer
    if scaler:
        scaler.unscale_(opt)
    if cfg.clip_grad:
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    if state.scheduler is not None:
        state.scheduler.step()
    state.step += 1


class _Progress:
    """A rich progress bar over optimizer steps, showing the loss and the last evaluation."""

    def __init__(self, config: TrainConfig, total: int | None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
        self.task = self.bar.add_task(config.description, total=total, info="")
        self.monitor = config.monitor
        self.bar.start()

    def advance(self, state: TrainState) -> None:
        info = f"loss {state.loss:.4f}" if state.loss is not None else ""
        if self.monitor in state.metrics:
            info += f"  val {self.monitor} {state.metrics[self.monitor]:.4f}"
        self.bar.update(self.task, completed=state.step, info=info)

    def close(self) -> None:
        self.bar.stop()
