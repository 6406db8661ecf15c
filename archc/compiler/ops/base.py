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

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..dims import Dim
from ..ir import TensorType


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
    raise ShapeError("E0303", f"{what} must be a known size, but it is `{d}`",
                     help="bind the symbol with `--dim` or give the input a concrete size")
