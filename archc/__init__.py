"""archc: a declarative architecture DSL and compiler for deep learning.

    import archc
    prog = archc.load("specs/resnet.arch")
    net = prog.build("ResNet50", classes=10)
"""
from .api import Program, load, parse
from .compiler.diagnostics import CompileError, Diagnostic
from .compiler.ops.base import Attrs, Code, Module, Op, ShapeError, op
from .compiler.ir import TensorType


def generate(*args, **kwargs):
    """Greedy or top-k decoding with the key/value cache (archc.runtime.generate; imports torch on use)."""
    from .runtime.generate import generate as _generate

    return _generate(*args, **kwargs)


def inflate(*args, **kwargs):
    """A 2-D model's graph made 3-D, I3D-style (archc/inflate.py; importing it rebinds
    `archc.inflate` to that module, which is callable the same way)."""
    from .inflate import inflate as _inflate

    return _inflate(*args, **kwargs)


def inflate_state_dict(*args, **kwargs):
    """2-D weights repeated over time for an inflated model (archc/inflate.py; imports torch on use)."""
    from .inflate import inflate_state_dict as _inflate_state_dict

    return _inflate_state_dict(*args, **kwargs)


__all__ = ["generate", "inflate", "inflate_state_dict", "Program", "load", "parse", "CompileError", "Diagnostic", "Op", "Attrs", "Code", "Module",
           "ShapeError", "TensorType", "op"]
__version__ = "0.1.0"
