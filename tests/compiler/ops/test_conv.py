import pytest

from archc.compiler.dims import Sym
from opcheck import B, check, fails, infer

H = Sym.symbol("H")


@pytest.mark.parametrize("shape", [(2, 4, 17), (2, 4, 9, 11), (2, 4, 5, 6, 7)])
@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(dilation=2, bias=False),
                                dict(groups=2), dict(padding="same"), dict(padding="valid"),
                                dict(padding="same", dilation=2)])
def test_conv(shape, kw):
    check("conv", [shape], 8, 3, flops=True, **kw)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv_list_kernel():
    (out,) = check("conv", [(2, 3, 16, 20)], 8, [3, 5], stride=[1, 2], padding=[1, 2],
                   dilation=[2, 1], flops=True)
    assert out.shape == (2, 8, 14, 10)
    check("conv", [(2, 3, 8, 9, 10)], 4, [1, 3, 3], padding=[0, 1, 1], flops=True)
    check("conv", [(2, 3, 16, 20)], 8, [3, 4], padding="same", flops=True)


def test_depthwise():
    check("conv", [(2, 16, 10, 10)], 16, 3, padding=1, groups=16, bias=False, flops=True)
    check("conv", [(2, 16, 10, 10)], 32, 3, padding=1, groups=16, flops=True)


def test_conv_symbolic():
    (out,) = infer("conv", [(B, 3, 224, 224)], 64, 7, stride=2, padding=3)
    assert out.shape == (B, 64, 112, 112)
    (out,) = infer("conv", [(B, 3, H, H)], 8, 3, stride=2, padding=1)
    assert out.shape[:2] == (B, 8) and out.shape[2].subs({"H": 33}) == 17


def test_conv_errors():
    fails("E0302", "conv", [(2, 3)], 8, 3)
    fails("E0302", "conv", [(2, 3, 8, 8, 8, 8)], 8, 3)
    fails("E0302", "conv", [(2, 3, 8, 8)], 8, [3, 3, 3])
    fails("E0303", "conv", [(2, 6, 8, 8)], 8, 3, groups=4)   # 4 does not divide 6
    fails("E0303", "conv", [(2, 8, 8, 8)], 6, 3, groups=4)   # nor 6 outputs
    fails("E0303", "conv", [(2, 3, 8, 8)], 8, 3, stride=2, padding="same")
    fails("E0213", "conv", [(2, Sym.symbol("C"), 8, 8)], 8, 3)  # channels must be known
    fails("E0305", "conv", [(2, 3, 4, 4)], 8, 5)  # kernel larger than input
    fails("E0305", "conv", [(2, 3, 8, 8)], 0, 3)
    fails("E0305", "conv", [(2, 3, 8, 8)], 8, 3, padding=-1)


@pytest.mark.parametrize("shape", [(2, 4, 9), (2, 4, 5, 6), (2, 4, 3, 4, 5)])
@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1, output_padding=1),
                                dict(groups=2, bias=False), dict(dilation=2)])
def test_conv_transpose(shape, kw):
    check("conv_transpose", [shape], 6, 3, flops=True, **kw)


def test_conv_transpose_list_and_symbolic():
    (out,) = check("conv_transpose", [(2, 4, 5, 6)], 3, [2, 3], stride=[2, 1], flops=True)
    assert out.shape == (2, 3, 10, 8)
    assert infer("conv_transpose", [(B, 4, 7, 7)], 2, 2, stride=2)[0].shape == (B, 2, 14, 14)


def test_conv_transpose_errors():
    fails("E0302", "conv_transpose", [(2, 4)], 6, 3)
    fails("E0303", "conv_transpose", [(2, 6, 5, 5)], 4, 3, groups=4)
    fails("E0303", "conv_transpose", [(2, 4, 5, 5)], 4, 3, stride=2, output_padding=2)
    fails("E0305", "conv_transpose", [(2, 4, 1, 1)], 4, 1, padding=1)
