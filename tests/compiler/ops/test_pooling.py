import pytest

from archc.compiler.dims import Sym
from opcheck import B, check, fails, infer

SHAPES = [(2, 3, 17), (2, 3, 9, 11), (2, 3, 7, 8, 9)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", [dict(), dict(stride=1), dict(stride=2, padding=1),
                                dict(dilation=2), dict(ceil_mode=True, stride=2),
                                dict(ceil_mode=True, stride=2, padding=1)])
def test_max_pool(shape, kw):
    check("max_pool", [shape], 3, **kw)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", [dict(), dict(stride=1, padding=1, count_include_pad=False),
                                dict(ceil_mode=True, stride=2), dict(ceil_mode=True, padding=1)])
def test_avg_pool(shape, kw):
    check("avg_pool", [shape], 3, **kw)


def test_list_kernels():
    (out,) = check("max_pool", [(2, 3, 9, 11)], [3, 2], stride=[2, 1], padding=[1, 0])
    assert out.shape == (2, 3, 5, 10)
    check("avg_pool", [(2, 3, 6, 7, 8)], [1, 2, 3])
    check("max_pool", [(2, 3, 9, 11)], [3, 2], ceil_mode=True)


def test_resnet_stem_symbolic():
    (out,) = infer("max_pool", [(B, 64, 112, 112)], 3, stride=2, padding=1)
    assert out.shape == (B, 64, 56, 56)
    H = Sym.symbol("H")
    (out,) = infer("avg_pool", [(B, 3, H, 8)], 2)
    assert out.shape[3] == 4 and out.shape[2].subs({"H": 9}) == 4


def test_ceil_mode_needs_static_size():
    H = Sym.symbol("H")
    fails("E0303", "max_pool", [(2, 3, H)], 3, stride=2, ceil_mode=True)
    assert infer("max_pool", [(2, 3, H)], 3, stride=1, ceil_mode=True)[0].shape[2] == H - 2


def test_pool_errors():
    fails("E0302", "max_pool", [(2, 3)], 2)
    fails("E0302", "avg_pool", [(2, 3, 8, 8)], [2, 2, 2])
    fails("E0305", "max_pool", [(2, 3, 2, 2)], 3)  # kernel larger than input
    fails("E0305", "avg_pool", [(2, 3, 8)], 0)
    fails("E0303", "max_pool", [(2, 3, 8, 8)], 3, padding=2)  # more than half the kernel


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["adaptive_avg_pool", "adaptive_max_pool"])
def test_adaptive(shape, name):
    (out,) = check(name, [shape], 2)
    assert out.shape[2:] == (2,) * (len(shape) - 2)


def test_adaptive_lists():
    (out,) = check("adaptive_avg_pool", [(2, 3, 9, 11)], [3, 4])
    assert out.shape == (2, 3, 3, 4)
    (out,) = check("adaptive_max_pool", [(2, 3, 9, 11)], [None, 4])
    assert out.shape == (2, 3, 9, 4)
    fails("E0302", "adaptive_avg_pool", [(2, 3, 9, 11)], [3, 4, 5])
    fails("E0305", "adaptive_avg_pool", [(2, 3, 9, 11)], 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_global_avg_pool(shape):
    (out,) = check("global_avg_pool", [shape])
    assert out.shape == tuple(shape[:2]) + (1,) * (len(shape) - 2)
    assert infer("global_avg_pool", [(B, 512, 7, 7)])[0].shape == (B, 512, 1, 1)
    fails("E0302", "global_avg_pool", [(2, 3)])
