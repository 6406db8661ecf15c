import pytest
from pydantic import ValidationError

from archc.compiler.dims import Sym
from archc.compiler.ops import REGISTRY
from opcheck import B, check, fails, infer, make

T = Sym.symbol("T")


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("a,b", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (2, 3, 1)),
                                 ((2, 3, 4), (1, 3, 1)), ((3, 1), (2, 1, 5))])
def test_binary(name, a, b):
    check(name, [a, b], sym=len(a) == len(b))


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
def test_binary_symbolic(name):
    assert infer(name, [(B, T, 8), (B, T, 8)])[0].shape == (B, T, 8)
    assert infer(name, [(B, T, 8), (8,)])[0].shape == (B, T, 8)
    assert infer(name, [(B, 1, 8), (1, T, 1)])[0].shape == (B, T, 8)


def test_broadcast_errors():
    e = fails("E0301", "add", [(2, 256, 56, 56), (2, 64, 56, 56)])
    assert "[2, 256, 56, 56] vs [2, 64, 56, 56]" in e.message
    fails("E0301", "mul", [(B, 3), (T, 3)])
    fails("E0301", "sub", [(B, 3), (4, 3)])
    fails("E0301", "div", [(3, 4), (5,)])


def test_binary_dtype_is_the_first():
    assert infer("add", [(2, 3), (2, 3)], dtype="float16")[0].dtype == "float16"


@pytest.mark.parametrize("a,b", [((3,), (3, 4)), ((2, 3), (3, 4)), ((5, 2, 3), (3, 4)),
                                 ((3,), (5, 3, 4)), ((5, 1, 2, 3), (7, 3, 4)),
                                 ((5, 2, 3), (5, 3, 4))])
def test_matmul(a, b):
    check("matmul", [a, b], sym=False, flops=True)


def test_matmul_vectors():
    # torch's flop counter skips dot and mv: check those by hand
    (out,) = check("matmul", [(3,), (3,)], sym=False)
    assert out.shape == ()
    (out,) = check("matmul", [(2, 3), (3,)], sym=False)
    assert out.shape == (2,)
    (out,) = check("matmul", [(5, 2, 3), (3,)], sym=False)
    assert out.shape == (5, 2)
    op, a = make("matmul")
    from archc.compiler.ir import TensorType
    ins = [TensorType((2, 3)), TensorType((3,))]
    assert op.flops(a, ins, op.infer(a, ins)) == 2 * 2 * 3


def test_matmul_symbolic():
    assert infer("matmul", [(B, T, 64), (64, 32)])[0].shape == (B, T, 32)
    assert infer("matmul", [(B, 4, T, 16), (B, 4, 16, T)])[0].shape == (B, 4, T, T)
    check("matmul", [(2, 3, 4), (2, 4, 5)], flops=True)


def test_matmul_errors():
    fails("E0303", "matmul", [(2, 3), (4, 5)])
    fails("E0303", "matmul", [(5, 2, 3), (5, 3)])
    fails("E0303", "matmul", [(B, T, 8), (T, 8)])
    fails("E0301", "matmul", [(2, 3, 4), (5, 4, 6)])
    fails("E0302", "matmul", [(), (3,)])


def test_neg():
    check("neg", [(2, 3)])


@pytest.mark.parametrize("op", ["add", "sub", "rsub", "mul", "div", "rdiv", "pow"])
@pytest.mark.parametrize("value", [2, 0.5, -1.5])
def test_scalar(op, value):
    check("scalar", [(2, 3)], op, value)


def test_scalar_lowering():
    o, a = make("scalar", "mul", 2)
    assert o.lower(a, [], []).template == "{0} * 2"
    o, a = make("scalar", "rsub", 1.0)
    assert o.lower(a, [], []).template == "1.0 - {0}"
    with pytest.raises(ValidationError):
        REGISTRY["scalar"].Attrs(op="mod", value=2)
