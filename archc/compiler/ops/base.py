"""The op interface and registry.

An op is defined once, as a subclass of `Op`, with everything every pass needs:
its attributes (a pydantic model; field order is the positional order users
write), how many tensors it takes, its shape rule, its parameter and buffer
shapes, its FLOPs and its PyTorch lowering. Passes only ever call these
methods, so adding an op never means editing a pass.

Ops must not import torch: lowering names PyTorch objects by dotted strings
(`"nn.Conv2d"`, with `nn`, `F`, `torch` and `rt` = archc.runtime.modules
available to generated code).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..dims import Dim
from ..ir import TensorType


class RuntimeClass:
    """A class of archc.runtime named without importing it (archc.runtime imports torch;
    ops never do). Lowering reads `__module__` and `__qualname__` and writes an import into
    the generated source; calling the object imports the real class and instantiates it."""

    def __init__(self, module: str, qualname: str):
        self.__module__ = module
        self.__qualname__ = qualname

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module(self.__module__), self.__qualname__)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{self.__module__}.{self.__qualname__}"

    def __eq__(self, other) -> bool:
        return isinstance(other, RuntimeClass) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class Attrs(BaseModel):
    """Base of every op's attribute model: immutable, no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class NoAttrs(Attrs):
    pass


class ShapeError(Exception):
    """Raised by a shape rule; the compiler attaches the node's span and call chain."""

    def __init__(self, code: str, message: str, label: str = "", help: str | None = None):
        super().__init__(message)
        self.code, self.message, self.label, self.help = code, message, label, help


@dataclass
class Module:
    """Lower to a module built in `__init__` at the node's path and called in `forward`.

    `target` is a class or a dotted name (`"nn.Conv2d"`); `call` is the forward
    expression, `{m}` the module and `{0}`, `{1}`... (or `{*}` for all) the inputs;
    `{cache}` is the key/value cache passed to `forward` (or None) and `{key}`
    the node's path as a string, for ops that keep state across decoding steps.
    """

    target: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    call: str = "{m}({*})"
    # Parameters that are another module's: attribute -> `path.param` (weight tying).
    ties: dict = field(default_factory=dict)


@dataclass
class Param:
    """Lower to a bare nn.Parameter at the node's path (a ViT's `class_token`):
    its state_dict key is the path itself, and `params()` names it "".
    `call` is the forward expression, `{m}` the parameter and `{0}`... the inputs."""

    shape: tuple
    call: str = "{m}"
    init: str = "zeros"  # a torch constructor: zeros | ones | randn
    scale: float = 1.0  # multiplies the initial value (DARTS initialises α to 1e-3·randn)


@dataclass
class Code:
    """Lower to a forward expression with no module: `{0}`, `{1}`.. or `{*}` are the inputs.

    Templates may use `torch`, `F`, `nn` and `rt`; `env` binds any further names
    (a custom op's Python function, say) that generated code must import.
    """

    template: str
    env: dict = field(default_factory=dict)


class Op:
    name: ClassVar[str] = ""
    Attrs: ClassVar[type[Attrs]] = NoAttrs
    # How many tensor inputs the op takes: an int, or None for one or more.
    arity: ClassVar[int | None] = 1
    # Attribute fields that take a tensor instead of a value (mha's `kv=`).
    tensor_attrs: ClassVar[tuple[str, ...]] = ()
    # True for ops whose parameters are architecture parameters (a supernet's α), not weights.
    is_arch: ClassVar[bool] = False
    doc: ClassVar[str] = ""

    def infer(self, a: Attrs, ins: list[TensorType]) -> list[TensorType]:
        """Output types from input types; raise ShapeError on bad input."""
        raise NotImplementedError

    def params(self, a: Attrs, ins: list[TensorType]) -> dict[str, tuple[int, ...]]:
        """Trainable parameters: state_dict suffix -> shape, in registration order."""
        return {}

    def buffers(self, a: Attrs, ins: list[TensorType]) -> dict[str, tuple[int, ...]]:
        """Persistent buffers (running statistics): suffix -> shape."""
        return {}

    def tied(self, a: Attrs, ins: list[TensorType]) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Parameters shared with another module: name -> (`path.param` it is tied to, shape)."""
        return {}

    def flops(self, a: Attrs, ins: list[TensorType], outs: list[TensorType]) -> Dim:
        """Floating-point operations of one forward pass (a multiply-add counts 2)."""
        return 0

    def cache_bytes_per_token(self, a: Attrs, ins: list[TensorType]) -> int:
        """Bytes this op adds to the key/value cache per decoded token and batch element
        (causal attention: keys and values, 2 · kv width · bytes per element)."""
        return 0

    def lower(self, a: Attrs, ins: list[TensorType], outs: list[TensorType]) -> Module | Code:
        raise NotImplementedError

    # Convenience for ops with one tensor input.
    def has_weights(self, a: Attrs, ins: list[TensorType]) -> bool:
        return bool(self.params(a, ins) or self.buffers(a, ins))

    # -- memory (passes/estimate_memory.py) ---------------------------------------------
    def saved(self, a: Attrs, ins: list[TensorType], outs: list[TensorType], ctx: "MemoryContext") -> list["Saved"]:
        """The tensors the op keeps for its backward pass, given where it runs and which of
        its inputs need gradients (`ctx`): references to an input, an output, one of its
        parameters, or a new tensor of so many bytes. Nothing when no gradient is needed.

        The default (for ops registered from Python that do not say) keeps every input."""
        return [Saved.input(i) for i in range(len(ins))] if ctx.any_grad else []

    def footprint(self, a: Attrs, ins: list[TensorType], outs: list[TensorType], ctx: "MemoryContext") -> "Footprint":
        """How the op allocates beyond what it saves: outputs that are views of an input,
        transient workspace in its forward and backward passes, gradients it passes through."""
        return Footprint()


# -- memory: what an op keeps for backward and what it allocates -------------------------

DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
               "int8": 1, "uint8": 1, "bool": 1}


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES.get(dtype, 4)


def is_float(dtype: str) -> bool:
    return dtype in ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Saved:
    """One tensor an op keeps for its backward pass.

    kind "input" / "output": the op's input or output `index` (or a view of it: the
    storage is what counts); "param": its parameter or buffer `name` (under autocast,
    the low-precision copy autocast made of a parameter); "new": a tensor the op
    creates and keeps, of `bytes` bytes (a dropout mask, pooling indices, statistics).
    """

    kind: str
    index: int = 0
    bytes: Dim = 0
    name: str = ""
    what: str = ""

    @classmethod
    def input(cls, i: int = 0, what: str = "") -> "Saved":
        return cls("input", i, what=what)

    @classmethod
    def output(cls, j: int = 0, what: str = "") -> "Saved":
        return cls("output", j, what=what)

    @classmethod
    def param(cls, name: str, what: str = "") -> "Saved":
        return cls("param", name=name, what=what)

    @classmethod
    def new(cls, nbytes: Dim, what: str = "") -> "Saved":
        return cls("new", bytes=nbytes, what=what)


@dataclass
class Phase:
    """One step of a backward pass that runs as a sequence of steps (oneDNN's LSTM layer by
    layer and direction, a recurrence frame by frame), replayed in order by the estimator.

    When a step starts, `temp` bytes are allocated (held until it ends) and each `(bytes,
    until)` of `keep` (held until step `until` ends: a gradient handed to a later step);
    with `inputs`, the op's input gradients are allocated here; the gradients of the
    parameters named in `grads` are allocated (kept as .grad); `workspace` is held for an
    instant (the step's high point); then `temp`, the saved tensors at the indices `frees`
    of the op's `saved` list, and the `keep`s due are released."""

    grads: tuple = ()
    temp: Dim = 0
    keep: tuple = ()
    inputs: bool = False
    workspace: Dim = 0
    frees: tuple = ()


@dataclass
class Footprint:
    """How an op uses memory beyond the tensors it saves.

    `views`: output j shares the storage of input i (a view, or an in-place result).
    `fwd_peak` / `bwd_peak`: transient bytes the forward / backward pass holds at its
    high-water mark beyond what it leaves allocated (outputs and new saved tensors;
    input gradients and parameter gradients). `grad_views`: input i's gradient shares
    the storage of output j's gradient (the op passes it through or slices it).
    `differentiable=False`: the outputs never need gradients (zeros_like).
    `strides`: the strides of outputs that are not contiguous (views of transposes).
    `frees_saved`: the backward releases the saved tensors before it allocates the input
    gradients (a composite unrolled over time frees each step's tensors as it goes).
    `phases`: the backward as the sequence of steps it runs (`Phase`); when given, they
    replace `bwd_peak` and the one-step allocation of the parameter and input gradients.
    """

    views: dict[int, int] = field(default_factory=dict)
    fwd_peak: Dim = 0
    bwd_peak: Dim = 0
    grad_views: dict[int, int] = field(default_factory=dict)
    differentiable: bool = True
    strides: dict[int, tuple] = field(default_factory=dict)
    frees_saved: bool = False
    phases: list = field(default_factory=list)


@dataclass
class MemoryContext:
    """What `Op.saved` and `Op.footprint` may depend on.

    `device`: the rules where the op runs (archc.compiler.devices.Device); `ins` and
    `outs` carry the dtypes the op sees (after autocast); `requires_grad[i]`: input i
    needs a gradient; `weights_grad`: the op's own parameters do; `strides[i]`: input
    i's strides (in elements); `inplace`: the generated code runs the op in place.
    """

    device: Any
    ins: list[TensorType]
    outs: list[TensorType]
    requires_grad: list[bool]
    weights_grad: bool = False
    training: bool = True
    strides: list[tuple] = field(default_factory=list)
    inplace: bool = False
    params: dict = field(default_factory=dict)  # name -> (shape, dtype) of the op's parameters
    casts: list = field(default_factory=list)  # casts[i]: input i is autocast's copy (made anew at each use)
    weight_casts: bool = False  # the parameters the op uses are autocast's 16-bit copies of float32 ones

    @property
    def any_grad(self) -> bool:
        return any(self.requires_grad) or self.weights_grad

    def nbytes(self, t: TensorType, dtype: str | None = None) -> Dim:
        return t.numel() * dtype_bytes(dtype or t.dtype)

    def in_bytes(self, i: int = 0) -> Dim:
        return self.nbytes(self.ins[i])

    def out_bytes(self, j: int = 0) -> Dim:
        return self.nbytes(self.outs[j])

    def param_bytes(self, name: str) -> Dim:
        shape, dtype = self.params[name]
        n = 1
        for d in shape:
            n = n * d
        return n * dtype_bytes(dtype)

    def mask_bytes(self, t: TensorType) -> Dim:
        """A dropout mask over `t`: 1 byte per element on CUDA (bool), t's dtype on the CPU."""
        per = self.device.dropout_mask_bytes if self.device is not None else None
        return t.numel() * (per if per else dtype_bytes(t.dtype))

    def contiguous(self, i: int = 0) -> bool:
        if i >= len(self.strides):
            return True
        return tuple(self.strides[i]) == contiguous_strides(self.ins[i].shape)


def contiguous_strides(shape) -> tuple:
    out, acc = [], 1
    for d in reversed(tuple(shape)):
        out.append(acc)
        acc = acc * d
    return tuple(reversed(out))


def view_strides(shape, strides, new_shape) -> tuple | None:
    """Strides of `t.view(new_shape)` for a tensor of `shape` and `strides`, or None when
    the view is impossible and `reshape` must copy (PyTorch's computeStride)."""
    shape, strides, new_shape = tuple(shape), tuple(strides), tuple(new_shape)
    if not shape:
        return contiguous_strides(new_shape)
    numel = 1
    for d in shape:
        numel *= d
    if numel == 0:
        return contiguous_strides(new_shape)
    out = [0] * len(new_shape)
    view_d = len(new_shape) - 1
    chunk_base_stride = strides[-1]
    tensor_numel, view_numel = 1, 1
    for tensor_d in range(len(shape) - 1, -1, -1):
        tensor_numel *= shape[tensor_d]
        if tensor_d == 0 or (shape[tensor_d - 1] != 1 and strides[tensor_d - 1] != tensor_numel * chunk_base_stride):
            while view_d >= 0 and (view_numel < tensor_numel or new_shape[view_d] == 1):
                out[view_d] = view_numel * chunk_base_stride
                view_numel *= new_shape[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if tensor_d > 0:
                chunk_base_stride = strides[tensor_d - 1]
                tensor_numel, view_numel = 1, 1
    if view_d != -1:
        return None
    return tuple(out)


REGISTRY: dict[str, Op] = {}


def register(cls: type[Op], name: str | None = None) -> type[Op]:
    """Add an op class to the registry under `name` (default: its `name`)."""
    key = name or cls.name
    if not key:
        raise ValueError("an op needs a name")
    cls.name = key
    REGISTRY[key] = cls()
    return cls


def op(name: str):
    """Class decorator registering a user op: `@archc.op("my_norm") class MyNorm(archc.Op): ...`."""

    def deco(cls: type[Op]) -> type[Op]:
        return register(cls, name)

    return deco


def alias(name: str, target: str) -> None:
    REGISTRY[name] = REGISTRY[target]


# -- helpers shared by shape rules --------------------------------------------

def expect_rank(t: TensorType, ranks, what: str) -> None:
    if t.rank not in ranks:
        want = " or ".join(str(r) for r in sorted(ranks))
        raise ShapeError("E0302", f"{what} expects a tensor of rank {want}, got {t}",
                         label=f"this is {t} (rank {t.rank})")


def static_int(d: Dim, what: str) -> int:
    """A dimension that must be a known integer (a layer's input width)."""
    if isinstance(d, int):
        return d
    raise ShapeError("E0213", f"{what} must be a known size, but it is `{d}`",
                     help="bind the symbol with `--dim` or give the input a concrete size")
