import subprocess
import sys

from archc.compiler.ops import REGISTRY
from archc.compiler.ops.base import Attrs


def test_compiler_does_not_import_torch():
    code = "import archc.compiler.ops, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_op_is_documented():
    for name, op in REGISTRY.items():
        assert op.doc and issubclass(op.Attrs, Attrs), name
