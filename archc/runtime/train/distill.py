"""Knowledge distillation on archc's one training loop (`fit`, through its `on_loss` hook).

    from archc.runtime.train.distill import distill
    result = distill(student, teacher, data.train, data.val, TrainConfig(epochs=10),
                     temperature=4.0, soft_weight=0.9, hard_weight=0.1)

The loss is Hinton et al.'s (2015): `soft_weight · T² · KL(softmax(t/T) ‖ softmax(s/T))`
(the T² keeps the soft term's gradients on the scale of the hard one's as T changes)
plus `hard_weight · cross-entropy(s, labels)`; both weights are explicit. Feature
distillation adds `feature_weight · MSE(proj(student feature), teacher feature)` for
each `(student output index, teacher output index)` pair in `features`: the models
return those features as extra outputs (archc.compress exposes named nodes that way);
`proj` is a learned 1x1 convolution (images) or linear map (features) when the
widths differ, trained with the student, and the student's feature is resized to
the teacher's spatial size when they differ. The teacher runs in eval mode without
gradients. Imports torch only.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .loop import Callback, FitResult, TrainConfig, fit, primary_output, split_batch


def hinton_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None, *,
                temperature: float, soft_weight: float, hard_weight: float) -> torch.Tensor:
    """soft_weight · T² · KL(teacher ‖ student at temperature T) + hard_weight · CE(student, target)."""
    t = temperature
    s = student_logits.float().reshape(-1, student_logits.shape[-1])
    q = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
    soft = F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(q / t, -1), log_target=True,
                    reduction="batchmean") * (t * t)
    loss = soft_weight * soft
    if hard_weight and target is not None:
        loss = loss + hard_weight * F.cross_entropy(s, target.reshape(-1))
    return loss


def _outputs(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


class Projection(nn.Module):
    """Maps a student feature onto a teacher feature's shape: channels (1x1 conv or linear)
    and, for images, spatial size (adaptive average pooling)."""

    def __init__(self, student: torch.Size, teacher: torch.Size):
        super().__init__()
        self.size = tuple(teacher[2:]) if len(teacher) > 2 and tuple(student[2:]) != tuple(teacher[2:]) else None
        if len(student) in (4, 5) and len(student) == len(teacher) and student[1] != teacher[1]:
            conv = {4: nn.Conv2d, 5: nn.Conv3d}[len(student)]
            self.map = conv(student[1], teacher[1], 1, bias=False)
        elif student[-1] != teacher[-1]:
            self.map = nn.Linear(student[-1], teacher[-1], bias=False)
        else:
            self.map = nn.Identity()
        self.channels_first = isinstance(self.map, (nn.Conv2d, nn.Conv3d))

    def forward(self, x):
        if self.size is not None:
            x = F.adaptive_avg_pool2d(x, self.size) if x.dim() == 4 else F.adaptive_avg_pool3d(x, self.size)
        return self.map(x)


class Distillation(Callback):
    """The distillation term, added in `on_loss`: the loss `fit` computed (cross-entropy on
    the primary output) becomes the hard term."""

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, soft_weight: float = 0.9,
                 hard_weight: float = 0.1, features: Sequence[tuple[int, int]] = (),
                 projections: Sequence[nn.Module] = (), feature_weight: float = 1.0):
        if temperature <= 0:
            raise ValueError("the temperature must be positive")
        self.teacher = teacher
        self.t, self.soft, self.hard = temperature, soft_weight, hard_weight
        self.features = list(features)
        self.projections = list(projections)
        self.feature_weight = feature_weight

    def on_fit_start(self, state) -> None:
        self.teacher.to(state.device).eval()
        for p in self.projections:
            p.to(state.device).train()

    def on_loss(self, state, batch, outputs, loss):
        inputs, target = split_batch(_to(batch, state.device))
        with torch.no_grad():
            t_out = self.teacher(*inputs) if not (len(inputs) == 1 and isinstance(inputs[0], dict)) \
                else self.teacher(**inputs[0])
        s_logits = primary_output(state.model, outputs)
        t_logits = primary_output(self.teacher, t_out)
        total = self.hard * loss + hinton_loss(s_logits, t_logits, None, temperature=self.t, soft_weight=self.soft,
                                               hard_weight=0.0)
        s_all, t_all = _outputs(outputs), _outputs(t_out)
        for (si, ti), proj in zip(self.features, self.projections):
            total = total + self.feature_weight * F.mse_loss(proj(s_all[si]).float(), t_all[ti].float())
        return total


def make_projections(student: nn.Module, teacher: nn.Module, batch, features: Sequence[tuple[int, int]]) -> list[nn.Module]:
    """One Projection per feature pair, sized from one batch through both models."""
    inputs, _ = split_batch(batch)
    with torch.no_grad():
        was = student.training, teacher.training
        student.eval(), teacher.eval()
        s_out, t_out = _outputs(student(*inputs)), _outputs(teacher(*inputs))
        student.train(was[0]), teacher.train(was[1])
    return [Projection(s_out[si].shape, t_out[ti].shape) for si, ti in features]


def distill(student: nn.Module, teacher: nn.Module, train: Iterable, val: Iterable | None = None,
            config: TrainConfig | None = None, *, temperature: float = 4.0, soft_weight: float = 0.9,
            hard_weight: float = 0.1, features: Sequence[tuple[int, int]] = (), feature_weight: float = 1.0,
            callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train `student` against `teacher` with `fit` (same config, data, seeds as plain training)."""
    config = config or TrainConfig()
    projections: list[nn.Module] = []
    if features:
        if config.seed is not None:
            torch.manual_seed(config.seed)
        projections = make_projections(student, teacher, next(iter(train)), features)
    cb = Distillation(teacher, temperature=temperature, soft_weight=soft_weight, hard_weight=hard_weight,
                      features=features, projections=projections, feature_weight=feature_weight)
    params = [p for p in student.parameters() if p.requires_grad] + [p for m in projections for p in m.parameters()]
    result = fit(student, train, val, config, callbacks=[cb, *callbacks], params=params)
    result.projections = projections  # type: ignore[attr-defined]
    return result
