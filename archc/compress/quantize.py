"""Quantization plans lowered to the APIs current in the installed PyTorch.

- dynamic (weights int8 or int4, activations quantized on the fly): torchao's
  `quantize_` with `Int8DynamicActivationInt8WeightConfig` (int8; per output
  channel = `PerRow`, per tensor = `PerTensor`) or `IntxWeightOnlyConfig(int4)`
  (weight-only, groups of 32) on linear layers; recurrent layers (lstm, gru, rnn),
  which torchao does not cover, through torch's dynamic quantized LSTM/GRU
  (`torch.ao.nn.quantized.dynamic`, deprecated but the only int8 recurrent kernel
  the installed torch has);
- static (post-training) and qat: PT2E. `torch.export` with a dynamic batch
  dimension, torchao's `prepare_pt2e` / `prepare_qat_pt2e` with the x86 inductor
  quantizer (per-channel weights, or a per-tensor config), calibration on the plan's
  data (or fine-tuning through the one training loop for QAT), `convert_pt2e`, then
  lowering to oneDNN's int8 kernels (`onednn.qconv_pointwise`...) with the dynamic
  batch kept. When lowering fails the reference (quantize/dequantize) graph runs.

The traps: archc lowers stateless ops as functions, so no module is called at two
sites (PT2E needs that); a GPT-2-style `linear(transposed=true)` (rt.TransposedLinear)
is swapped for an equivalent nn.Linear first, so it is quantized as a linear; the
converted graph keeps the float weights it no longer reads as attributes: only the
tensors its graph reads are live (`QuantResult.tensors`), counted and saved.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, field
import torch
from torch import nn

from ..compiler.ir import Graph
from ..compiler.ops import REGISTRY
from ..compiler.selectors import select
from .check import KERNELS, quantizable


@dataclass
class QuantResult:
    model: nn.Module  # runs the quantized network
    quantized: list[tuple[str, str, str]] = field(default_factory=list)  # (path, op, how)
    left: list[tuple[str, str, str]] = field(default_factory=list)  # (path, op, why it stays in float)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # the live tensors, to count and save
    schemes: dict[str, str] = field(default_factory=dict)  # tensor name -> how it is stored
    engine: str = ""
    notes: list[str] = field(default_factory=list)
    dead_bytes: int = 0  # float weights the converted graph still holds but never reads (not counted)


@contextlib.contextmanager
def _quiet():
    """torch.ao's and torchao's deprecation chatter is not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _swap_transposed(model: nn.Module, paths: list[str]) -> None:
    """rt.TransposedLinear -> nn.Linear with the weight transposed (same function, a kernel exists)."""
    from ..runtime.modules import TransposedLinear

    for p in paths:
        mod = model.get_submodule(p)
        if isinstance(mod, TransposedLinear):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.t())
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            _set(model, p, lin)


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    owner._modules[leaf] = new


def plan_nodes(graph: Graph, mode: str, on: str | None, exclude: str | None):
    """(selected quantizable nodes, float nodes with why) for a quantize directive."""
    sel = select(graph, on or "*", exclude, what="quantize selector").nodes
    chosen, left = [], []
    for n in graph.nodes():
        if n.op in ("input", "output") or n.shared:
            continue
        has_w = bool(REGISTRY[n.op].params(n.attrs, graph.in_types(n.id)))
        if n.id in sel and quantizable(graph, n.id, mode):
            chosen.append(n)
        elif has_w or n.op in KERNELS[mode]:
            if n.op in KERNELS[mode] and n.id not in sel:
                why = "not selected by the plan"
            elif n.op == "bn" and mode != "dynamic":
                why = "batch norm: folded into the convolution before it (or kept in float)"
            elif n.op == "conv" and mode != "dynamic":
                why = "only 2-D convolutions have int8 kernels here"
            else:
                why = f"`{n.op}` has no {mode} int8 kernel"
            left.append((n.path, n.op, why))
    return chosen, left


# -- live tensors --------------------------------------------------------------------------

def _flatten(name: str, t: torch.Tensor, out: dict, schemes: dict, scheme: str = "") -> None:
    """A tensor as the plain tensors it stores: a torchao tensor subclass by its inner tensors,
    a quantized torch tensor by its integers, scales and zero points."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, ctx = t.__tensor_flatten__()
        kind = type(t).__name__
        for n in names:
            _flatten(f"{name}.{n}", getattr(t, n), out, schemes, f"{kind}.{n}")
        return
    if t.is_quantized:
        out[f"{name}.int"] = t.int_repr()
        schemes[f"{name}.int"] = str(t.qscheme())
        zp_dtype = torch.uint8 if t.dtype == torch.quint8 else torch.int8 if t.dtype == torch.qint8 else torch.int32
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out[f"{name}.scale"] = t.q_per_channel_scales().float()
            out[f"{name}.zero_point"] = t.q_per_channel_zero_points().to(zp_dtype)
        else:
            out[f"{name}.scale"] = torch.tensor([t.q_scale()], dtype=torch.float32)
            out[f"{name}.zero_point"] = torch.tensor([t.q_zero_point()], dtype=zp_dtype)
        return
    out[name] = t.detach()
    if scheme:
        schemes[name] = scheme


def live_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors a model holds that its computation reads, each storage once.

    For an exported graph (PT2E), only attributes its graph reads; quantized modules by
    their stored integers and scales; a tied weight once (under its first name)."""
    out: dict[str, torch.Tensor] = {}
    schemes: dict[str, str] = {}
    if isinstance(model, torch.fx.GraphModule):
        names = _pt2e_names(model)
        for node in model.graph.nodes:
            if node.op == "get_attr":
                t = _getattr(model, node.target)
                if isinstance(t, torch.Tensor):
                    _flatten(names.get(node.target, node.target), t, out, schemes)
                elif hasattr(t, "__getstate__"):  # a packed oneDNN weight: opaque, keep its tensors
                    for i, s in enumerate(_tensors_in(t.__getstate__())):
                        _flatten(f"{node.target}.{i}", s, out, schemes)
    else:
        for mod_name, mod in model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            if hasattr(mod, "_weight_bias") and hasattr(mod, "_all_weight_values"):  # dynamic quantized RNN
                wb = mod._weight_bias()
                for kind in ("weight", "bias"):
                    for k, v in wb[kind].items():
                        if isinstance(v, torch.Tensor):
                            _flatten(prefix + k, v, out, schemes)
                continue
            if hasattr(mod, "_packed_params") and hasattr(mod._packed_params, "_weight_bias"):
                w, b = mod._packed_params._weight_bias()
                _flatten(prefix + "weight", w, out, schemes)
                if b is not None:
                    _flatten(prefix + "bias", b, out, schemes)
                continue
            for pname, p in list(mod._parameters.items()) + list(mod._buffers.items()):
                if p is None:
                    continue
                _flatten(prefix + pname, p, out, schemes)
    # each storage once (tied weights, shared modules)
    seen: dict[tuple, str] = {}
    unique: dict[str, torch.Tensor] = {}
    for k, v in out.items():
        if v.is_quantized or v.layout != torch.strided:
            unique[k] = v
            continue
        try:
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype) if v.numel() else (k,)
        except (NotImplementedError, RuntimeError):  # opaque: cannot be shared
            key = (k,)
        if key in seen:
            continue
        seen[key] = k
        unique[k] = v
    return unique, {k: s for k, s in schemes.items() if k in unique}


_WEIGHT_USERS = ("conv2d", "linear", "conv1d", "conv3d")


def _module_path(node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "") or None


def _pt2e_names(gm) -> dict[str, str]:
    """Readable names for a converted graph's attributes: `c1.weight.qdata`, `c1.weight.scale`,
    `c1.weight.zero_point`, `c1.bias` (what they are to the layer that reads them)."""
    names: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or not any(u in str(node.target) for u in _WEIGHT_USERS):
            continue
        path = _module_path(node)
        if path is None:
            continue
        w = node.args[1] if len(node.args) > 1 else None
        b = node.args[2] if len(node.args) > 2 else None
        if isinstance(w, torch.fx.Node) and "dequantize" in str(w.target):
            for arg, role in zip(w.args[:3], ("qdata", "scale", "zero_point")):
                if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
                    names[arg.target] = f"{path}.weight.{role}"
        if isinstance(b, torch.fx.Node) and b.op == "get_attr":
            names[b.target] = f"{path}.bias"
    return names


def _getattr(model, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _tensors_in(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors_in(x)]
    return []


# -- dynamic -------------------------------------------------------------------------------

class _StackedLSTM(nn.Module):
    """A dynamic quantized LSTM with archc's contract: `forward(x, state) -> (out, stacked (h, c))`."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, state=None):
        hx = None if state is None else (state[0], state[1])
        out, (h, c) = self.inner(x, hx)
        return out, torch.stack((h, c))


def quantize_dynamic(model: nn.Module, graph: Graph, *, on: str | None = None, exclude: str | None = None,
                     dtype: str = "int8", granularity: str = "channel") -> QuantResult:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup, PerRow, PerTensor

    model = copy.deepcopy(model).eval()
    chosen, left = plan_nodes(graph, "dynamic", on, exclude)
    res = QuantResult(model, left=left)
    linears = [n for n in chosen if n.op == "linear"]
    rnns = [n for n in chosen if n.op in ("lstm", "gru", "rnn")]
    _swap_transposed(model, [n.path for n in linears if n.attrs.transposed])
    targets = {n.path for n in linears}
    with _quiet():
        if targets:
            if dtype == "int4":
                cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                           granularity=PerGroup(32) if granularity == "channel" else PerAxis(0))
                how = "int4 weights (groups of 32)" if granularity == "channel" else "int4 weights per channel"
                res.engine = "torchao quantize_(IntxWeightOnlyConfig(int4))"
            else:
                cfg = Int8DynamicActivationInt8WeightConfig(
                    granularity=PerRow() if granularity == "channel" else PerTensor())
                how = f"dynamic int8, per {'channel' if granularity == 'channel' else 'tensor'}"
                res.engine = "torchao quantize_(Int8DynamicActivationInt8WeightConfig)"
            tied = {n.path for n in linears if n.attrs.tie}
            for n in linears:
                if n.attrs.tie:
                    # a quantized copy of a tied weight: the embedding keeps the float one
                    lin = model.get_submodule(n.path)
                    lin.weight = nn.Parameter(lin.weight.detach().clone())
            quantize_(model, cfg, filter_fn=lambda m, fqn: fqn in targets and isinstance(m, nn.Linear))
            for n in linears:
                res.quantized.append((n.path, "linear", how + ("; transposed (GPT-2 Conv1D) as a linear"
                                                               if n.attrs.transposed else "")
                                      + ("; tied: a quantized copy, the embedding stays float" if n.path in tied
                                         else "")))
        if rnns:
            from torch.ao.nn.quantized import dynamic as nnqd
            from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

            if dtype == "int4":
                for n in rnns:
                    res.left.append((n.path, n.op, "recurrent layers have no int4 kernel"))
            else:
                for n in rnns:
                    mod = model.get_submodule(n.path)
                    base = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[n.op]
                    if n.op == "rnn":
                        res.left.append((n.path, n.op, "torch has no dynamic int8 kernel for a plain RNN"))
                        continue
                    plain = base(mod.input_size, mod.hidden_size, num_layers=mod.num_layers, bias=mod.bias,
                                 batch_first=mod.batch_first, dropout=mod.dropout, bidirectional=mod.bidirectional)
                    plain.load_state_dict(mod.state_dict())
                    plain.qconfig = per_channel_dynamic_qconfig if granularity == "channel" else \
                        default_dynamic_qconfig
                    q = (nnqd.LSTM if n.op == "lstm" else nnqd.GRU).from_float(plain)
                    _set(model, n.path, _StackedLSTM(q) if n.op == "lstm" else q)
                    res.quantized.append((n.path, n.op, f"dynamic int8 (torch.ao.nn.quantized.dynamic.{base.__name__})"))
                res.notes.append("recurrent layers use torch.ao.nn.quantized.dynamic: torchao has no recurrent "
                                 "kernels, and torch's are deprecated")
    res.tensors, res.schemes = live_tensors(model)
    if dtype == "int4":
        res.notes.append("int4 weights are held unpacked (one per byte) at run time; saved packed two per byte")
    return res


# -- static and QAT (PT2E) -----------------------------------------------------------------

def _qconfig(granularity: str, qat: bool):
    from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, MinMaxObserver,
                                           MovingAverageMinMaxObserver)
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import \
        get_default_x86_inductor_quantization_config

    cfg = get_default_x86_inductor_quantization_config(is_qat=qat)
    if granularity == "channel":
        return cfg
    extra = {"eps": 2 ** -12}
    if qat:
        ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **extra)
    else:
        ctr = MinMaxObserver.with_args(**extra)
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                              is_dynamic=False, observer_or_fake_quant_ctr=ctr)
    return QuantizationConfig(cfg.input_activation, cfg.output_activation, weight, cfg.bias, qat)


def _example_and_dynamic(example: tuple[torch.Tensor, ...]):
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1 << 16)
    return tuple({0: batch} for _ in example)


def _lower(model, example):
    """PT2E's x86 lowering (torchao.quantization.pt2e.lowering) with the batch left dynamic."""
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    decomp = torch.export.default_decompositions()
    for k in list(decomp.keys()):
        if not torch._export.utils._is_cia_op(k):
            del decomp[k]
    low = torch.export.export(model, example, dynamic_shapes=_example_and_dynamic(example), strict=True) \
        .run_decompositions(decomp).module()
    g = low.graph
    for node in list(g.nodes):
        if node.target == torch.ops.aten.view.default:  # oneDNN outputs may be channels-last
            node.target = torch.ops.aten.reshape.default
            continue
        if node.target == torch.ops.aten.t.default:
            with g.inserting_before(node):
                perm = g.call_function(torch.ops.aten.permute.default, args=(node.args[0], [1, 0]))
            node.replace_all_uses_with(perm)
            g.erase_node(node)
    g.lint()
    low.recompile()
    freezing_passes(low, example)
    constant_fold(low)
    return low


def _quantized_paths(converted) -> set[str]:
    """Module paths whose conv/linear reads a dequantized weight in the converted graph."""
    out = set()
    for node in converted.graph.nodes:
        if node.op != "call_function" or node.target not in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            continue
        w = node.args[1] if len(node.args) > 1 else None
        if isinstance(w, torch.fx.Node) and "dequantize" in str(w.target):
            path = _module_path(node)
            if path:
                out.add(path)
    return out


def quantize_pt2e(model: nn.Module, graph: Graph, example: tuple[torch.Tensor, ...], *, mode: str = "static",
                  on: str | None = None, exclude: str | None = None, granularity: str = "channel",
                  calibrate=None, train=None) -> QuantResult:
    """Static post-training quantization (`calibrate(prepared)` feeds it data) or QAT
    (`train(prepared)` fine-tunes it) through PT2E; returns the lowered model."""
    from torch.export import export
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    qat = mode == "qat"
    model = copy.deepcopy(model)
    chosen, left = plan_nodes(graph, mode, on, exclude)
    _swap_transposed(model, [n.path for n in chosen if n.op == "linear" and n.attrs.transposed])
    model.train(qat)
    quantizer = X86InductorQuantizer()
    cfg = _qconfig(granularity, qat)
    all_q = {n.path for n in graph.nodes() if quantizable(graph, n.id, mode) and not n.shared}
    targets = {n.path for n in chosen}
    if targets == all_q:
        quantizer.set_global(cfg)
    else:
        for p in sorted(targets):
            quantizer.set_module_name_qconfig(p, cfg)
    res = QuantResult(model, left=left)
    with _quiet():
        exported = export(model, example, dynamic_shapes=_example_and_dynamic(example)).module()
        if qat:
            prepared = prepare_qat_pt2e(exported, quantizer)
            allow_exported_model_train_eval(prepared)
            if train is not None:
                train(prepared)
        else:
            prepared = prepare_pt2e(exported, quantizer)
            allow_exported_model_train_eval(prepared)
            if calibrate is not None:
                with torch.no_grad():
                    calibrate(prepared)
        converted = convert_pt2e(prepared)
        allow_exported_model_train_eval(converted)
        converted.eval()
        done = _quantized_paths(converted)
        how = f"{'QAT' if qat else 'static'} int8, weights per {granularity}, activations per tensor (uint8)"
        for n in chosen:
            if n.path in done:
                res.quantized.append((n.path, n.op, how))
            else:
                res.left.append((n.path, n.op, "the quantizer found no int8 pattern for it"))
        res.tensors, res.schemes = live_tensors(converted)
        res.dead_bytes = dead_float_bytes(converted)
        try:
            low = _lower(converted, tuple(x[:2] for x in example))
            allow_exported_model_train_eval(low)
            res.model = low
            res.engine = (f"PT2E: torch.export (dynamic batch) -> torchao {'prepare_qat_pt2e' if qat else 'prepare_pt2e'}"
                          " (X86InductorQuantizer) -> convert_pt2e -> oneDNN int8 kernels")
        except Exception as e:  # noqa: BLE001 - the reference graph still runs, slower
            res.model = converted
            res.engine = "PT2E (reference quantize/dequantize graph: lowering to oneDNN failed)"
            res.notes.append(f"lowering failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); the "
                             "latency is the reference graph's")
    return res


def dead_float_bytes(converted: torch.fx.GraphModule) -> int:
    """Bytes of attributes an exported graph holds but never reads (what must not be counted)."""
    live, _ = live_tensors(converted)
    def ptr(t):
        try:
            return t.untyped_storage().data_ptr()
        except (NotImplementedError, RuntimeError):  # an opaque (packed oneDNN) tensor
            return None

    live_ptrs = {ptr(v) for v in live.values()}
    dead = 0
    for _, t in list(converted.named_parameters()) + list(converted.named_buffers()):
        p = ptr(t)
        if p is not None and p not in live_ptrs:
            dead += t.numel() * t.element_size()
    return dead

