"""Incremental decoding with the key/value cache gives what re-running the prefix gives."""
import subprocess
import sys

import pytest
import torch

import archc
from archc.runtime.modules import KVCache

SPEC = """
block Block(x, heads: int) {
    d = x.shape[-1]
    x = (x -> ln_1: layernorm -> attn: mha(heads, causal=true)) + x
    return (x -> ln_2: layernorm -> fc: linear(4 * d) -> gelu(approximate="tanh") -> proj: linear(d)) + x
}

model TinyLM(vocab: int = 40, d: int = 32, heads: int = 4, layers: int = 2, ctx: int = 32) {
    input tokens: int64[B, T]
    x = tokens -> wte: embedding(vocab, d) -> wpe: learned_pe(ctx) -> h: [Block(heads) * layers]
    output logits = x -> ln_f: layernorm -> lm_head: linear(vocab, bias=false, tie=wte)
}
"""

# Llama-like: RMS norm, rotary embedding inside grouped-query attention, SwiGLU written out.
LLAMA = """
block Layer(x, heads: int, kv_heads: int) {
    d = x.shape[-1]
    x = (x -> input_layernorm: rmsnorm
          -> self_attn: mha(heads, causal=true, bias=false, kv_heads=kv_heads, rope=10000.0)) + x
    h = x -> post_attention_layernorm: rmsnorm
    return ((h -> gate_proj: linear(2 * d, bias=false) -> silu) * (h -> up_proj: linear(2 * d, bias=false))
            -> down_proj: linear(d, bias=false)) + x
}

model TinyLlama(vocab: int = 40) {
    input tokens: int64[B, T]
    x = tokens -> embed_tokens: embedding(vocab, 32) -> layers: [Layer(4, 2) * 2] -> norm: rmsnorm
    output logits = x -> lm_head: linear(vocab, bias=false)
}
"""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return archc.parse(SPEC).build().eval()


@pytest.mark.parametrize("prompt_len", [1, 5])
def test_greedy_with_cache_equals_without(model, prompt_len):
    prompt = torch.randint(0, 40, (3, prompt_len), generator=torch.Generator().manual_seed(1))
    a, la = archc.generate(model, prompt, 12, return_logits=True)
    b, lb = archc.generate(model, prompt, 12, use_cache=False, return_logits=True)
    assert a.shape == (3, prompt_len + 12)
    assert torch.equal(a[:, :prompt_len], prompt)
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)


def test_one_dimensional_prompt(model):
    prompt = torch.tensor([3, 1, 4])
    out = archc.generate(model, prompt, 4)
    assert out.shape == (7,) and torch.equal(out, archc.generate(model, prompt[None], 4)[0])


def test_top_k_sampling_is_reproducible(model):
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(2))

    def sample(seed, **kw):
        return archc.generate(model, prompt, 10, top_k=5, temperature=0.8,
                              generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sample(0), sample(0))
    assert torch.equal(sample(0), sample(0, use_cache=False))  # the same draws, the same logits
    assert not all(torch.equal(sample(0), sample(s)) for s in range(1, 6))


def test_top_1_is_greedy(model):
    prompt = torch.randint(0, 40, (2, 3), generator=torch.Generator().manual_seed(3))
    assert torch.equal(archc.generate(model, prompt, 6, top_k=1), archc.generate(model, prompt, 6))


def test_cache_contents_and_cost(model):
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(4))
    cache = KVCache()
    logits, cache = model(prompt, kv_cache=cache)
    assert logits.shape == (2, 5, 40)
    assert cache.length == 5 and sorted(cache.entries) == ["h.0.attn", "h.1.attn"]
    per_token = archc.parse(SPEC).check().to_json()["totals"]["kv_cache_bytes_per_token"]
    assert per_token == 2 * 2 * 32 * 4  # 2 layers x (k, v) x width x float32
    assert cache.bytes() == per_token * 2 * 5  # batch 2, 5 positions
    step, cache = model(prompt[:, :1], kv_cache=cache)
    assert cache.length == 6


def test_without_cache_the_model_returns_only_its_outputs(model):
    out = model(torch.zeros(1, 3, dtype=torch.long))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 40)


def test_learned_positions_run_out():
    torch.manual_seed(0)
    net = archc.parse(SPEC).build(ctx=8).eval()
    with pytest.raises(ValueError, match="max_len=8"):
        archc.generate(net, torch.zeros(1, 4, dtype=torch.long), 6)


def test_llama_like_decoder_with_rope_and_gqa():
    torch.manual_seed(0)
    net = archc.parse(LLAMA).build().eval()
    assert "layers.0.self_attn.k_proj.weight" in net.state_dict()
    assert net.state_dict()["layers.0.self_attn.k_proj.weight"].shape == (16, 32)
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(5))
    a, la = archc.generate(net, prompt, 8, return_logits=True)
    b, lb = archc.generate(net, prompt, 8, use_cache=False, return_logits=True)
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)


def test_bad_arguments(model):
    with pytest.raises(ValueError):
        archc.generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError):
        archc.generate(model, torch.zeros(1, 2, dtype=torch.long), 3, top_k=0)


def test_import_archc_stays_torch_free():
    code = "import archc, sys; assert 'torch' not in sys.modules; assert callable(archc.generate)"
    subprocess.run([sys.executable, "-c", code], check=True)
