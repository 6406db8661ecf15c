"""Modules and functions that archc's generated code uses. Imports torch only."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Container(nn.Module):
    """A module that only holds children at a path (`layer1`, `layer1.0`).

    `container[0]` reads child "0", as nn.Sequential names them.
    """

    def __getitem__(self, key) -> nn.Module:
        return self._modules[str(key)]


# -- the key/value cache ---------------------------------------------------------

class KVCache:
    """Keys and values of causal attention layers, kept across decoding steps.

    Generated models that contain causal attention (or position ops) take it as
    `forward(..., kv_cache=cache)` and return `(outputs..., cache)`. Each
    attention node stores its keys and values under its module path as
    `[B, kv_heads, S, head_dim]` tensors; each position op keeps the number of
    positions it has seen under its own path, so positions continue from the
    cached length. One forward evaluates each node once, so the counts agree.
    """

    def __init__(self):
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.positions: dict[str, int] = {}

    # attention
    def past(self, key: str) -> int:
        """How many positions are cached under `key`."""
        kv = self.entries.get(key)
        return 0 if kv is None else kv[0].shape[-2]

    def update(self, key: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys and values (`[B, H, T, Dh]`); return the whole cached sequence."""
        old = self.entries.get(key)
        if old is not None:
            k = torch.cat([old[0], k], dim=-2)
            v = torch.cat([old[1], v], dim=-2)
        self.entries[key] = (k, v)
        return k, v

    # position ops
    def advance(self, key: str, n: int) -> int:
        """The first position of `n` new ones seen by the position op at `key`."""
        start = self.positions.get(key, 0)
        self.positions[key] = start + n
        return start

    @property
    def length(self) -> int:
        """The current cached sequence length (tokens already processed)."""
        lens = [kv[0].shape[-2] for kv in self.entries.values()] + list(self.positions.values())
        return max(lens, default=0)

    def __len__(self) -> int:
        return self.length

    def bytes(self) -> int:
        """Memory held by the cached keys and values."""
        return sum(t.numel() * t.element_size() for kv in self.entries.values() for t in kv)

    def clear(self) -> None:
        self.entries.clear()
        self.positions.clear()

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self.entries)}, length={self.length}, bytes={self.bytes()})"


# -- attention ------------------------------------------------------------------------

def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H * Dh] -> [B, H, T, Dh]."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _merge(y: torch.Tensor) -> torch.Tensor:
    """[B, H, T, Dh] -> [B, T, H * Dh]."""
    b, h, t, dh = y.shape
    return y.transpose(1, 2).reshape(b, t, h * dh)


def sdpa(q, k, v, causal: bool = False, dropout: float = 0.0, scale: float | None = None):
    """scaled_dot_product_attention over heads `[B, H, T, Dh]`; k and v may have fewer
    (grouped) heads, and may be longer than q (cached positions precede the queries:
    with `causal`, query i sees keys up to S - T + i)."""
    h, hk = q.shape[-3], k.shape[-3]
    if hk != h:  # grouped-query attention: kv head j serves query heads j*r .. j*r + r - 1
        k = k.repeat_interleave(h // hk, dim=-3)
        v = v.repeat_interleave(h // hk, dim=-3)
    t, s = q.shape[-2], k.shape[-2]
    mask, is_causal = None, False
    if causal:
        if t == s:
            is_causal = True
        elif t > 1:  # a chunk after cached positions: the mask's diagonal moves right by S - T
            mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
        # t == 1: the newest query sees every key
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                          scale=scale)


def attention(q, k, v, heads: int, kv_heads: int | None = None, causal: bool = False, dropout: float = 0.0,
              scale: float | None = None, training: bool = False, cache: KVCache | None = None,
              key: str | None = None) -> torch.Tensor:
    """The weightless attention core: q `[B, T, D]`, k and v `[B, S, D * kv_heads / heads]` -> `[B, T, D]`.

    With `causal` and a cache, this step's keys and values are appended under `key`
    and the queries attend over the whole cached sequence."""
    hk = kv_heads or heads
    q, k, v = _heads(q, heads), _heads(k, hk), _heads(v, hk)
    if causal and cache is not None:
        k, v = cache.update(key, k, v)
    return _merge(sdpa(q, k, v, causal, dropout if training else 0.0, scale))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with its projections, in one of three parameter layouts.

    - "separate": `q_proj`, `k_proj`, `v_proj` and an output projection `o_proj`
      (or `out_name`): transformers' Llama / BART / CLIP naming;
    - "fused": one `qkv` linear `[D + 2 * Dkv, D]` and `out_proj`;
    - "torch": exactly torch.nn.MultiheadAttention's `in_proj_weight`, `in_proj_bias`,
      `out_proj.weight`, `out_proj.bias` (batch first), so its state dict loads.

    `forward(x, kv=None, cache=None, key=None)`: self-attention over x, or
    cross-attention with keys and values from `kv`. With `causal` and a cache the
    keys and values of earlier steps are reused. `rope` (a base) rotates queries and
    keys as transformers' Llama does, positions offset by the cached length.
    """

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, causal: bool = False,
                 dropout: float = 0.0, bias: bool = True, layout: str = "separate", out_name: str | None = None,
                 rope: float | None = None):
        super().__init__()
        self.dim, self.heads, self.kv_heads = dim, heads, kv_heads or heads
        self.causal, self.dropout, self.layout, self.rope = causal, dropout, layout, rope
        self.kv_dim = dim // heads * self.kv_heads
        if layout == "separate":
            self.q_proj = nn.Linear(dim, dim, bias=bias)
            self.k_proj = nn.Linear(dim, self.kv_dim, bias=bias)
            self.v_proj = nn.Linear(dim, self.kv_dim, bias=bias)
            self.out_name = out_name or "o_proj"
        elif layout == "fused":
            self.qkv = nn.Linear(dim, dim + 2 * self.kv_dim, bias=bias)
            self.out_name = out_name or "out_proj"
        elif layout == "torch":
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
            if bias:
                self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
            else:
                self.register_parameter("in_proj_bias", None)
            self.out_name = "out_proj"
        else:
            raise ValueError(f"unknown attention layout {layout!r}")
        self.add_module(self.out_name, nn.Linear(dim, dim, bias=bias))
        if layout == "torch":  # as nn.MultiheadAttention initializes itself
            nn.init.xavier_uniform_(self.in_proj_weight)
            if bias:
                nn.init.zeros_(self.out_proj.bias)

    def _in_proj(self):
        if self.layout == "fused":
            return self.qkv.weight, self.qkv.bias
        return self.in_proj_weight, self.in_proj_bias

    def project(self, x, kv=None):
        """q `[B, T, D]`, k and v `[B, S, Dkv]`."""
        d, dk = self.dim, self.kv_dim
        if self.layout == "separate":
            src = x if kv is None else kv
            return self.q_proj(x), self.k_proj(src), self.v_proj(src)
        w, b = self._in_proj()
        if kv is None:
            return F.linear(x, w, b).split([d, dk, dk], dim=-1)
        q = F.linear(x, w[:d], None if b is None else b[:d])
        k, v = F.linear(kv, w[d:], None if b is None else b[d:]).split([dk, dk], dim=-1)
        return q, k, v

    def forward(self, x, kv=None, cache: KVCache | None = None, key: str | None = None):
        q, k, v = self.project(x, kv)
        q, k, v = _heads(q, self.heads), _heads(k, self.kv_heads), _heads(v, self.kv_heads)
        use_cache = cache is not None and self.causal and kv is None
        if self.rope is not None:
            start = cache.past(key) if use_cache else 0
            q = apply_rope(q, self.rope, start)
            k = apply_rope(k, self.rope, start)
        if use_cache:
            k, v = cache.update(key, k, v)
        y = sdpa(q, k, v, self.causal, self.dropout if self.training else 0.0)
        return getattr(self, self.out_name)(_merge(y))

    def extra_repr(self) -> str:
        extra = "" if self.kv_heads == self.heads else f", kv_heads={self.kv_heads}"
        return f"heads={self.heads}{extra}, causal={self.causal}, layout={self.layout!r}"


# -- dense ----------------------------------------------------------------------------

class TransposedLinear(nn.Module):
    """A linear layer whose weight is stored `[in, out]` (transformers' GPT-2 `Conv1D`):
    y = x W + b, so GPT-2's c_attn / c_proj / c_fc weights load by name as they are."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features))
        else:
            self.register_parameter("bias", None)
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        shape = x.shape[:-1] + (self.out_features,)
        x = x.reshape(-1, self.in_features)
        y = x @ self.weight if self.bias is None else torch.addmm(self.bias, x, self.weight)
        return y.view(shape)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# -- positions ------------------------------------------------------------------------

def _start(x_len: int, cache: KVCache | None, key: str | None) -> int:
    return 0 if cache is None else cache.advance(key, x_len)


def _check_len(end: int, max_len: int, what: str) -> None:
    if end > max_len:
        raise ValueError(f"{what}: position {end - 1} is beyond max_len={max_len} "
                         f"(a sequence of {end} positions)")


class LearnedPositionalEmbedding(nn.Embedding):
    """Adds a learned `[max_len, D]` table (GPT-2's `wpe`) to `[B, T, D]`; with a cache,
    positions continue from the cached length."""

    def __init__(self, max_len: int, dim: int):
        super().__init__(max_len, dim)

    def forward(self, x, cache: KVCache | None = None, key: str | None = None):
        t = x.shape[1]
        start = _start(t, cache, key)
        _check_len(start + t, self.num_embeddings, "learned_pe")
        return x + self.weight[start:start + t]


def sinusoidal_table(start: int, length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The Vaswani et al. encoding for positions start..start+length-1: `[length, dim]`,
    sin on even channels and cos on odd ones, frequencies 10000^(-2i/dim)."""
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe.to(dtype)


def sinusoidal_pe(x, max_len: int, cache: KVCache | None = None, key: str | None = None):
    """x `[B, T, D]` + the sinusoidal encoding of its positions (no buffer)."""
    t = x.shape[1]
    start = _start(t, cache, key)
    _check_len(start + t, max_len, "sinusoidal_pe")
    return x + sinusoidal_table(start, t, x.shape[-1], x.device, x.dtype)


def rotate_half(x):
    """transformers' Llama convention: (x1, x2) -> (-x2, x1) over the two halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(start: int, length: int, head_dim: int, base: float, device=None, dtype=torch.float32):
    """cos and sin `[length, head_dim]` for positions start..start+length-1 (computed in float32)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, base: float, start: int = 0):
    """Rotary position embedding of `[..., T, Dh]` for positions start..start+T-1."""
    cos, sin = rope_cos_sin(start, x.shape[-2], x.shape[-1], base, x.device, x.dtype)
    return x * cos + rotate_half(x) * sin


def rope(x, base: float = 10000.0, heads: int | None = None, cache: KVCache | None = None,
         key: str | None = None):
    """RoPE on `[B, H, T, Dh]`, or on `[B, T, D]` split into `heads` heads (one head if None)."""
    if x.dim() == 4:
        return apply_rope(x, base, _start(x.shape[-2], cache, key))
    b, t, d = x.shape
    h = heads or 1
    y = apply_rope(x.view(b, t, h, d // h).transpose(1, 2), base, _start(t, cache, key))
    return y.transpose(1, 2).reshape(b, t, d)


class Supernet(nn.Module):
    """A relaxed search space: architecture parameters live under `arch.` and are
    kept apart from the weights, as the DARTS reference keeps its α."""

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if not name.startswith(prefix + "arch." if prefix else "arch."):
                yield name, p

    def arch_parameters(self) -> list:
        arch = self._modules.get("arch")
        return list(arch._parameters.values()) if arch is not None else []

    def named_arch_parameters(self):
        arch = self._modules.get("arch")
        return list(arch._parameters.items()) if arch is not None else []


def mixed(alpha, candidates, relax: str, training: bool):
    """A mixed operation: candidates weighted by softmax(α) (DARTS) or a hard
    Gumbel-softmax sample (GDAS), which still passes gradients to α."""
    import torch.nn.functional as F

    if relax == "gumbel":
        weights = F.gumbel_softmax(alpha, tau=1.0, hard=True) if training else F.one_hot(
            alpha.argmax(), alpha.numel()).to(alpha.dtype)
    else:
        weights = F.softmax(alpha, dim=-1)
    return sum(w * c for w, c in zip(weights.unbind(0), candidates))


def weighted_sum(beta, edges):
    """PC-DARTS edge normalisation: edges weighted by softmax(β) over a node's inputs."""
    import torch.nn.functional as F

    return sum(w * e for w, e in zip(F.softmax(beta, dim=-1).unbind(0), edges))
