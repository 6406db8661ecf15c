import dataclasses
import math

import pytest
import torch

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


def lowered(name, shapes, *args, **kw):
    op, a = make(name, *args, **kw)
    ins = [TensorType(tuple(s)) for s in shapes]
    low = op.lower(a, ins, op.infer(a, ins))
    if isinstance(low, Module):
        mod, template = opcheck.target(low.target)(*low.args, **low.kwargs), low.call
    else:
        mod, template = None, low.template
    expr = _sub(template).format("x", m="m")
    return (lambda x, cache=None: eval(expr, {**opcheck.NS, "m": mod, "cache": cache, "x": x})), mod


# -- learned_pe -------------------------------------------------------------------------------

def test_learned_pe():
    check("learned_pe", [(2, 5, 8)], 16)
    op, a = make("learned_pe", 16)
    assert op.params(a, [TensorType((B, T, 8))]) == {"weight": (16, 8)}
    assert infer("learned_pe", [(B, T, 8)], 16)[0].shape == (B, T, 8)


def test_learned_pe_adds_rows_and_continues_from_cache():
    fn, mod = lowered("learned_pe", [(2, 6, 8)], 16)
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(fn(x), x + mod.weight[:6])
    cache = rt.KVCache()
    parts = [fn(x[:, :4], cache), fn(x[:, 4:5], cache), fn(x[:, 5:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), fn(x))
    with pytest.raises(ValueError, match="max_len=16"):
        fn(torch.randn(1, 11, 8), cache)  # positions 6..16


def test_learned_pe_param_layout():
    op, a = make("learned_pe", 5, layout="param")
    assert op.params(a, [TensorType((B, 5, 8))]) == {"": (1, 5, 8)}
    prog = archc.parse('block E(x) {\n return x -> pos_embedding: learned_pe(5, layout="param")\n}\n'
                       'model M() {\n input x: float32[B, 4, 8]\n output y = x -> encoder: E\n}\n')
    net = prog.build()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {"encoder.pos_embedding": (1, 5, 8)}
    with torch.no_grad():
        net.encoder.pos_embedding.normal_()
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(net(x), x + net.encoder.pos_embedding[:, :4])
    assert prog.check().params == 40


def test_learned_pe_errors():
    fails("E0304", "learned_pe", [(2, 17, 8)], 16)
    fails("E0304", "learned_pe", [(2, 6, 8)], 5, layout="param")
    fails("E0302", "learned_pe", [(2, 8)], 16)
    fails("E0305", "learned_pe", [(2, 4, 8)], 0)
    with pytest.raises(CompileError) as e:
        archc.parse("model M() {\n input x: float32[B, 20, 8]\n output y = x -> learned_pe(16)\n}\n").check()
    assert "E0304" in str(e.value)


# -- sinusoidal_pe -----------------------------------------------------------------------------

def vaswani(length, d):
    """The PyTorch tutorial's PositionalEncoding table."""
    pe = torch.zeros(length, d)
    position = torch.arange(length).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def test_sinusoidal_pe():
    check("sinusoidal_pe", [(2, 5, 8)], 64)
    fn, mod = lowered("sinusoidal_pe", [(2, 7, 8)], 64)
    assert mod is None  # no parameters, no buffers
    x = torch.randn(2, 7, 8)
    torch.testing.assert_close(fn(x), x + vaswani(7, 8))
    cache = rt.KVCache()
    torch.testing.assert_close(torch.cat([fn(x[:, :3], cache), fn(x[:, 3:], cache)], dim=1), fn(x))


def test_sinusoidal_pe_odd_width():
    fn, _ = lowered("sinusoidal_pe", [(1, 4, 7)], 64)
    pos = torch.arange(4.0)[:, None]
    div = torch.exp(torch.arange(0, 7, 2) * (-math.log(10000.0) / 7))
    ref = torch.zeros(4, 7)
    ref[:, 0::2], ref[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div[:3])
    torch.testing.assert_close(fn(torch.zeros(1, 4, 7))[0], ref)


def test_sinusoidal_pe_errors():
    fails("E0304", "sinusoidal_pe", [(2, 65, 8)], 64)
    fails("E0302", "sinusoidal_pe", [(2, 8)], 64)


# -- rope ----------------------------------------------------------------------------------------

def hf_rope(x4, base, start=0):
    """transformers' Llama rotary embedding of [B, H, T, Dh] at positions start..start+T-1."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    b, h, t, dh = x4.shape
    cfg = LlamaConfig(hidden_size=h * dh, num_attention_heads=h, rope_theta=base, max_position_embeddings=64)
    pos = torch.arange(start, start + t)[None].expand(b, -1)
    cos, sin = LlamaRotaryEmbedding(cfg)(x4, pos)
    return apply_rotary_pos_emb(x4, x4, cos, sin)[0]


@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_rope_rank4_matches_transformers(base):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 8)
    check("rope", [(2, 4, 6, 8)], base)
    fn, _ = lowered("rope", [(2, 4, 6, 8)], base)
    torch.testing.assert_close(fn(x), hf_rope(x, base), atol=1e-5, rtol=1e-5)


def test_rope_rank3_with_heads_matches_transformers():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 32)
    check("rope", [(2, 6, 32)], heads=4)
    fn, _ = lowered("rope", [(2, 6, 32)], heads=4)
    want = hf_rope(x.view(2, 6, 4, 8).transpose(1, 2), 10000.0).transpose(1, 2).reshape(2, 6, 32)
    torch.testing.assert_close(fn(x), want, atol=1e-5, rtol=1e-5)
    # without heads, the whole width is one head
    fn1, _ = lowered("rope", [(2, 6, 32)])
    torch.testing.assert_close(fn1(x), hf_rope(x[:, None], 10000.0)[:, 0], atol=1e-5, rtol=1e-5)


def test_rope_offsets_by_cache():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 8)
    fn, _ = lowered("rope", [(1, 2, 5, 8)])
    cache = rt.KVCache()
    parts = [fn(x[:, :, :3], cache), fn(x[:, :, 3:4], cache), fn(x[:, :, 4:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=2), fn(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(parts[1], hf_rope(x[:, :, 3:4], 10000.0, start=3), atol=1e-5, rtol=1e-5)


def test_rope_errors():
    fails("E0303", "rope", [(2, 6, 30)], heads=4)   # heads do not divide D
    fails("E0303", "rope", [(2, 6, 12)], heads=4)   # odd head size
    fails("E0303", "rope", [(2, 4, 6, 7)])
    fails("E0302", "rope", [(6, 8)])
    fails("E0207", "rope", [(2, 6, 8)], 0.0)


# -- cls_token -------------------------------------------------------------------------------------

def test_cls_token():
    assert infer("cls_token", [(B, T, 8)])[0].shape == (B, T + 1, 8)
    op, a = make("cls_token")
    assert op.params(a, [TensorType((B, 4, 8))]) == {"": (1, 1, 8)}
    fails("E0302", "cls_token", [(2, 8)])
    prog = archc.parse("model M() {\n input x: float32[B, 4, 8]\n output y = x -> class_token: cls_token\n}\n")
    net = prog.build()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {"class_token": (1, 1, 8)}
    with torch.no_grad():
        net.class_token.normal_()
    x = torch.randn(3, 4, 8)
    y = net(x)
    assert y.shape == (3, 5, 8)
    torch.testing.assert_close(y[:, 1:], x)
    torch.testing.assert_close(y[:, 0], net.class_token[0].expand(3, -1))
    assert prog.check().params == 8


# -- a whole ViT: torch layout, class token and position table, weights from torchvision -------------

VIT = """
block EncoderBlock(x, heads: int, mlp_dim: int) {
    d = x.shape[-1]
    x = (x -> ln_1: layernorm(eps=1e-6) -> self_attention: mha(heads, layout="torch") -> dropout(0.0)) + x
    return (x -> ln_2: layernorm(eps=1e-6)
              -> mlp: [linear(mlp_dim), gelu, dropout(0.0), linear(d), dropout(0.0)]) + x
}

block Encoder(x, layers: int, heads: int, mlp_dim: int) {
    x = x -> pos_embedding: learned_pe(x.shape[1], layout="param") -> dropout(0.0)
    x = x -> layers: [EncoderBlock(heads, mlp_dim) * layers]
    return x -> ln: layernorm(eps=1e-6)
}

model ViT(classes: int = 10) {
    input x: float32[B, 3, 32, 32]
    x = x -> conv_proj: conv(32, 8, stride=8) -> flatten(2) -> transpose(1, 2)
          -> class_token: cls_token -> encoder: Encoder(2, 4, 64)
    cls, rest = x -> split([1, 16], dim=1)
    output logits = cls -> flatten(1) -> heads: Heads(classes)
}

block Heads(x, classes: int) {
    return x -> head: linear(classes)
}
"""


def test_vit_loads_torchvision_weights():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                                      mlp_dim=64, num_classes=10).eval()
    with torch.no_grad():
        ref.class_token.normal_()
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    net = archc.parse(VIT).build().eval()
    # torchvision names the encoder layers encoder_layer_0, ...; the spec numbers them
    sd = {k.replace("layers.encoder_layer_", "layers."): v for k, v in ref.state_dict().items()}
    assert sorted(net.state_dict()) == sorted(sd)
    net.load_state_dict(sd)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), ref(x), atol=1e-5, rtol=1e-5)
    assert archc.parse(VIT).check().params == sum(p.numel() for p in ref.parameters())
