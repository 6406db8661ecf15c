"""Autoregressive generation for models built from decoder specs. Imports torch only.

    tokens = archc.generate(model, prompt, max_new_tokens=20)               # greedy
    tokens = archc.generate(model, prompt, 20, top_k=50, temperature=0.8,
                            generator=torch.Generator().manual_seed(0))     # top-k sampling

A model whose spec has causal attention (or position ops) takes
`forward(tokens, kv_cache=cache)` and returns `(outputs..., cache)`; generation
feeds the prompt once and then one token per step, reusing the cached keys and
values. With `use_cache=False` (or a model without a cache) every step re-runs
the whole sequence, which gives the same result and is there to check it.
"""
from __future__ import annotations

import inspect

import torch

from .modules import KVCache


def _accepts_cache(model) -> bool:
    try:
        return "kv_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def _logits(model, out):
    """The logits among a model's outputs: the one named `logits`, else the first."""
    if not isinstance(out, (tuple, list)):
        return out
    names = tuple(getattr(model, "output_names", ()))
    return out[names.index("logits")] if "logits" in names else out[0]


@torch.no_grad()
def generate(model, tokens, max_new_tokens: int, *, top_k: int | None = None, temperature: float = 1.0,
             use_cache: bool = True, generator: torch.Generator | None = None, return_logits: bool = False):
    """Extend `tokens` (`[B, T]` or `[T]` integer ids) by `max_new_tokens` tokens.

    Greedy (argmax) when `top_k` is None; otherwise samples among the `top_k` most
    likely tokens after dividing the logits by `temperature`, drawing from
    `generator` (seed it for reproducible samples). The model's first output (or
    the one named `logits`) must be `[B, T, vocab]`. Put the model in eval mode
    first if it has dropout. Returns `[B, T + max_new_tokens]` (`[T + n]` for a 1-D
    prompt), and with `return_logits` also the logits that chose each new token,
    `[B, max_new_tokens, vocab]`.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if top_k is not None and temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    squeeze = tokens.dim() == 1
    seq = tokens[None] if squeeze else tokens
    if seq.dim() != 2:
        raise ValueError(f"tokens must be [B, T] or [T], got shape {tuple(tokens.shape)}")
    if seq.shape[1] == 0:
        raise ValueError("generation needs a prompt of at least one token")
    cache = KVCache() if use_cache and _accepts_cache(model) else None
    chosen: list[torch.Tensor] = []
    step_input = seq
    for _ in range(max_new_tokens):
        if cache is not None:
            out = model(step_input, kv_cache=cache)
            cache = out[-1]
            out = out[:-1] if len(out) > 2 else out[0]
        else:
            out = model(seq)
        logits = _logits(model, out)[:, -1, :]
        chosen.append(logits)
        if top_k is None:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            scores = logits.float() / temperature
            k = min(top_k, scores.shape[-1])
            vals, idx = torch.topk(scores, k, dim=-1)
            probs = torch.softmax(vals, dim=-1)
            pick = torch.multinomial(probs, 1, generator=generator)
            nxt = idx.gather(-1, pick)
        nxt = nxt.to(seq.dtype)
        seq = torch.cat([seq, nxt], dim=1)
        step_input = nxt
    result = seq[0] if squeeze else seq
    if return_logits:
        logits = torch.stack(chosen, dim=1) if chosen else seq.new_zeros((seq.shape[0], 0, 0), dtype=torch.float32)
        return result, logits[0] if squeeze else logits
    return result
