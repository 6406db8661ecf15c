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


__all__ = ["generate", "Program", "load", "parse", "CompileError", "Diagnostic", "Op", "Attrs", "Code", "Module",
           "ShapeError", "TensorType", "op"]
__version__ = "0.1.0"
