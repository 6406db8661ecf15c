import pytest

from archc.compiler.dims import Sym
from opcheck import B, check, fails, infer


@pytest.mark.parametrize("shape", [(4, 10), (2, 5, 10), (2, 3, 5, 10)])
def test_linear(shape):
    check("linear", [shape], 7, flops=True)
    check("linear", [shape], 7, bias=False, flops=True)


def test_linear_symbolic_batch():
    assert infer("linear", [(B, 5, 10)], 3)[0].shape == (B, 5, 3)


@pytest.mark.parametrize("shape", [(4,), (2, 9), (2, 3, 4)])
def test_embedding(shape):
    (out,) = check("embedding", [shape], 10, 6, dtype="int64")
    assert out.dtype == "float32" and out.shape == tuple(shape) + (6,)


def test_embedding_padding_idx():
    check("embedding", [(2, 3)], 10, 6, padding_idx=0, dtype="int64")
    check("embedding", [(2, 3)], 10, 6, padding_idx=-1, dtype="int64")


def test_embedding_symbolic():
    T = Sym.symbol("T")
    assert infer("embedding", [(B, T)], 10, 6, dtype="int64")[0].shape == (B, T, 6)


def test_embedding_errors():
    fails("E0303", "embedding", [(2, 3)], 10, 6)  # float indices
    fails("E0304", "embedding", [(2, 3)], 10, 6, padding_idx=10, dtype="int64")
    fails("E0305", "embedding", [(2, 3)], 0, 6, dtype="int64")
