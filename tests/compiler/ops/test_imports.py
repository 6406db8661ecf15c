import subprocess
import sys

from archc.compiler.ops import REGISTRY, Code, Module


def test_compiler_does_not_import_torch():
    code = "import archc.compiler.ops, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_op_is_documented_and_lowers_to_a_known_kind():
    for name, op in REGISTRY.items():
        assert op.doc, name
        assert op.name in REGISTRY
    assert {Code, Module}
