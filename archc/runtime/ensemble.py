"""Ensembles: the `ensemble` op's module, and training its members on the one loop (`fit`).

    from archc.runtime import ensemble
    report = ensemble.train_members(model, ["m1", "m2", "m3"], data, TrainConfig(epochs=20),
                                    method="bagging")        # "independent" | "bagging" | "boosting"
    ensemble.fit_meta(model, data.val, TrainConfig(epochs=200, lr=1e-2))   # mode="stack": the meta-learner
    ensemble.accuracies(model, ["m1", "m2", "m3"], data.test)              # each member's, and the ensemble's

A model combines its members (models used as blocks) with `ensemble(a, b, c, mode=...)`;
the members are the labelled modules that produce its inputs. Training:

- "independent": every member on the whole training set (one `fit` run: the members'
  losses add up; no weight is shared, so each member's gradient is its own loss's);
- "bagging": each member on its own bootstrap resample (N draws with replacement; an
  example drawn c times weighs c in that member's loss), so members see different data;
- "boosting": SAMME (multi-class AdaBoost, Zhu et al. 2009): members train one after the
  other on weighted examples; member m's weighted training error e gives it the weight
  α = shrinkage·(log((1 - e) / e) + log(C - 1)); misclassified examples are multiplied by
  exp(α) for the next member; the ensemble's `member_weights` become the α's (a weighted
  vote or mean). Deep members that fit the training set leave e ≈ 0: give them short
  budgets (weak learners) or a shrinkage below 1.
- stacking (`mode="stack"`): after the members, `fit_meta` trains only the meta-learner, on
  the members' predictions for held-out data (the validation split), members frozen.

Imports torch, never the compiler.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from .train.loop import TrainConfig, fit, seed_everything


class Ensemble(nn.Module):
    """The `ensemble` op: K members' class scores [..., C] -> [..., C] (log-probabilities), or the
    concatenated probabilities [..., K·C] (mode "stack", meta "none")."""

    def __init__(self, members: int, classes: int, mode: str = "mean", meta: str = "linear"):
        super().__init__()
        if mode not in ("mean", "vote", "stack") or meta not in ("linear", "none"):
            raise ValueError(f"ensemble: mode {mode!r}, meta {meta!r}")
        self.k, self.c, self.mode, self.meta = members, classes, mode, meta
        if mode == "stack" and meta == "linear":
            lin = nn.Linear(members * classes, classes)  # PyTorch's initialization
            self.weight = nn.Parameter(lin.weight.detach().clone())
            self.bias = nn.Parameter(lin.bias.detach().clone())
        self.register_buffer("member_weights", torch.ones(members))

    def forward(self, *scores):
        if len(scores) != self.k:
            raise ValueError(f"the ensemble has {self.k} members, got {len(scores)} outputs")
        dtype = scores[0].dtype
        probs = [F.softmax(s.float(), dim=-1) for s in scores]
        w = self.member_weights.float()
        if self.mode == "stack":
            feats = torch.cat(probs, dim=-1)
            if self.meta == "none":
                return feats.to(dtype)
            return F.linear(feats, self.weight.float(), self.bias.float()).to(dtype)
        total = w.sum().clamp_min(1e-12)
        mean = sum(wk * p for wk, p in zip(w, probs)) / total
        if self.mode == "mean":
            return mean.clamp_min(1e-12).log().to(dtype)
        votes = sum(wk * F.one_hot(p.argmax(-1), self.c).float() for wk, p in zip(w, probs)) / total
        return (votes + 1e-4 * mean).clamp_min(1e-12).log().to(dtype)

    def extra_repr(self) -> str:
        return f"members={self.k}, classes={self.c}, mode={self.mode!r}" + (
            f", meta={self.meta!r}" if self.mode == "stack" else "")


def find(model: nn.Module) -> Ensemble:
    found = [m for m in model.modules() if isinstance(m, Ensemble)]
    if len(found) != 1:
        raise ValueError(f"expected one `ensemble` in the model, found {len(found)}")
    return found[0]


class _Capture:
    """Keeps the inputs of the ensemble module (the members' outputs) during a forward pass."""

    def __init__(self, ens: Ensemble):
        self.scores: tuple = ()
        self.handle = ens.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.scores = args

    def close(self):
        self.handle.remove()


def _tensors(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """All (inputs, labels) of a loader of `(x, y)` batches, in its order."""
    ds = getattr(loader, "dataset", None)
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0], ds.tensors[1]
    xs, ys = [], []
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[-1])
    return torch.cat(xs), torch.cat(ys)


def _loader(*tensors, batch: int, shuffle: bool, seed: int = 0) -> DataLoader:
    ds = TensorDataset(*tensors)
    g = torch.Generator().manual_seed(seed) if shuffle else None
    order = RandomSampler(ds, generator=g) if shuffle else SequentialSampler(ds)
    return DataLoader(ds, batch_size=None, sampler=BatchSampler(order, batch, drop_last=False), generator=g)


class _Members(nn.Module):
    """`fit`'s model while members train: the whole model's forward, then the sum over members of
    each one's example-weighted cross-entropy (weights [K, N] indexed by the batch's example ids).
    Members not `active` stay in eval mode and add no loss."""

    def __init__(self, model: nn.Module, members: Sequence[str], weights: torch.Tensor, active: Sequence[int]):
        super().__init__()
        self.model, self.members, self.active = model, list(members), list(active)
        self.register_buffer("weights", weights)
        self.capture = _Capture(find(model))

    def train(self, mode: bool = True):
        super().train(mode)
        for k, path in enumerate(self.members):
            self.model.get_submodule(path).train(mode and k in self.active)
        return self

    def forward(self, x, idx, y):
        self.model(x)
        scores = self.capture.scores
        loss = 0.0
        for k in self.active:
            ce = F.cross_entropy(scores[k].float(), y, reduction="none")
            loss = loss + (self.weights[k, idx] * ce).sum() / x.shape[0]
        return loss


@torch.no_grad()
def member_predictions(model: nn.Module, loader, batch: int = 512) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                            torch.Tensor]:
    """Every member's class scores and the ensemble's output over a loader, in eval mode:
    ([K x [N, C]], ensemble [N, C], labels [N])."""
    ens = find(model)
    cap = _Capture(ens)
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: list[list[torch.Tensor]] = [[] for _ in range(ens.k)]
    outs, labels = [], []
    try:
        x_all, y_all = _tensors(loader)
        for i in range(0, len(x_all), batch):
            x = x_all[i:i + batch].to(device)
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            for k, s in enumerate(cap.scores):
                parts[k].append(s.float().cpu())
            outs.append(out.float().cpu())
            labels.append(y_all[i:i + batch])
    finally:
        cap.close()
        model.train(was)
    return [torch.cat(p) for p in parts], torch.cat(outs), torch.cat(labels)


def accuracies(model: nn.Module, members: Sequence[str], loader) -> dict[str, float]:
    """Accuracy of each member and of the ensemble's output over `loader`."""
    scores, out, y = member_predictions(model, loader)
    acc = {path: float((s.argmax(-1) == y).float().mean()) for path, s in zip(members, scores)}
    acc["ensemble"] = float((out.argmax(-1) == y).float().mean())
    return acc


@dataclass
class MembersReport:
    method: str
    fits: list = field(default_factory=list)  # FitResult per fit run
    member_weights: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # boosting: each member's weighted training error


def bootstrap_counts(n: int, members: int, seed: int) -> torch.Tensor:
    """[members, n]: how often each example is drawn in each member's bootstrap resample (n draws)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(members, n)
    for k in range(members):
        draws = torch.randint(0, n, (n,), generator=g)
        counts[k] = torch.bincount(draws, minlength=n).float()
    return counts


def train_members(model: nn.Module, members: Sequence[str], data, config: TrainConfig, *,
                  method: str = "independent", shrinkage: float = 1.0, seed: int = 0,
                  batch: int = 64) -> MembersReport:
    """Train the members of the model's ensemble (see the module docstring) with `fit`."""
    if method not in ("independent", "bagging", "boosting"):
        raise ValueError(f"unknown method `{method}`: independent, bagging or boosting")
    ens = find(model)
    if len(members) != ens.k:
        raise ValueError(f"the ensemble has {ens.k} members, {len(members)} paths were given")
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    model.to(device)
    x, y = _tensors(data.train)
    n = len(x)
    idx = torch.arange(n)
    report = MembersReport(method)
    members = list(members)

    def run(weights: torch.Tensor, active: list[int], description: str):
        net = _Members(model, members, weights, active)
        train = _loader(x, idx, y, y, batch=batch, shuffle=True, seed=seed)
        params = [p for k in active for p in model.get_submodule(members[k]).parameters() if p.requires_grad]
        try:
            r = fit(net, train, None, config.but(description=description), loss_fn=lambda out, t: out,
                    params=params)
        finally:
            net.capture.close()
        report.fits.append(r)

    if method in ("independent", "bagging"):
        weights = bootstrap_counts(n, ens.k, seed) if method == "bagging" else torch.ones(ens.k, n)
        run(weights, list(range(ens.k)), f"members ({method})")
        report.member_weights = [1.0] * ens.k
    else:
        w = torch.full((n,), 1.0 / n)
        alphas: list[float] = []
        for k in range(ens.k):
            weights = torch.zeros(ens.k, n)
            weights[k] = w * n  # mean 1
            run(weights, [k], f"member {k + 1}/{ens.k} (boosting)")
            scores, _, labels = member_predictions(model, _loader(x, y, batch=512, shuffle=False))
            miss = (scores[k].argmax(-1) != labels).float()
            err = float((w * miss).sum() / w.sum())
            report.errors.append(err)
            if err >= 1 - 1 / ens.c:  # no better than chance: SAMME gives it no say
                alphas.append(0.0)
                continue
            alpha = shrinkage * (math.log((1 - err) / max(err, 1e-10)) + math.log(ens.c - 1))
            alphas.append(alpha)
            w = w * torch.exp(alpha * miss)
            w = w / w.sum()
        report.member_weights = alphas
    with torch.no_grad():
        ens.member_weights.copy_(torch.tensor(report.member_weights, dtype=ens.member_weights.dtype))
        if float(ens.member_weights.sum()) <= 0:
            ens.member_weights.fill_(1.0)
    return report


def fit_meta(model: nn.Module, held_out, config: TrainConfig, *, batch: int = 256, seed: int = 0):
    """Stacking: train only the ensemble's meta-learner on the members' predictions for held-out
    data (members frozen, in eval mode). Returns the FitResult."""
    ens = find(model)
    if ens.mode != "stack" or ens.meta != "linear":
        raise ValueError("fit_meta needs an ensemble with mode=\"stack\" and a linear meta-learner")
    scores, _, y = member_predictions(model, held_out)
    device = ens.weight.device
    train = _loader(*scores, y, batch=batch, shuffle=True, seed=seed)
    seed_everything(seed)
    return fit(ens, train, None, config.but(description="meta-learner", device=str(device)),
               params=[ens.weight, ens.bias])
