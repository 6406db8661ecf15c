import pytest

from archc.compiler.dims import Sym
from opcheck import B, check, fails, infer


@pytest.mark.parametrize("shape", [(4, 6), (2, 6, 5), (2, 6, 4, 4), (2, 6, 3, 3, 3)])
@pytest.mark.parametrize("kw", [dict(), dict(eps=1e-3, momentum=0.01), dict(affine=False)])
def test_bn(shape, kw):
    check("bn", [shape], **kw)


def test_bn_buffers():
    from opcheck import make
    from archc.compiler.ir import TensorType
    op, a = make("bn")
    assert op.buffers(a, [TensorType((B, 8, 4, 4))]) == {
        "running_mean": (8,), "running_var": (8,), "num_batches_tracked": ()}


@pytest.mark.parametrize("shape", [(4, 6), (2, 5, 6), (2, 3, 4, 6)])
@pytest.mark.parametrize("kw", [dict(), dict(eps=1e-6), dict(affine=False), dict(bias=False)])
def test_layernorm(shape, kw):
    check("layernorm", [shape], **kw)


@pytest.mark.parametrize("shape", [(4, 6), (2, 5, 6)])
def test_rmsnorm(shape):
    check("rmsnorm", [shape])
    check("rmsnorm", [shape], eps=1e-5)


@pytest.mark.parametrize("shape", [(4, 6), (2, 6, 5), (2, 6, 4, 4), (2, 6, 2, 3, 3)])
@pytest.mark.parametrize("kw", [dict(), dict(affine=False, eps=1e-3)])
def test_groupnorm(shape, kw):
    check("groupnorm", [shape], 3, **kw)


def test_symbolic():
    T = Sym.symbol("T")
    assert infer("layernorm", [(B, T, 8)])[0].shape == (B, T, 8)
    assert infer("bn", [(B, 8, T)])[0].shape == (B, 8, T)


def test_norm_errors():
    fails("E0302", "bn", [(8,)])
    fails("E0302", "bn", [(1, 2, 3, 4, 5, 6)])
    fails("E0213", "bn", [(2, Sym.symbol("C"), 4)])
    fails("E0213", "layernorm", [(2, Sym.symbol("D"))])
    fails("E0302", "rmsnorm", [()])
    fails("E0303", "groupnorm", [(2, 6, 4)], 4)
    fails("E0302", "groupnorm", [(6,)], 3)
    fails("E0305", "groupnorm", [(2, 6, 4)], 0)
