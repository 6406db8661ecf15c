import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import archc
import opcheck
from archc.compiler.dims import Sym
from archc.compiler.diagnostics import CompileError
from archc.compiler.ir import TensorType
from archc.compiler.ops import Module
from archc.runtime import modules as rt
from opcheck import B, check, fails, infer, make

T = Sym.symbol("T")


def _sub(s: str) -> str:
    return s.replace("{cache}", "cache").replace("{key}", "'k'")


@pytest.fixture(autouse=True)
def _runtime(monkeypatch):
    """opcheck with `rt` in scope and `{cache}` / `{key}` bound (no cache)."""
    monkeypatch.setitem(opcheck.NS, "rt", rt)
    monkeypatch.setitem(opcheck.NS, "cache", None)
    orig = opcheck.resolve

    def resolve(low, n):
        if isinstance(low, Module):
            low = dataclasses.replace(low, call=_sub(low.call))
        else:
            low = dataclasses.replace(low, template=_sub(low.template))
        return orig(low, n)

    monkeypatch.setattr(opcheck, "resolve", resolve)


def lowered(name, shapes, *args, dtype="float32", **kw):
    """fn(*xs, cache=None) running the lowered op, and its module (or None)."""
    op, a = make(name, *args, **kw)
    ins = [TensorType(tuple(s), dtype) for s in shapes]
    low = op.lower(a, ins, op.infer(a, ins))
    names = [f"x{i}" for i in range(len(shapes))]
    if isinstance(low, Module):
        mod, template = opcheck.target(low.target)(*low.args, **low.kwargs), low.call
    else:
        mod, template = None, low.template
    expr = _sub(template).replace("{*}", ", ".join(names)).format(*names, m="m")

    def fn(*xs, cache=None):
        return eval(expr, {**opcheck.NS, "m": mod, "cache": cache, **dict(zip(names, xs))})

    return fn, mod


def reference(q, k, v, heads, causal=False, kv_heads=None):
    """Attention written out: explicit masked softmax, k/v heads repeated for GQA."""
    b, t, d = q.shape
    s, hk = k.shape[1], kv_heads or heads
    dh = d // heads
    q = q.view(b, t, heads, dh).transpose(1, 2)
    k = k.view(b, s, hk, dh).transpose(1, 2).repeat_interleave(heads // hk, dim=1)
    v = v.view(b, s, hk, dh).transpose(1, 2).repeat_interleave(heads // hk, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if causal:
        mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)


# -- the weightless core --------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_attention_shapes(causal):
    check("attention", [(2, 5, 16)] * 3, 4, causal=causal)


def test_attention_flops():
    """4·B·T·S·D: what torch counts for attention written as two matmuls (its counter
    does not see the fused CPU kernel of scaled_dot_product_attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    q, k = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    op, a = make("attention", 4)
    ins = [TensorType((2, 5, 16)), TensorType((2, 7, 16)), TensorType((2, 7, 16))]
    with FlopCounterMode(display=False) as counter:
        reference(q, k, k, 4)
    assert op.flops(a, ins, op.infer(a, ins)) == counter.get_total_flops() == 4 * 2 * 5 * 7 * 16
    op, a = make("mha", 4, kv_heads=2)
    ins = [TensorType((2, 5, 16)), TensorType((2, 7, 16))]
    proj = 2 * 2 * 5 * 16 * 16 * 2 + 2 * 2 * 7 * 16 * 8 * 2
    assert op.flops(a, ins, op.infer(a, ins)) == proj + 4 * 2 * 5 * 7 * 16


def test_attention_cross_lengths_and_gqa_shapes():
    (out,) = check("attention", [(2, 5, 16), (2, 7, 16), (2, 7, 16)], 4)
    assert out.shape == (2, 5, 16)
    (out,) = check("attention", [(2, 5, 16), (2, 5, 8), (2, 5, 8)], 4, kv_heads=2, causal=True)
    assert out.shape == (2, 5, 16)
    assert infer("attention", [(B, T, 16)] * 3, 4)[0].shape == (B, T, 16)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_masked_softmax(causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 6, 16) for _ in range(3))
    fn, _ = lowered("attention", [(2, 6, 16)] * 3, 4, causal=causal)
    torch.testing.assert_close(fn(q, k, v), reference(q, k, v, 4, causal), atol=1e-5, rtol=1e-5)


def test_attention_gqa_matches_repeated_kv():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 6, 16), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    fn, _ = lowered("attention", [(2, 6, 16), (2, 6, 8), (2, 6, 8)], 4, kv_heads=2, causal=True)
    torch.testing.assert_close(fn(q, k, v), reference(q, k, v, 4, True, kv_heads=2), atol=1e-5, rtol=1e-5)


def test_attention_scale_and_dropout_lowering():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 3, 8) for _ in range(3))
    fn, _ = lowered("attention", [(1, 3, 8)] * 3, 2, scale=0.5)
    want = F.scaled_dot_product_attention(*(t.view(1, 3, 2, 4).transpose(1, 2) for t in (q, k, v)), scale=0.5)
    torch.testing.assert_close(fn(q, k, v), want.transpose(1, 2).reshape(1, 3, 8))
    op, a = make("attention", 2, dropout=0.1)
    ins = [TensorType((1, 3, 8))] * 3
    assert "training=self.training" in op.lower(a, ins, op.infer(a, ins)).template


def test_attention_cache_matches_full_sequence():
    """Chunks fed through the cache (a prompt, then a 2-token chunk, then single tokens)
    give the same result as the whole sequence at once."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 7, 16), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    fn, _ = lowered("attention", [(2, 7, 16), (2, 7, 8), (2, 7, 8)], 4, kv_heads=2, causal=True)
    full = fn(q, k, v)
    cache = rt.KVCache()
    parts = [fn(q[:, a:b], k[:, a:b], v[:, a:b], cache=cache) for a, b in [(0, 3), (3, 5), (5, 6), (6, 7)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 7 and cache.entries["k"][0].shape == (2, 2, 7, 4)
    assert cache.bytes() == 2 * 2 * 7 * 8 * 4


def test_attention_errors():
    fails("E0303", "attention", [(2, 5, 10)] * 3, 4)                       # heads do not divide D
    fails("E0303", "attention", [(2, 5, 16), (2, 5, 8), (2, 5, 8)], 4)     # k/v width without kv_heads
    fails("E0303", "attention", [(2, 5, 16)] * 3, 4, kv_heads=3)           # kv_heads does not divide heads
    fails("E0302", "attention", [(2, 16), (2, 16), (2, 16)], 4)
    fails("E0301", "attention", [(2, 5, 16), (2, 6, 16), (2, 7, 16)], 4)   # k and v lengths
    fails("E0305", "attention", [(2, 5, 16)] * 3, 0)


# -- mha ---------------------------------------------------------------------------------------

LAYOUTS = ["separate", "fused", "torch"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(bias=False)])
def test_mha_self(layout, kw):
    check("mha", [(2, 5, 16)], 4, layout=layout, **kw)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mha_cross(layout):
    (out,) = check("mha", [(2, 5, 16), (2, 9, 16)], 4, layout=layout)
    assert out.shape == (2, 5, 16)


@pytest.mark.parametrize("layout", ["separate", "fused"])
def test_mha_gqa(layout):
    check("mha", [(2, 5, 16)], 4, kv_heads=2, layout=layout, causal=True)
    check("mha", [(2, 5, 16), (2, 3, 16)], 4, kv_heads=1, layout=layout)


def test_mha_parameter_names():
    x = [TensorType((B, T, 16))]
    op, a = make("mha", 4, kv_heads=2)
    assert op.params(a, x) == {
        "q_proj.weight": (16, 16), "q_proj.bias": (16,), "k_proj.weight": (8, 16), "k_proj.bias": (8,),
        "v_proj.weight": (8, 16), "v_proj.bias": (8,), "o_proj.weight": (16, 16), "o_proj.bias": (16,)}
    op, a = make("mha", 4, bias=False, out_name="out_proj")
    assert list(op.params(a, x)) == ["q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"]
    op, a = make("mha", 4, layout="fused", kv_heads=2)
    assert op.params(a, x) == {"qkv.weight": (32, 16), "qkv.bias": (32,), "out_proj.weight": (16, 16),
                               "out_proj.bias": (16,)}
    op, a = make("mha", 4, layout="torch")
    assert op.params(a, x) == {"in_proj_weight": (48, 16), "in_proj_bias": (48,), "out_proj.weight": (16, 16),
                               "out_proj.bias": (16,)}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", ["self", "causal", "cross"])
def test_mha_torch_layout_loads_nn_multiheadattention(bias, mode):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, bias=bias, batch_first=True).eval()
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    shapes = [(2, 5, 16)] + ([(2, 7, 16)] if mode == "cross" else [])
    fn, mod = lowered("mha", shapes, 4, layout="torch", bias=bias, causal=mode == "causal")
    assert [(k, v.shape) for k, v in mod.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    mod.load_state_dict(ref.state_dict())
    assert sum(p.numel() for p in mod.parameters()) == sum(p.numel() for p in ref.parameters())
    if mode == "cross":
        want = ref(x, mem, mem, need_weights=False)[0]
        got = fn(x, mem)
    elif mode == "causal":
        mask = torch.nn.Transformer.generate_square_subsequent_mask(5)
        want = ref(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0]
        got = fn(x)
    else:
        want, got = ref(x, x, x, need_weights=False)[0], fn(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mha_torch_layout_initializes_like_torch():
    _, mod = lowered("mha", [(2, 5, 16)], 4, layout="torch")
    assert torch.all(mod.in_proj_bias == 0) and torch.all(mod.out_proj.bias == 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mha_layouts_compute_the_same(layout):
    """Each layout is the same function of its q/k/v/out weights."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    fn_s, sep = lowered("mha", [(2, 5, 16)], 4, causal=True, out_name="out_proj")
    fn, mod = lowered("mha", [(2, 5, 16)], 4, causal=True, layout=layout)
    w = torch.cat([sep.q_proj.weight, sep.k_proj.weight, sep.v_proj.weight])
    b = torch.cat([sep.q_proj.bias, sep.k_proj.bias, sep.v_proj.bias])
    sd = {"separate": {**sep.state_dict(), **{k.replace("out_proj", "o_proj"): v for k, v in
                                               sep.state_dict().items() if k.startswith("out_proj")}},
          "fused": {"qkv.weight": w, "qkv.bias": b},
          "torch": {"in_proj_weight": w, "in_proj_bias": b}}[layout]
    sd = {k: v for k, v in sd.items() if not (layout == "separate" and k.startswith("out_proj"))}
    out = "o_proj" if layout == "separate" else "out_proj"
    sd |= {f"{out}.weight": sep.out_proj.weight, f"{out}.bias": sep.out_proj.bias}
    mod.load_state_dict(sd)
    torch.testing.assert_close(fn(x), fn_s(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["separate", "fused"])
def test_mha_cache_matches_full_sequence(layout):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    fn, _ = lowered("mha", [(2, 6, 16)], 4, kv_heads=2, causal=True, layout=layout, rope=10000.0)
    full = fn(x)
    cache = rt.KVCache()
    parts = [fn(x[:, a:b], cache=cache) for a, b in [(0, 2), (2, 5), (5, 6)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_mha_matches_llama_attention():
    """mha(heads, kv_heads, causal, bias=false, rope=base) is transformers' LlamaAttention:
    same parameter names and count, same outputs."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rope_theta=500.0)
    cfg._attn_implementation = "eager"
    ref = LlamaAttention(cfg, layer_idx=0).eval()
    fn, mod = lowered("mha", [(2, 6, 32)], 4, kv_heads=2, causal=True, bias=False, rope=500.0)
    assert [(k, v.shape) for k, v in mod.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 32)
    pos = torch.arange(6)[None].expand(2, -1)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, pos)
    mask = torch.full((6, 6), float("-inf")).triu(1)[None, None].expand(2, 1, 6, 6)
    want = ref(x, position_embeddings=(cos, sin), attention_mask=mask)[0]
    torch.testing.assert_close(fn(x), want, atol=1e-5, rtol=1e-5)


def test_mha_errors():
    fails("E0303", "mha", [(2, 5, 10)], 4)                                 # heads do not divide D
    fails("E0303", "mha", [(2, 5, 16), (2, 7, 12)], 4)                     # cross widths differ
    fails("E0303", "mha", [(2, 5, 16)], 4, kv_heads=3)
    fails("E0302", "mha", [(2, 16)], 4)
    fails("E0302", "mha", [(2, 5, 16), (2, 16)], 4)
    fails("E0207", "mha", [(2, 5, 16)], 4, kv_heads=2, layout="torch")
    fails("E0207", "mha", [(2, 5, 16), (2, 7, 16)], 4, causal=True)      # causal cross-attention
    fails("E0207", "mha", [(2, 5, 16)], 4, out_name="q_proj")
    fails("E0303", "mha", [(2, 5, 12)], 4, rope=10000.0)                   # odd head size


def test_cache_bytes_per_token():
    op, a = make("mha", 4, kv_heads=2, causal=True)
    assert op.cache_bytes_per_token(a, [TensorType((B, T, 16))]) == 2 * 8 * 4
    assert op.cache_bytes_per_token(a, [TensorType((B, T, 16), "bfloat16")]) == 2 * 8 * 2
    op, a = make("mha", 4)
    assert op.cache_bytes_per_token(a, [TensorType((B, T, 16))]) == 0
    op, a = make("attention", 4, causal=True)
    assert op.cache_bytes_per_token(a, [TensorType((B, T, 16))] * 3) == 2 * 16 * 4


# -- GPT-2's transposed linear ---------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_transposed_linear(bias):
    op, a = make("linear", 12, bias=bias, transposed=True)
    assert op.params(a, [TensorType((B, T, 8))])["weight"] == (8, 12)
    opcheck.check("linear", [(2, 3, 8)], 12, bias=bias, transposed=True, flops=True)


def test_transposed_linear_loads_gpt2_conv1d():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    ref = Conv1D(12, 8)
    torch.nn.init.normal_(ref.bias)
    fn, mod = lowered("linear", [(2, 3, 8)], 12, transposed=True)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(fn(x), ref(x))


# -- in specs ------------------------------------------------------------------------------------

GPT_STYLE = """
block Attn(x, heads: int) {
    d = x.shape[-1]
    q, k, v = x -> c_attn: linear(3 * d, transposed=true) -> split([d, d, d], dim=-1)
    return attention(q, k, v, heads, causal=true) -> c_proj: linear(d, transposed=true)
}
model M(D: int = 16) {
    input x: float32[B, T, 16]
    output y = (x -> attn: Attn(4)) + x
}
"""


def test_core_attention_in_a_spec_uses_the_cache():
    prog = archc.parse(GPT_STYLE)
    report = prog.check().to_json()
    assert report["totals"]["kv_cache_bytes_per_token"] == 2 * 16 * 4
    m = prog.build().eval()
    assert list(m.state_dict()) == ["attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                                    "attn.c_proj.bias"]
    x = torch.randn(2, 5, 16)
    full = m(x)
    cache = rt.KVCache()
    a, cache = m(x[:, :3], kv_cache=cache)
    b, cache = m(x[:, 3:], kv_cache=cache)
    torch.testing.assert_close(torch.cat([a, b], dim=1), full, atol=1e-5, rtol=1e-5)


def test_spec_diagnostics():
    bad_heads = "model M() {\n input x: float32[B, T, 10]\n output y = x -> mha(4)\n}\n"
    with pytest.raises(CompileError) as e:
        archc.parse(bad_heads).check()
    assert "E0303" in str(e.value)
    bad_cross = ("model M() {\n input x: float32[B, T, 16]\n input m: float32[B, S, 12]\n"
                 " output y = x -> mha(4, kv=m)\n}\n")
    with pytest.raises(CompileError) as e:
        archc.parse(bad_cross).check()
    assert "E0303" in str(e.value)
    ok = ("model M() {\n input x: float32[B, T, 16]\n input m: float32[B, S, 16]\n"
          " output y = x -> cross: mha(4, kv=m, layout=\"torch\")\n}\n")
    net = archc.parse(ok).build()
    assert net(torch.randn(2, 3, 16), torch.randn(2, 7, 16)).shape == (2, 3, 16)
    assert "kv_cache" not in archc.parse(ok).source()
