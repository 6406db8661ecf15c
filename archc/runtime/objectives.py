"""Runtime of the objective and stochastic ops, the data pipeline's `augment` hooks, and
`archc train`'s runner on the one training loop (`archc.runtime.train.fit`).

- Modules the ops lower to: `NTXent`, `CLIPLoss`, `GANLoss`, `MaskedMSE`, `RandomMask`,
  `Restore`; reference functions `nt_xent`, `clip_loss`, `kl_normal`.
- `Feed`: a DataLoader of `(inputs, labels)` turned into the inputs a model declares,
  by name (docs/language.md, "Objectives and self-supervision"): `x` the images,
  `labels` the labels, `view1`, `view2`... random augmentations, `view` / `tiles` /
  `pretext` a pretext task's input and label (rotation, jigsaw), `noise` Gaussian
  noise, `tokens` captions of the labels.
- `train(...)`: optimises a model's `loss` output (or cross-entropy of its logits)
  with `fit`, the EMA hook, resumable checkpoints and evaluation of every scalar
  output; `linear_probe(...)` measures features.

Imports torch, never the compiler.
"""
from __future__ import annotations

import itertools
import math
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import ema as ema_mod
from .train.loop import Callback, FitResult, TrainConfig, TrainState, evaluate, fit, make_optimizer

# -- reference computations and the modules the ops lower to -------------------------------


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent: 2B normalized embeddings; each anchor's positive is its other view,
    its negatives the other 2B - 2; cross-entropy of similarity / temperature, mean over anchors."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor | float,
              max_scale: float = 100.0) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the B x B scaled cosine similarities."""
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    s = torch.as_tensor(logit_scale, dtype=torch.float32, device=img.device).exp().clamp(max=max_scale)
    logits = s * img @ txt.t()
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-example KL(N(mu, exp(logvar)) ‖ N(0, I)), summed over the non-batch axes: [B]."""
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    return kl.reshape(kl.shape[0], -1).sum(1)


class NTXent(nn.Module):
    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.temperature = temperature

    def forward(self, z1, z2):
        return nt_xent(z1, z2, self.temperature)


class CLIPLoss(nn.Module):
    """`clip_loss`: a learned log-scale `logit_scale` (or a fixed one with learn=False)."""

    def __init__(self, logit_scale: float = math.log(1 / 0.07), learn: bool = True, max_scale: float = 100.0):
        super().__init__()
        self.max_scale = max_scale
        if learn:
            self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        else:
            self.fixed = float(logit_scale)

    def forward(self, img, txt):
        s = self.logit_scale if hasattr(self, "logit_scale") else self.fixed
        return clip_loss(img, txt, s, self.max_scale)


class GANLoss(nn.Module):
    def __init__(self, kind: str = "vanilla", target: str = "real"):
        super().__init__()
        if kind not in ("vanilla", "lsgan", "hinge") or target not in ("real", "fake", "generator"):
            raise ValueError(f"gan_loss: kind {kind!r}, target {target!r}")
        self.kind, self.target = kind, target

    def forward(self, d):
        d = d.float()
        real = self.target in ("real", "generator")
        if self.kind == "vanilla":
            return F.binary_cross_entropy_with_logits(d, torch.full_like(d, 1.0 if real else 0.0))
        if self.kind == "lsgan":
            return F.mse_loss(d, torch.full_like(d, 1.0 if real else 0.0))
        if self.target == "generator":
            return -d.mean()
        return F.relu(1 - d).mean() if real else F.relu(1 + d).mean()


class MaskedMSE(nn.Module):
    """`mse(pred, target, mask=m)`: squared error over the positions where m is 1 (the mask
    covers the leading axes; `extra` trailing axes are averaged within each position)."""

    def __init__(self, extra: int, reduction: str = "mean"):
        super().__init__()
        self.extra, self.reduction = extra, reduction

    def forward(self, pred, target, mask):
        err = (pred.float() - target.float()) ** 2
        per = err.reshape(*mask.shape, -1)
        width = per.shape[-1]
        m = mask.float()
        total = (per.sum(-1) * m).sum()
        if self.reduction == "mean":
            return total / (m.sum() * width).clamp_min(1)
        if self.reduction == "batchmean":
            return total / pred.shape[0]
        return total


class RandomMask(nn.Module):
    """MAE's per-sample random masking: (kept tokens, mask 1=removed, restore indices)."""

    def __init__(self, ratio: float = 0.75):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        b, n, d = x.shape
        k = int(n * (1 - self.ratio))
        noise = torch.rand(b, n, device=x.device)
        shuffle = noise.argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        kept = x.gather(1, shuffle[:, :k].unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :k] = 0
        mask = mask.gather(1, restore)
        return kept, mask, restore


class Restore(nn.Module):
    """Tokens [B, K, D] padded with a mask token to N and unshuffled with restore indices."""

    def __init__(self, dim: int, token: bool = True):
        super().__init__()
        if token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
            nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, x, restore):
        b, k, d = x.shape
        n = restore.shape[1]
        if hasattr(self, "mask_token"):
            fill = self.mask_token.to(x.dtype).expand(b, n - k, d)
        else:
            fill = x.new_zeros(b, n - k, d)
        full = torch.cat([x, fill], dim=1)
        return full.gather(1, restore.unsqueeze(-1).expand(-1, -1, d))


# -- the inputs the data pipeline supplies --------------------------------------------------

IMAGE_INPUTS = ("x", "image", "images", "inputs")
LABEL_INPUTS = ("labels", "label", "y", "targets")
NOISE_INPUTS = ("noise", "z")
TEXT_INPUTS = ("tokens", "text", "captions")


def input_role(name: str) -> str | None:
    """image, label, view, pretext, tiles, noise or text (archc.compiler.ops.stochastic.input_role)."""
    if name in IMAGE_INPUTS:
        return "image"
    if name in LABEL_INPUTS:
        return "label"
    if name.startswith("view") and (name == "view" or name[4:].isdigit()):
        return "view"
    if name in ("pretext", "tiles"):
        return name
    if name in NOISE_INPUTS:
        return "noise"
    if name in TEXT_INPUTS:
        return "text"
    return None


@dataclass(frozen=True)
class InputSpec:
    """A model input: its name, shape (None for a symbolic axis) and dtype."""

    name: str
    shape: tuple
    dtype: str = "float32"


@dataclass(frozen=True)
class Augment:
    """How views are made (`augment(...)` in a train plan). Each view draws its own random
    affine map (rotation ±`rotate` degrees, scale in `scale`, translation ±`shift` pixels),
    intensity jitter (contrast and brightness ±`jitter`), a cut-out square of side `erase`
    pixels with probability `erase_p`, and Gaussian noise of std `noise`. `pretext`:
    "rotate" (view = the input turned by k·90°, pretext = k) or "jigsaw" (tiles of a
    `grid` x `grid` cut, shuffled by one of the (grid²)! permutations, pretext = its index)."""

    # the fields of archc.compiler.plans.Augment, repeated: runtime never imports the compiler
    # (tests/specs/test_ssl_specs.py keeps the two the same)
    pretext: str = "none"
    rotate: float = 15.0
    scale: tuple[float, float] = (0.8, 1.1)
    shift: float = 1.0
    jitter: float = 0.3
    erase: int = 3
    erase_p: float = 0.5
    noise: float = 0.05
    grid: int = 2


def random_views(x: torch.Tensor, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random augmentation per example of images [B, C, H, W] (values about 0..1)."""
    b, c, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device="cpu").to(dev)

    angle = (rand(b) * 2 - 1) * math.radians(aug.rotate)
    scale = aug.scale[0] + rand(b) * (aug.scale[1] - aug.scale[0])
    tx, ty = [(rand(b) * 2 - 1) * aug.shift * 2 / s for s in (w, h)]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (b, c, h, w), align_corners=False)
    out = F.grid_sample(x.float(), grid, align_corners=False, padding_mode="zeros")
    if aug.jitter:
        contrast = 1 + (rand(b, 1, 1, 1) * 2 - 1) * aug.jitter
        bright = (rand(b, 1, 1, 1) * 2 - 1) * aug.jitter * 0.5
        out = out * contrast + bright
    if aug.erase and aug.erase_p:
        e = min(aug.erase, h, w)
        top = (rand(b) * (h - e + 1)).long().clamp(max=h - e)
        left = (rand(b) * (w - e + 1)).long().clamp(max=w - e)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        box = ((rows >= top.view(b, 1, 1)) & (rows < (top + e).view(b, 1, 1)) &
               (cols >= left.view(b, 1, 1)) & (cols < (left + e).view(b, 1, 1)))
        hit = (rand(b) < aug.erase_p).view(b, 1, 1)
        out = out.masked_fill((box & hit).unsqueeze(1), 0.0)
    if aug.noise:
        out = out + aug.noise * torch.randn(out.shape, generator=generator).to(dev)
    return out.to(x.dtype)


def rotations(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RotNet's pretext: each image turned by k·90° (k uniform in 0..3): (images, k)."""
    k = torch.randint(0, 4, (x.shape[0],), generator=generator)
    turned = torch.stack([torch.rot90(x, r, dims=(-2, -1)) for r in range(4)])  # [4, B, C, H, W]
    return turned[k, torch.arange(x.shape[0])], k


def permutations(grid: int) -> list[tuple[int, ...]]:
    """Jigsaw's classes: every order of grid² tiles, lexicographically (24 for a 2 x 2 grid)."""
    if grid * grid > 6:
        raise ValueError(f"a {grid} x {grid} jigsaw has {math.factorial(grid * grid):,} permutations: use grid 2")
    return list(itertools.permutations(range(grid * grid)))


def jigsaw(x: torch.Tensor, grid: int, generator: torch.Generator | None = None):
    """The image cut into grid x grid tiles, shuffled by a random permutation of `permutations(grid)`:
    (tiles [B, grid², C, h, w] in the shuffled order, the reassembled shuffled image, the permutation's index)."""
    b, c, h, w = x.shape
    if h % grid or w % grid:
        raise ValueError(f"a {grid} x {grid} jigsaw needs sizes divisible by {grid}, got {h} x {w}")
    th, tw = h // grid, w // grid
    tiles = tiles_in_order(x, grid)
    perms = torch.tensor(permutations(grid))
    idx = torch.randint(0, len(perms), (b,), generator=generator)
    order = perms[idx]  # tile j of the output is tile order[j] of the image
    shuffled = tiles[torch.arange(b).unsqueeze(1), order]
    image = shuffled.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
    return shuffled, image, idx


def tiles_in_order(x: torch.Tensor, grid: int) -> torch.Tensor:
    """The image's grid x grid tiles in reading order: [B, grid², C, h, w]."""
    b, c, h, w = x.shape
    th, tw = h // grid, w // grid
    return x.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)


WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a photo of the digit {}", "the number {}", "a handwritten {}", "{}", "a digit {}",
             "an image of a {}"]
VOCAB = ["<pad>"] + sorted({w for t in TEMPLATES for w in t.replace("{}", "").split()} | set(WORDS))


def caption_ids(labels: torch.Tensor, length: int, generator: torch.Generator | None = None,
                template: int | None = None) -> torch.Tensor:
    """Token ids [B, length] of a caption of each label ("a photo of the digit seven"): a random
    template (or `template`), words indexed in VOCAB (0 pads). Labels beyond 9 are spelt digit by digit."""
    index = {w: i for i, w in enumerate(VOCAB)}
    out = torch.zeros(len(labels), length, dtype=torch.int64)
    picks = torch.randint(0, len(TEMPLATES), (len(labels),), generator=generator) if template is None \
        else torch.full((len(labels),), template)
    for i, (y, t) in enumerate(zip(labels.tolist(), picks.tolist())):
        word = " ".join(WORDS[int(d)] for d in str(int(y)))
        ids = [index[w] for w in TEMPLATES[t].format(word).split()][:length]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


class Feed:
    """Batches of a DataLoader of `(inputs, labels)` as the dict of inputs a model declares
    (plus "target": the labels, for `fit`). Random parts (views, pretext transforms, noise,
    caption templates) draw from torch's global generator, which `fit` seeds; `eval=True`
    draws them from a generator seeded afresh on every pass, so evaluations compare."""

    def __init__(self, loader, inputs: Sequence[InputSpec], augment: Augment | None = None, *,
                 eval: bool = False, seed: int = 1234):
        self.loader, self.inputs, self.aug = loader, list(inputs), augment or Augment()
        self.eval, self.seed = eval, seed
        for spec in self.inputs:
            if input_role(spec.name) is None:
                raise ValueError(f"the data cannot supply input `{spec.name}`")
        self.generator = getattr(loader, "generator", None)  # `fit` reseeds the training order through it

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed) if self.eval else None
        for batch in self.loader:
            x, y = (batch[0], batch[-1]) if isinstance(batch, (tuple, list)) else (batch, None)
            yield self.make(x, y, gen)

    def make(self, x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator | None = None) -> dict:
        out: dict[str, Any] = {}
        b = x.shape[0]
        roles = {s.name: input_role(s.name) for s in self.inputs}
        pretext = None
        if "pretext" in roles.values() or "tiles" in roles.values() or (
                "view" in roles and self.aug.pretext != "none"):
            if self.aug.pretext == "rotate":
                view, label = rotations(x, gen)
                pretext = {"view": view, "pretext": label}
            elif self.aug.pretext == "jigsaw":
                tiles, image, label = jigsaw(x, self.aug.grid, gen)
                pretext = {"view": image, "pretext": label, "tiles": tiles}
            else:
                raise ValueError("inputs `pretext` and `tiles` need a pretext task: augment(pretext=...)")
        for spec in self.inputs:
            role = roles[spec.name]
            if role == "image":
                out[spec.name] = x
            elif role == "label":
                if y is None:
                    raise ValueError(f"input `{spec.name}` needs labels, and the data has none")
                out[spec.name] = y
            elif role in ("pretext", "tiles") or (role == "view" and spec.name == "view" and pretext is not None):
                out[spec.name] = pretext[spec.name]
            elif role == "view":
                out[spec.name] = random_views(x, self.aug, gen)
            elif role == "noise":
                rest = [d if d is not None else 1 for d in spec.shape[1:]]
                out[spec.name] = torch.randn(b, *rest, generator=gen)
            elif role == "text":
                if y is None:
                    raise ValueError(f"input `{spec.name}` is a caption of the labels, and the data has none")
                length = spec.shape[1] if len(spec.shape) > 1 and spec.shape[1] is not None else 8
                out[spec.name] = caption_ids(y, length, gen, template=0 if self.eval else None)
        if y is not None:
            out["target"] = y
        return out


# -- a model whose outputs include its loss ------------------------------------------------------

def output_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "output_names", None) or ())


def as_dict(model: nn.Module, outputs) -> dict[str, torch.Tensor]:
    names = output_names(model)
    outs = outputs if isinstance(outputs, tuple) else (outputs,)
    if len(names) != len(outs):
        return {f"output{i}": o for i, o in enumerate(outs)}
    return dict(zip(names, outs))


class LossModel(nn.Module):
    """Wraps a model with a `loss` output so that `fit` back-propagates it: the forward returns
    the loss (and keeps every output in `last`)."""

    def __init__(self, model: nn.Module, loss: str = "loss"):
        super().__init__()
        self.model, self.loss = model, loss
        if loss not in output_names(model):
            raise ValueError(f"the model has no output `{loss}` (outputs: {', '.join(output_names(model))})")
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, **inputs):
        self.last = as_dict(self.model, self.model(**inputs))
        return self.last[self.loss]


def _identity_loss(out, target):
    return out


LABEL_SOURCES = ("labels", "label", "y", "targets", "pretext")


@torch.no_grad()
def evaluate_outputs(model: nn.Module, feed: Iterable, device=None, precision: str = "fp32") -> dict[str, float]:
    """The mean of every scalar output (loss, elbo...) over `feed`, weighted by batch size, and the
    accuracy of a `logits` output against the labels it is trained on (`labels`... or `pretext`)."""
    if isinstance(model, LossModel):
        model = model.model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = correct = labelled = 0
    try:
        for batch in feed:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "target"}
            if dtype is not None:
                inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
            outs = as_dict(model, model(**inputs))
            n = next(iter(inputs.values())).shape[0]
            for k, v in outs.items():
                if v.dim() == 0:
                    sums[k] = sums.get(k, 0.0) + float(v) * n
            logits = outs.get("logits")
            label = next((inputs[k] for k in LABEL_SOURCES if k in inputs), None)
            if label is None and "target" in batch and "labels" not in inputs:
                label = batch["target"].to(device)
            if logits is not None and label is not None and logits.dim() == label.dim() + 1:
                correct += int((logits.argmax(-1) == label).sum())
                labelled += label.numel()
            count += n
    finally:
        model.train(was)
    out = {k: v / max(count, 1) for k, v in sums.items()}
    if labelled:
        out["accuracy"] = correct / labelled
    out["count"] = count
    return out


# -- resumable checkpoints --------------------------------------------------------------------------

def save_atomic(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _rng_state(generator) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(generator, torch.Generator):
        state["loader"] = generator.get_state()
    return state


def _set_rng_state(state: dict, generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "loader" in state and isinstance(generator, torch.Generator):
        generator.set_state(state["loader"])


class Checkpointer(Callback):
    """Writes a resumable checkpoint after every epoch: the model's weights, the optimizer's
    state, the loop's counters and history, early stopping's state and every random generator
    (so a resumed run draws the same batches and augmentations as an uninterrupted one).

    With per-epoch evaluation (`after_eval`), the checkpoint is written after the epoch's
    evaluation, so it holds that evaluation too. Resuming is exact at epoch boundaries; a run
    cut inside an epoch by a `steps` limit resumes at the next epoch."""

    def __init__(self, path: str | os.PathLike, model: nn.Module, generator=None, resume: dict | None = None,
                 after_eval: bool = True):
        self.path, self.model, self.generator, self.resume = Path(path), model, generator, resume
        self.after_eval = after_eval
        self.epoch_done: int | None = None

    def on_fit_start(self, state: TrainState) -> None:
        r = self.resume
        if not r:
            return
        state.step, state.epoch, state.micro_step = r["step"], r["epoch"], r.get("micro_step", 0)
        state.history = list(r["history"])
        state.metrics = dict(state.history[-1]) if state.history else {}
        state.best, state.best_step, state.evals_since_best = r["best"], r["best_step"], r["evals_since_best"]
        state.best_state = r.get("best_state")
        if r.get("stopped"):
            state.stop, state.stop_reason = True, r["stopped"]
        if r.get("scheduler") is not None and state.scheduler is not None:
            state.scheduler.load_state_dict(r["scheduler"])
        _set_rng_state(r["rng"], self.generator)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.after_eval and not state.config.eval_every:
            self.epoch_done = state.epoch + 1  # written once the epoch's evaluation is in
        else:
            self.save(state, state.epoch + 1)

    def on_evaluate(self, state: TrainState, metrics) -> None:
        if self.epoch_done is not None:
            self.save(state, self.epoch_done)
            self.epoch_done = None

    def on_fit_end(self, state: TrainState) -> None:
        if self.epoch_done is not None:
            self.save(state, self.epoch_done)

    def save(self, state: TrainState, next_epoch: int) -> None:
        save_atomic({"model": self.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                     "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
                     "step": state.step, "epoch": next_epoch, "micro_step": state.micro_step,
                     "history": state.history, "best": state.best, "best_step": state.best_step,
                     "evals_since_best": state.evals_since_best, "best_state": state.best_state,
                     "stopped": state.stop_reason, "rng": _rng_state(self.generator)}, self.path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# -- the runner -----------------------------------------------------------------------------------------

@dataclass
class RunResult:
    fit: FitResult
    test: dict[str, float]  # the final model on the test split (when the data has one)
    resumed_from: int | None = None  # the epoch a resumed run continued from
    ema: list = field(default_factory=list)
    members: dict | None = None  # an ensemble's per-member test accuracy and weights


def train(model: nn.Module, data, inputs: Sequence[InputSpec], config: TrainConfig, *,
          augment: Augment | None = None, checkpoint: str | os.PathLike | None = None, resume: bool = False,
          callbacks: Sequence[Callback] = ()) -> RunResult:
    """Optimise `model` on `data` (archc.runtime.data.Data) with `fit`.

    The model's `loss` output is back-propagated as it is; a model without one is a classifier
    trained with cross-entropy on its logits against the data's labels. EMA targets are copied
    and frozen first and updated after every step. With `checkpoint`, a resumable checkpoint is
    written after every epoch; `resume=True` continues from it (weights, optimizer, counters,
    random generators), so an interrupted run ends as an uninterrupted one would."""
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    model.to(device)
    pairs = ema_mod.init(model)
    has_loss = "loss" in output_names(model)
    net = LossModel(model) if has_loss else model
    train_feed = Feed(data.train, inputs, augment)
    val_feed = Feed(data.val, inputs, augment, eval=True) if data.val is not None else None
    test_feed = Feed(data.test, inputs, augment, eval=True) if data.test is not None else None
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    state = None
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    cbs = list(callbacks)
    if pairs:
        cbs.insert(0, ema_mod.EMACallback(model))
    if checkpoint is not None:
        cbs.append(Checkpointer(checkpoint, model, train_feed.generator, resume=state,
                                after_eval=val_feed is not None))
    if has_loss:
        def evaluate_fn(m, feed):
            return evaluate_outputs(model, feed, device, config.precision)
        result = fit(net, train_feed, val_feed, config, callbacks=cbs, loss_fn=_identity_loss,
                     optimizer=optimizer, evaluate_fn=evaluate_fn)
        test = evaluate_outputs(model, test_feed, device, config.precision) if test_feed is not None else {}
    else:
        result = fit(net, train_feed, val_feed, config, callbacks=cbs, optimizer=optimizer)
        test = evaluate(model, test_feed, device=device, precision=config.precision) if test_feed is not None \
            else {}
    return RunResult(result, test, state["epoch"] if state else None, pairs)


# -- measuring features ---------------------------------------------------------------------------------

@torch.no_grad()
def features(model: nn.Module, loader, inputs: Sequence[InputSpec], output: str = "features",
             augment: Augment | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's `output` for every example of `loader`, fed the clean images in every image and
    view input (and noise or captions as the protocol makes them): (features [N, F], labels [N])."""
    model.eval()
    device = next(model.parameters()).device
    feats, labels = [], []
    gen = torch.Generator().manual_seed(0)
    aug = augment or Augment()
    feed = Feed(loader, inputs, aug, eval=True)
    for batch in loader:
        x, y = batch[0], batch[-1]
        made = feed.make(x, y, gen)
        made.pop("target", None)
        for spec in inputs:  # the clean image everywhere: no view, rotation or shuffle
            role = input_role(spec.name)
            if role == "view":
                made[spec.name] = x
            elif role == "tiles":
                made[spec.name] = tiles_in_order(x, round(spec.shape[1] ** 0.5) if spec.shape[1] else aug.grid)
        outs = as_dict(model, model(**{k: v.to(device) for k, v in made.items()}))
        feats.append(outs[output].float().reshape(x.shape[0], -1).cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 c: float = 1.0) -> float:
    """Test accuracy of a logistic regression (scikit-learn, L2, standardized features) fit on `train`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train[0].numpy())
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(scaler.transform(train[0].numpy()), train[1].numpy())
    return float(clf.score(scaler.transform(test[0].numpy()), test[1].numpy()))


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, data, inputs: Sequence[InputSpec], split: str = "test") -> float:
    """CLIP's zero-shot classification: each image of `split` is assigned the class whose caption
    ("a photo of the digit seven", template 0) has the most similar embedding. The model has
    outputs `image_embeds` and `text_embeds`, an image input and a text input."""
    loader = getattr(data, split)
    image = next(s for s in inputs if input_role(s.name) in ("image", "view"))
    text = next(s for s in inputs if input_role(s.name) == "text")
    length = text.shape[1] if len(text.shape) > 1 and text.shape[1] is not None else 8
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        xs, ys = [], []
        for batch in loader:
            xs.append(batch[0])
            ys.append(batch[-1])
        x, y = torch.cat(xs), torch.cat(ys)
        classes = getattr(data, "classes", None) or int(y.max()) + 1
        captions = caption_ids(torch.arange(classes), length, template=0).to(device)
        reps = x[torch.arange(classes) % len(x)].to(device)  # the batch axis is shared: any images will do
        out = as_dict(model, model(**{image.name: reps, text.name: captions}))
        t = F.normalize(out["text_embeds"].float(), dim=-1)
        correct = 0
        for i in range(0, len(x), 256):
            xb = x[i:i + 256].to(device)
            dummy = caption_ids(torch.zeros(len(xb), dtype=torch.int64), length, template=0).to(device)
            img = F.normalize(as_dict(model, model(**{image.name: xb, text.name: dummy}))["image_embeds"].float(),
                              dim=-1)
            correct += int(((img @ t.t()).argmax(-1).cpu() == y[i:i + 256]).sum())
        return correct / len(x)
    finally:
        model.train(was)
