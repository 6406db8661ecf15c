"""archc.runtime.lora: LoRA layers against hand-written formulas and against PEFT's own layers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from archc.runtime import modules as rt
from archc.runtime.lora import (LoRAConv, LoRAEmbedding, LoRALinear, adapt, adapter_state_dict, load_base,
                                lora_layers, merge, merged_state_dict, set_adapter, unmerge)


def _randomise(layer, std=0.1):
    """Give the adapters non-zero weights (B starts at zero)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "lora" in name:
                p.normal_(0, std)


def test_lora_linear_is_base_plus_scaled_low_rank_update():
    torch.manual_seed(0)
    layer = LoRALinear(12, 20).add_adapter("default", r=4, alpha=8)
    _randomise(layer)
    x = torch.randn(3, 5, 12)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    want = x @ layer.weight.T + layer.bias + (x @ A.T @ B.T) * (8 / 4)
    torch.testing.assert_close(layer(x), want)
    assert [k for k in layer.state_dict()] == ["weight", "bias", "lora_A.default.weight", "lora_B.default.weight"]


def test_transposed_layout_matches_gpt2_conv1d():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    ref = Conv1D(36, 12)
    torch.nn.init.normal_(ref.bias)
    layer = adapt(ref, "default", 4, alpha=16)
    assert isinstance(layer, LoRALinear) and layer.fan_in_fan_out and layer.weight is ref.weight
    x = torch.randn(2, 3, 12)
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=0)  # fresh: exactly the base
    _randomise(layer)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    torch.testing.assert_close(layer(x), ref(x) + x @ A.T @ B.T * 4)


@pytest.mark.parametrize("make", [
    lambda: LoRALinear(16, 24).add_adapter("default", 4, 8),
    lambda: LoRALinear(16, 24, fan_in_fan_out=True).add_adapter("default", 4, 8),
    lambda: LoRALinear(16, 24).add_adapter("default", 4, 8, dora=True),
    lambda: LoRALinear(16, 24, fan_in_fan_out=True).add_adapter("default", 4, 8, dora=True, rslora=True),
    lambda: LoRAEmbedding(30, 16).add_adapter("default", 4, 8),
    lambda: LoRAConv(3, 8, 3, padding=1).add_adapter("default", 2, 4),
    lambda: LoRAConv(3, 8, 1, stride=2, dims=1).add_adapter("default", 2, 4),
], ids=["linear", "transposed", "dora", "dora-transposed-rslora", "embedding", "conv2d", "conv1d-1x1"])
def test_fresh_adapter_changes_nothing_and_merge_equals_unmerged(make):
    torch.manual_seed(0)
    layer = make().eval()
    if isinstance(layer, LoRAEmbedding):
        x = torch.randint(0, 30, (2, 7))
    elif isinstance(layer, LoRAConv):
        x = torch.randn(2, 3, 9, 9) if layer.dims == 2 else torch.randn(2, 3, 9)
    else:
        x = torch.randn(2, 7, 16)
    plain = layer._base(x) if not isinstance(layer, LoRAEmbedding) else layer._embed(x, layer.weight)
    assert torch.equal(layer(x), plain)  # a freshly initialised adapter changes nothing, exactly
    _randomise(layer)
    w0 = layer.weight.detach().clone()
    y = layer(x)
    assert not torch.allclose(y, plain)
    layer.merge()
    assert layer.merged and not torch.equal(layer.weight, w0)
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.weight, w0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)


def test_rslora_scaling():
    layer = LoRALinear(8, 8).add_adapter("a", r=4, alpha=8, rslora=True)
    assert layer.scaling["a"] == 8 / math.sqrt(4)


def test_several_adapters_first_is_active_and_set_adapter_switches():
    torch.manual_seed(0)
    layer = LoRALinear(8, 8).add_adapter("a", 2, 4).add_adapter("b", 3, 6)
    _randomise(layer)
    assert layer.active_adapters == ["a"]
    assert all(p.requires_grad for p in layer.lora_A["a"].parameters())
    assert not any(p.requires_grad for p in layer.lora_A["b"].parameters())
    x = torch.randn(4, 8)

    def with_(name):
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
        return layer._base(x) + x @ A.T @ B.T * layer.scaling[name]

    torch.testing.assert_close(layer(x), with_("a"))
    layer.set_adapter("b")
    torch.testing.assert_close(layer(x), with_("b"))
    assert not layer.lora_B["a"].weight.requires_grad and layer.lora_B["b"].weight.requires_grad
    with pytest.raises(ValueError, match="already has an adapter"):
        layer.add_adapter("b", 2)


def test_tied_weights_are_never_merged():
    emb = nn.Embedding(10, 8)
    head = nn.Linear(8, 10, bias=False)
    head.weight = emb.weight
    layer = adapt(head, "default", 2, tied=True)
    assert layer.weight is emb.weight  # the base parameter object is adopted, not copied
    with pytest.raises(RuntimeError, match="tied"):
        layer.merge()


def _peft_pair(base: nn.Module, **config):
    """Our layer and PEFT's around copies of the same base module, with equal adapters."""
    import copy

    from peft import LoraConfig, get_peft_model

    class Wrap(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    peft_model = get_peft_model(Wrap(copy.deepcopy(base)), LoraConfig(target_modules=["m"], **config))
    ours = adapt(copy.deepcopy(base), "default", config["r"], alpha=config["lora_alpha"],
                 rslora=config.get("use_rslora", False), dora=config.get("use_dora", False))
    layer = peft_model.base_model.model.m
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora" in name:
                p.normal_(0, 0.1)
        theirs = dict(layer.named_parameters())
        for name, p in ours.named_parameters():
            key = {"weight": "base_layer.weight", "bias": "base_layer.bias"}.get(name, name)
            theirs[key].copy_(p)
    return ours.eval(), peft_model.eval()


@pytest.mark.parametrize("base,config,x", [
    (nn.Linear(16, 24), dict(r=4, lora_alpha=8), (3, 16)),
    (nn.Linear(16, 24), dict(r=4, lora_alpha=8, use_dora=True), (3, 16)),
    (nn.Linear(16, 24), dict(r=4, lora_alpha=8, use_rslora=True), (3, 16)),
    (nn.Embedding(20, 8), dict(r=4, lora_alpha=8), None),
    (nn.Conv2d(3, 6, 3, padding=1), dict(r=2, lora_alpha=4), (2, 3, 8, 8)),
], ids=["linear", "dora", "rslora", "embedding", "conv2d"])
def test_same_outputs_and_merges_as_peft(base, config, x):
    torch.manual_seed(0)
    ours, theirs = _peft_pair(base, **config)
    x = torch.randint(0, 20, (2, 5)) if x is None else torch.randn(*x)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    ours.merge()
    merged = theirs.merge_and_unload()
    torch.testing.assert_close(ours.weight, merged.m.weight, rtol=1e-5, atol=1e-5)


def test_model_level_helpers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), rt.TransposedLinear(8, 4))
    net[0] = adapt(net[0], "default", 2)
    net[2] = adapt(net[2], "default", 2)
    net[2] = adapt(net[2], "other", 2)
    for _, m in lora_layers(net):
        _randomise(m)
    x = torch.randn(5, 6)
    y = net(x)
    base = merged_state_dict(net)
    assert set(base) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), rt.TransposedLinear(8, 4))
    plain.load_state_dict(base)
    torch.testing.assert_close(plain(x), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(x), y)  # left unmerged
    assert set(adapter_state_dict(net, "other")) == {"2.lora_A.other.weight", "2.lora_B.other.weight"}
    set_adapter(net, "other")
    assert not torch.allclose(net(x), y)
    merge(net)
    unmerge(net)
    result = load_base(net, plain.state_dict())
    assert not result.unexpected_keys
