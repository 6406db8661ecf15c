"""Name maps between transformers' state_dicts and the std specs' (std.gpt, std.bert, std.llama).

The shipped specs use transformers' module names wherever the language allows, so a
checkpoint transfers by renaming keys, never by reshaping or transposing tensors:

| spec       | transformers model          | transformers key                  | spec key                     |
|------------|-----------------------------|-----------------------------------|------------------------------|
| std.gpt    | GPT2LMHeadModel             | `transformer.` + K                | K                            |
|            |                             | `lm_head.weight`                  | `lm_head.weight` (= wte)     |
|            |                             | `transformer.h.N.attn.bias`,      | dropped: causal-mask buffers |
|            |                             | `...attn.masked_bias`             | of older versions            |
| std.bert   | BertModel (BertFor*: `bert.` prefix, the task heads dropped)           |
|            |                             | `...attention.output.X`           | `...attention.output_.X`     |
|            |                             | `encoder.layer.N.output.X`        | `encoder.layer.N.output_.X`  |
|            |                             | `embeddings.position_ids`,        | dropped: index buffers       |
|            |                             | `embeddings.token_type_ids`       |                              |
| std.llama  | LlamaForCausalLM            | `model.` + K                      | K                            |
|            |                             | `lm_head.weight`                  | `lm_head.weight`             |
|            |                             | `model.rotary_emb.inv_freq`, ...  | dropped: recomputed          |

(`output` is a reserved word of the .arch language, so BERT's two `output` modules are
labelled `output_`; `model` is too, hence Llama's missing prefix.) Every function takes a
mapping of names to tensors and returns a new dict with the same tensor objects; none of
them imports torch. `*_from_hf` accepts the base model's keys as well (GPT2Model, BertModel,
LlamaModel): with no `lm_head.weight`, GPT-2's is the tied `wte.weight`.

    from transformers import GPT2LMHeadModel
    from archc.interop import hf
    net = archc.load(".../gpt.arch").build("GPT2")
    net.load_state_dict(hf.gpt2_from_hf(GPT2LMHeadModel.from_pretrained("gpt2").state_dict()))
"""
from __future__ import annotations

import re
from typing import Mapping, TypeVar

V = TypeVar("V")

# -- GPT-2 -----------------------------------------------------------------------------

_GPT2_BUFFERS = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")


def gpt2_from_hf(state_dict: Mapping[str, V]) -> dict[str, V]:
    """transformers' GPT2LMHeadModel (or GPT2Model) keys -> std.gpt's GPT2 / GPT3 keys."""
    out: dict[str, V] = {}
    for k, v in state_dict.items():
        if _GPT2_BUFFERS.search(k):
            continue
        out[k[len("transformer."):] if k.startswith("transformer.") else k] = v
    if "lm_head.weight" not in out and "wte.weight" in out:  # GPT2Model: the head is the tied embedding
        out["lm_head.weight"] = out["wte.weight"]
    return out


def gpt2_to_hf(state_dict: Mapping[str, V]) -> dict[str, V]:
    """std.gpt's keys -> transformers' GPT2LMHeadModel keys (loads with strict=True)."""
    return {(k if k == "lm_head.weight" else "transformer." + k): v for k, v in state_dict.items()}


# -- BERT ------------------------------------------------------------------------------

_BERT_PARTS = ("embeddings.", "encoder.", "pooler.")
_BERT_BUFFERS = {"embeddings.position_ids", "embeddings.token_type_ids"}
_BERT_OUT_HF = re.compile(r"^(encoder\.layer\.\d+\.(?:attention\.)?)output\.")
_BERT_OUT_SPEC = re.compile(r"^(encoder\.layer\.\d+\.(?:attention\.)?)output_\.")


def bert_from_hf(state_dict: Mapping[str, V]) -> dict[str, V]:
    """transformers' BertModel keys (or a BertFor... model's `bert.` keys; its task heads,
    `cls.*` and `classifier.*`, are left out) -> std.bert's BERT keys."""
    out: dict[str, V] = {}
    for k, v in state_dict.items():
        if k.startswith("bert."):
            k = k[len("bert."):]
        if not k.startswith(_BERT_PARTS) or k in _BERT_BUFFERS:
            continue
        out[_BERT_OUT_HF.sub(r"\1output_.", k)] = v
    return out


def bert_to_hf(state_dict: Mapping[str, V], prefix: str = "") -> dict[str, V]:
    """std.bert's keys -> transformers' BertModel keys; `prefix="bert."` for a BertFor...
    model (load those with strict=False: the task head is not in the spec)."""
    return {prefix + _BERT_OUT_SPEC.sub(r"\1output.", k): v for k, v in state_dict.items()}


# -- Llama -----------------------------------------------------------------------------

def llama_from_hf(state_dict: Mapping[str, V]) -> dict[str, V]:
    """transformers' LlamaForCausalLM (or LlamaModel) keys -> std.llama's Llama keys."""
    out: dict[str, V] = {}
    for k, v in state_dict.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue
        out[k[len("model."):] if k.startswith("model.") else k] = v
    return out


def llama_to_hf(state_dict: Mapping[str, V]) -> dict[str, V]:
    """std.llama's keys -> transformers' LlamaForCausalLM keys (loads with strict=True)."""
    return {(k if k == "lm_head.weight" else "model." + k): v for k, v in state_dict.items()}


MAPS = {
    "gpt2": (gpt2_from_hf, gpt2_to_hf),
    "bert": (bert_from_hf, bert_to_hf),
    "llama": (llama_from_hf, llama_to_hf),
}
"""model family -> (from transformers, to transformers)."""
