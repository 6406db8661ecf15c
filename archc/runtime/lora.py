"""LoRA adapters at run time: layers that keep their base weights where they were and
add low-rank updates beside them (as PEFT does, with PEFT's parameter names).

`LoRALinear` (also for transformers' GPT-2 `Conv1D` layout: `fan_in_fan_out=True`, the
weight stored [in, out]), `LoRAEmbedding` and `LoRAConv` hold the base layer's own
parameters at their own names (`weight`, `bias`), so a model's state_dict keeps the base
keys (`h.0.attn.c_attn.weight`); each adapter adds

    lora_A.<name>.weight  [r, in]         lora_B.<name>.weight  [out, r]     (linear, conv)
    lora_embedding_A.<name> [r, num]      lora_embedding_B.<name> [dim, r]   (embedding)
    lora_magnitude_vector.<name>.weight [out]                                 (DoRA)

y = base(x) + B(A(dropout(x))) * scaling, with scaling = alpha / r (alpha / sqrt(r) with
rsLoRA). Several adapters may sit on one layer; `set_adapter` chooses which run (the
first added is active, as in PEFT); `merge()` folds the active ones into the base weight
and `unmerge()` takes them out again. A freshly initialised adapter (B = 0, or A = 0 for
embeddings) changes nothing, exactly.

Generated code creates the base layer, then `adapt(base, name, ...)` turns it into its
LoRA layer (adopting the base's parameter objects, so weight tying survives) or adds one
more adapter to it. Imports torch only.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _transpose(w: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return w.T if fan_in_fan_out else w


class _Magnitude(nn.Module):
    """DoRA's magnitude vector (`lora_magnitude_vector.<name>.weight`, one per output)."""

    def __init__(self, norm: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(norm.detach().clone())


class LoRALayer(nn.Module):
    """What the LoRA layers share: adapters by name, which are active, which are merged."""

    adapter_dicts = ("lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector")

    def _init_lora(self) -> None:
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.use_dora: dict[str, bool] = {}
        self.init_lora_weights: dict[str, object] = {}
        self.dropout_p: dict[str, float] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self._dora_norms: dict[str, torch.Tensor] = {}
        # The base weight is another module's too (weight tying): merging would change
        # that other use, so it is refused (the weight is never silently untied).
        self.tied = False

    # -- adapters ------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self.r)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def add_adapter(self, name: str, r: int, alpha: float = 8, dropout: float = 0.0, init=True,
                    rslora: bool = False, dora: bool = False, active: bool | None = None) -> "LoRALayer":
        """Add adapter `name` (rank `r`); it runs if `active` (default: if it is the first)."""
        if name in self.r:
            raise ValueError(f"this layer already has an adapter named {name!r}")
        if not name.isidentifier():
            raise ValueError(f"adapter names must be identifiers, got {name!r}")
        if r <= 0:
            raise ValueError(f"the rank must be positive, got {r}")
        if dora and not self.supports_dora:
            raise ValueError(f"{type(self).__name__} does not support DoRA")
        self.r[name] = r
        self.lora_alpha[name] = alpha
        self.scaling[name] = alpha / math.sqrt(r) if rslora else alpha / r
        self.use_rslora[name] = rslora
        self.use_dora[name] = dora
        self.init_lora_weights[name] = init
        self.dropout_p[name] = dropout
        self._make(name, r, dropout)
        self.reset_adapter(name)
        if active if active is not None else not self.active_adapters:
            self.active_adapters.append(name)
        self._sync_requires_grad()
        return self

    def reset_adapter(self, name: str) -> None:
        """(Re)initialise an adapter as PEFT does; DoRA's magnitude from the current base weight."""
        self._reset(name, self.init_lora_weights[name])
        if self.use_dora[name]:
            with torch.no_grad():
                norm = self._weight_norm(self.weight, self._lora_weight(name).detach(), self.scaling[name])
            self.lora_magnitude_vector[name] = _Magnitude(norm)

    def set_adapter(self, names: str | Iterable[str]) -> None:
        """Which adapters run (and train): the others stay, frozen."""
        names = [names] if isinstance(names, str) else list(names)
        if self.merged:
            raise RuntimeError("unmerge the adapters before switching them")
        self.active_adapters = [n for n in names if n in self.r]
        self._sync_requires_grad()

    def _sync_requires_grad(self) -> None:
        for name in self.r:
            for p in self._adapter_params(name):
                p.requires_grad_(name in self.active_adapters)

    def _adapter_params(self, name: str) -> list[nn.Parameter]:
        out = []
        for d in ("lora_A", "lora_B", "lora_magnitude_vector"):
            mods = getattr(self, d)
            if name in mods:
                out += list(mods[name].parameters())
        return out

    # -- merging -------------------------------------------------------------------------
    def merge(self, names: Iterable[str] | None = None) -> None:
        """Fold adapters (default: the active ones) into the base weight."""
        if self.tied:
            raise RuntimeError("this layer's weight is tied to another module's: merging an adapter into it "
                               "would change that other use too, so it is refused")
        for name in list(self.active_adapters if names is None else names):
            if name not in self.r:
                raise KeyError(f"no adapter named {name!r} (adapters: {', '.join(self.r) or 'none'})")
            if name in self.merged_adapters:
                continue
            with torch.no_grad():
                delta = self.delta_weight(name)
                w = self.weight
                if self.use_dora[name]:
                    norm = self._weight_norm(w, _transpose(delta, self.fan_in_fan_out), 1.0)
                    self._dora_norms[name] = norm
                    factor = (self.lora_magnitude_vector[name].weight / norm).view(-1, *[1] * (w.dim() - 1))
                    w.data = (_transpose(factor, self.fan_in_fan_out) * (w + delta)).to(w.dtype)
                else:
                    w.data += delta.to(w.dtype)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Take every merged adapter out of the base weight again (last merged first)."""
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with torch.no_grad():
                delta = self.delta_weight(name)
                w = self.weight
                if self.use_dora[name]:
                    norm = self._dora_norms.pop(name)
                    factor = (self.lora_magnitude_vector[name].weight / norm).view(-1, *[1] * (w.dim() - 1))
                    w.data = (w / _transpose(factor, self.fan_in_fan_out) - delta).to(w.dtype)
                else:
                    w.data -= delta.to(w.dtype)

    # -- to be provided by each layer -----------------------------------------------------
    fan_in_fan_out = False
    supports_dora = False

    def delta_weight(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def _lora_weight(self, name: str) -> torch.Tensor:
        """B @ A as an [out, in...] matrix (unscaled)."""
        raise NotImplementedError

    def _weight_norm(self, weight, lora_weight, scaling) -> torch.Tensor:
        w = _transpose(weight, self.fan_in_fan_out)
        w = w + scaling * lora_weight.reshape(w.shape)
        return torch.linalg.norm(w.reshape(w.shape[0], -1), dim=1).to(w.dtype)

    def extra_repr(self) -> str:
        ads = ", ".join(f"{n}(r={self.r[n]}, alpha={self.lora_alpha[n]:g}"
                        + (", dora" if self.use_dora[n] else "") + ")" for n in self.r)
        state = f", active={self.active_adapters}" + (f", merged={self.merged_adapters}" if self.merged else "")
        return f"{self._base_repr()}, adapters=[{ads}]{state}"

    def _base_repr(self) -> str:
        return ""


def _kaiming(w: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))


def _reset_ab(A: nn.Module, B: nn.Module, r: int, init) -> None:
    if init is False:
        return  # the layers' own initialisation: the adapter changes the output from the start
    if init is True or init == "default":
        _kaiming(A.weight)
    elif init == "gaussian":
        nn.init.normal_(A.weight, std=1 / r)
    else:
        raise ValueError(f"unknown LoRA initialisation {init!r} (true, false or 'gaussian')")
    nn.init.zeros_(B.weight)


class LoRALinear(LoRALayer):
    """A linear layer with LoRA adapters. `fan_in_fan_out=True` stores the weight [in, out]
    (GPT-2's Conv1D, archc's `linear(..., transposed=true)`); the adapters are the same."""

    supports_dora = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fan_in_fan_out: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.fan_in_fan_out = in_features, out_features, fan_in_fan_out
        if fan_in_fan_out:
            self.weight = nn.Parameter(torch.empty(in_features, out_features))
            nn.init.normal_(self.weight, std=0.02)
        else:
            self.weight = nn.Parameter(torch.empty(out_features, in_features))
            _kaiming(self.weight)
        if bias:
            bound = 1 / math.sqrt(in_features) if in_features > 0 and not fan_in_fan_out else 0.0
            self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self._init_lora()

    @classmethod
    def wrap(cls, base: nn.Module, fan_in_fan_out: bool) -> "LoRALinear":
        self = cls.__new__(cls)
        LoRALayer.__init__(self)
        self.in_features, self.out_features, self.fan_in_fan_out = base.in_features, base.out_features, fan_in_fan_out
        self.weight = base.weight
        if base.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = base.bias
        self._init_lora()
        return self

    def _make(self, name, r, dropout):
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False)

    def _reset(self, name, init):
        _reset_ab(self.lora_A[name], self.lora_B[name], self.r[name], init)

    def _lora_weight(self, name):
        return self.lora_B[name].weight @ self.lora_A[name].weight

    def delta_weight(self, name):
        return _transpose(self._lora_weight(name), self.fan_in_fan_out) * self.scaling[name]

    def _base(self, x):
        if self.fan_in_fan_out:
            shape = x.shape[:-1] + (self.out_features,)
            x2 = x.reshape(-1, self.in_features)
            y = x2 @ self.weight if self.bias is None else torch.addmm(self.bias, x2, self.weight)
            return y.view(shape)
        return F.linear(x, self.weight, self.bias)

    def forward(self, x):
        result = self._base(x)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            A, B, drop, s = self.lora_A[name], self.lora_B[name], self.lora_dropout[name], self.scaling[name]
            if not self.use_dora[name]:
                result = result + B(A(drop(x))) * s
            else:
                result = result + self._dora(name, x, result)
        return result

    def _dora(self, name, x, result):
        A, B, drop, s = self.lora_A[name], self.lora_B[name], self.lora_dropout[name], self.scaling[name]
        if isinstance(drop, nn.Identity) or not self.training:
            base_result = result
        else:
            x = drop(x)
            base_result = None
        lora_weight = self._lora_weight(name).to(x.dtype)
        weight = self.weight.to(x.dtype)
        norm = self._weight_norm(weight, lora_weight.detach(), s).detach()
        scale = (self.lora_magnitude_vector[name].weight / norm).view(1, -1)
        lora_result = B(A(x))
        if base_result is not None:
            if self.bias is not None:
                base_result = base_result - self.bias
        else:
            base_result = F.linear(x, _transpose(weight, self.fan_in_fan_out))
        return (scale - 1) * base_result + scale * lora_result * s

    def _base_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + (", fan_in_fan_out=True" if self.fan_in_fan_out else ""))


class LoRAEmbedding(LoRALayer):
    """An embedding table with LoRA adapters: lookups in A [r, num] (as a table), times B
    [dim, r]. PEFT initialises A to zeros and B from a normal distribution."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim))
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx].zero_()
        self._init_lora()

    @classmethod
    def wrap(cls, base: nn.Embedding) -> "LoRAEmbedding":
        self = cls.__new__(cls)
        LoRALayer.__init__(self)
        self.num_embeddings, self.embedding_dim, self.padding_idx = \
            base.num_embeddings, base.embedding_dim, base.padding_idx
        self.weight = base.weight
        self._init_lora()
        return self

    def _init_lora(self):
        super()._init_lora()
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def _adapter_params(self, name):
        return [d[name] for d in (self.lora_embedding_A, self.lora_embedding_B) if name in d]

    def _make(self, name, r, dropout):
        # PEFT keeps a dropout module for embeddings but does not apply it.
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_embedding_A[name] = nn.Parameter(torch.randn(r, self.num_embeddings))
        self.lora_embedding_B[name] = nn.Parameter(torch.randn(self.embedding_dim, r))

    def _reset(self, name, init):
        if init is False:
            return
        if init not in (True, "default", "gaussian"):
            raise ValueError(f"unknown LoRA initialisation {init!r} (true, false or 'gaussian')")
        nn.init.zeros_(self.lora_embedding_A[name])
        nn.init.normal_(self.lora_embedding_B[name])

    def _lora_weight(self, name):
        return self.lora_embedding_B[name] @ self.lora_embedding_A[name]  # [dim, num]

    def delta_weight(self, name):
        return self._lora_weight(name).T * self.scaling[name]

    def _embed(self, x, weight):
        return F.embedding(x, weight, padding_idx=self.padding_idx)

    def forward(self, x):
        result = self._embed(x, self.weight)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_embedding_A:
                continue
            after_a = self._embed(x, self.lora_embedding_A[name].T)
            result = result + (after_a @ self.lora_embedding_B[name].T) * self.scaling[name]
        return result

    def _base_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}" + \
            (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


class LoRAConv(LoRALayer):
    """A 1-, 2- or 3-D convolution with LoRA adapters: A is a convolution with the base's
    kernel, stride and padding into r channels, B a 1x1 convolution back out (as PEFT)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, dims: int = 2):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](in_channels, out_channels, kernel_size, stride=stride,
                                                          padding=padding, dilation=dilation, groups=groups,
                                                          bias=bias)
        self._adopt(conv)

    @classmethod
    def wrap(cls, base: nn.Module) -> "LoRAConv":
        self = cls.__new__(cls)
        LoRALayer.__init__(self)
        self._adopt(base)
        return self

    def _adopt(self, conv):
        self._conv_cls = type(conv)
        self.dims = conv.weight.dim() - 2
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups, self.padding_mode = conv.dilation, conv.groups, conv.padding_mode
        if self.groups != 1 or any(d != 1 for d in self.dilation) or self.padding_mode != "zeros":
            raise ValueError("LoRA adapts convolutions with groups=1, dilation=1 and zero padding only")
        self.weight = conv.weight
        if conv.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = conv.bias
        self._init_lora()

    def _make(self, name, r, dropout):
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A[name] = self._conv_cls(self.in_channels, r, self.kernel_size, self.stride, self.padding,
                                           bias=False)
        one = (1,) * self.dims
        self.lora_B[name] = self._conv_cls(r, self.out_channels, one, one, bias=False)

    def _reset(self, name, init):
        _reset_ab(self.lora_A[name], self.lora_B[name], self.r[name], init)

    def _lora_weight(self, name):
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        return (b.flatten(1) @ a.flatten(1)).reshape(self.weight.shape)

    def delta_weight(self, name):
        return self._lora_weight(name) * self.scaling[name]

    def _base(self, x):
        fn = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        return fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x):
        result = self._base(x)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            A, B, drop, s = self.lora_A[name], self.lora_B[name], self.lora_dropout[name], self.scaling[name]
            result = result + B(A(drop(x))) * s
        return result

    def _base_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


# -- what generated code calls ----------------------------------------------------------

def adapt(base: nn.Module, name: str, r: int, alpha: float = 8, dropout: float = 0.0, init=True,
          rslora: bool = False, dora: bool = False, active: bool = True, merged: bool = False,
          tied: bool = False) -> LoRALayer:
    """Give `base` (nn.Linear, archc's TransposedLinear, nn.Embedding, nn.ConvNd, or a LoRA
    layer already) the adapter `name`; returns the LoRA layer, which holds the base's own
    parameter objects. `merged=True` merges the adapter at once (a plan's `merge`)."""
    if isinstance(base, LoRALayer):
        layer = base
    elif type(base) is nn.Embedding:  # not a subclass with its own forward (archc's learned_pe)
        layer = LoRAEmbedding.wrap(base)
    elif isinstance(base, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        layer = LoRAConv.wrap(base)
    elif isinstance(base, nn.Linear):
        layer = LoRALinear.wrap(base, fan_in_fan_out=False)
    elif type(base).__name__ in ("TransposedLinear", "Conv1D") and hasattr(base, "weight"):
        if not hasattr(base, "in_features"):  # transformers' Conv1D: weight [in, out], `nf` outputs
            base.in_features, base.out_features = base.weight.shape
        layer = LoRALinear.wrap(base, fan_in_fan_out=True)
    else:
        raise TypeError(f"LoRA cannot adapt a {type(base).__name__}")
    layer.tied = layer.tied or tied
    layer.add_adapter(name, r, alpha, dropout, init, rslora, dora, active=active)
    if merged:
        layer.merge([name])
    return layer


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    """(path, layer) for every LoRA layer of a model."""
    for path, m in model.named_modules():
        if isinstance(m, LoRALayer):
            yield path, m


def set_adapter(model: nn.Module, names: str | Iterable[str]) -> None:
    """Make `names` the active (running, training) adapters of every LoRA layer."""
    names = [names] if isinstance(names, str) else list(names)
    for _, layer in lora_layers(model):
        layer.set_adapter(names)


def merge(model: nn.Module, names: Iterable[str] | None = None) -> None:
    """Merge adapters (default: the active ones) into every LoRA layer's base weight."""
    tied = [p for p, layer in lora_layers(model) if layer.tied]
    if tied:
        raise RuntimeError(f"{', '.join(tied)}: weights tied to another module's; merging would change that "
                           "other use too, so it is refused (merge the other layers one by one)")
    for _, layer in lora_layers(model):
        layer.merge(None if names is None else [n for n in names if n in layer.r])


def unmerge(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


def merged_state_dict(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The base model's state_dict with the adapters merged in and no adapter entries: it
    loads into the model built without the LoRA plan. The model itself is left as it was."""
    merge(model, names)
    try:
        keep = {k: v.detach().clone() for k, v in model.state_dict().items() if not _is_adapter_key(k)}
    finally:
        unmerge(model)
    return keep


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """One adapter's parameters, under the model's state_dict keys."""
    return {k: v for k, v in model.state_dict().items() if _is_adapter_key(k) and _adapter_of(k) == name}


def load_base(model: nn.Module, state_dict: dict, strict: bool = True):
    """Load base weights (a state_dict without adapters) into a model with LoRA layers, then
    re-initialise DoRA magnitudes from the loaded weights (PEFT computes them from the
    pretrained weight). Adapter entries may be missing; with `strict`, nothing else may."""
    result = model.load_state_dict(state_dict, strict=False)
    if strict:
        missing = [k for k in result.missing_keys if not _is_adapter_key(k)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"base weights do not match: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
    for _, layer in lora_layers(model):
        for name in layer.r:
            if layer.use_dora[name] and not any(k.endswith(f"lora_magnitude_vector.{name}.weight")
                                                for k in state_dict):
                with torch.no_grad():
                    norm = layer._weight_norm(layer.weight, layer._lora_weight(name), layer.scaling[name])
                    layer.lora_magnitude_vector[name].weight.copy_(norm)
    return result


_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def _is_adapter_key(key: str) -> bool:
    return any(p in _ADAPTER_PARTS for p in key.split("."))


def _adapter_of(key: str) -> str | None:
    parts = key.split(".")
    for i, p in enumerate(parts):
        if p in _ADAPTER_PARTS and i + 1 < len(parts):
            return parts[i + 1]
    return None
