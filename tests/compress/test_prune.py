"""Structured and unstructured pruning: parity with Torch-Pruning, numerical equivalence, honest sizes."""
from __future__ import annotations

import pytest
import torch

import archc
from archc.compiler.lower.torch import build_module
from archc.compress.prune import (importance, make_permanent, prune_structured, prune_unstructured, selected_nodes,
                                  weight_params, zero_removed)
from archc.compress.quantize import live_tensors
from archc.compress.size import count_parameters, nonzero_parameters, to_bytes
from archc.compress.spec import write_spec
from tests.compress.specs import ALL, RESIDUAL, TIED

RESNET18_PARAMS = 11_689_512
RESNET18_PRUNED = 3_055_880  # Torch-Pruning's MagnitudePruner, p=2, ratio 0.5, fc ignored


def _input(graph, batch=3):
    t = graph.node(graph.inputs[0]).outputs[0]
    return torch.randn(batch, *t.shape[1:])


@pytest.mark.parametrize("name", list(ALL))
def test_pruned_network_computes_the_zeroed_one(name):
    """Pruning regenerates the forward from the IR: the smaller network's output equals the
    unpruned network's with the removed channels zeroed (add, concat, split, chunk, shuffle,
    depthwise and grouped convolution, attention heads, linear after flatten)."""
    torch.manual_seed(0)
    graph = archc.parse(ALL[name]).graph()
    net = build_module(graph).eval()
    on = "op:linear" if name == "attention heads" else "op:conv,op:linear"
    res = prune_structured(graph, net.state_dict(), on=on, amount=0.5, criterion="l2")
    assert res.removed
    small = build_module(res.graph).eval()
    small.load_state_dict(res.state_dict)  # strict: every sliced tensor has its new shape
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    zero_removed(net, res.analysis, res.removed)
    x = _input(graph)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(ALL))
def test_pruned_spec_rebuilds_the_same_paths(name):
    graph = archc.parse(ALL[name]).graph()
    net = build_module(graph)
    on = "op:linear" if name == "attention heads" else "op:conv,op:linear"
    res = prune_structured(graph, net.state_dict(), on=on, amount=0.5)
    text = write_spec(res.graph)
    again = archc.parse(text).build()
    again.load_state_dict(res.state_dict)  # the same module paths, the new widths
    assert sorted(n.path for n in archc.parse(text).graph().nodes()) == sorted(n.path for n in res.graph.nodes())


@pytest.mark.slow
def test_resnet18_matches_torch_pruning():
    """50% per-layer channel pruning, L2 magnitude, classifier left alone: Torch-Pruning's count."""
    tp = pytest.importorskip("torch_pruning")
    torchvision = pytest.importorskip("torchvision")
    prog = archc.load("archc/specs/resnet.arch")
    graph = prog.graph("ResNet18")
    torch.manual_seed(0)
    net = build_module(graph)
    assert sum(p.numel() for p in net.parameters()) == RESNET18_PARAMS
    res = prune_structured(graph, net.state_dict(), on="op:conv,op:linear", exclude="fc", amount=0.5, criterion="l2")
    small = build_module(res.graph).eval()
    small.load_state_dict(res.state_dict)
    assert sum(p.numel() for p in small.parameters()) == RESNET18_PRUNED
    with torch.no_grad():
        assert small(torch.randn(1, 3, 64, 64)).shape == (1, 1000)  # still runs

    ref = torchvision.models.resnet18()
    pruner = tp.pruner.MagnitudePruner(ref, torch.randn(1, 3, 32, 32),
                                       importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[ref.fc])
    pruner.step()
    assert sum(p.numel() for p in ref.parameters()) == RESNET18_PRUNED
    # and layer by layer: the same widths under the same names
    ours = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours == theirs


def test_global_scope_and_criteria():
    graph = archc.parse(RESIDUAL).graph()
    torch.manual_seed(0)
    net = build_module(graph)
    for crit in ("l1", "l2", "bn_scale"):
        res = prune_structured(graph, net.state_dict(), amount=0.25, scope="global", criterion=crit)
        assert len(res.removed) == int((16 + 12) * 0.25)
    # taylor needs gradients
    x = _input(graph, 4)
    net(x).sum().backward()
    grads = {k: p.grad for k, p in net.named_parameters()}
    scores = importance(res.analysis, net.state_dict(), "taylor", grads)
    assert scores and all(v >= 0 for v in scores.values())


def test_exclude_keeps_a_group():
    graph = archc.parse(RESIDUAL).graph()
    net = build_module(graph)
    res = prune_structured(graph, net.state_dict(), on="op:conv", exclude="stem", amount=0.5)
    widths = {n.path: n.attrs.out for n in res.graph.nodes() if n.op == "conv"}
    assert widths == {"stem": 16, "c1": 6, "c2": 16}


def test_unstructured_masks_are_not_savings_until_permanent():
    graph = archc.parse(RESIDUAL).graph()
    torch.manual_seed(0)
    net = build_module(graph)
    dense, _ = live_tensors(net)
    sel, ex = selected_nodes(graph, "op:conv", None)
    zeroed = prune_unstructured(net, weight_params(graph, sel), 0.5)
    masked, _ = live_tensors(net)
    assert any(k.endswith("weight_mask") for k in masked)
    assert count_parameters(masked) == count_parameters(dense)  # weight_orig: still every value
    assert len(to_bytes(masked)) > len(to_bytes(dense))  # the masks cost bytes
    make_permanent(net)
    final, _ = live_tensors(net)
    assert not any("mask" in k or "orig" in k for k in final)
    assert count_parameters(final) == count_parameters(dense)
    assert count_parameters(final) - nonzero_parameters(final) >= zeroed
    assert abs(len(to_bytes(final)) - len(to_bytes(dense))) < 512  # dense zeros are no smaller


def test_tied_weights_count_once():
    graph = archc.parse(TIED).graph()
    net = build_module(graph)
    tensors, _ = live_tensors(net)
    assert count_parameters(tensors) == sum(p.numel() for p in net.parameters())
    assert len([k for k in tensors if k.endswith("weight") and tensors[k].shape == (50, 16)]) == 1
    # pruning the tied embedding's width slices both uses of the one weight
    res = prune_structured(graph, net.state_dict(), on="op:linear,op:embedding", amount=0.5)
    small = build_module(res.graph)
    small.load_state_dict(res.state_dict)
    assert small.lm_head.weight is small.wte.weight
