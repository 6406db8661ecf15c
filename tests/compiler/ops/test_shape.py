import pytest
from pydantic import ValidationError

from archc.compiler.dims import Sym
from archc.compiler.ir import TensorType
from archc.compiler.ops import REGISTRY
from opcheck import B, check, fails, infer, make

T = Sym.symbol("T")


def test_flatten():
    (out,) = check("flatten", [(2, 3, 4, 5)])
    assert out.shape == (2, 60)
    check("flatten", [(2, 3, 4, 5)], 1, 2)
    check("flatten", [(2, 3, 4, 5)], 0)
    check("flatten", [(2, 3, 4, 5)], -2, -1)
    assert infer("flatten", [(B, 512, 1, 1)])[0].shape == (B, 512)
    assert infer("flatten", [(B, T, 4, 8)], 0, 1)[0].shape == (B * T, 4, 8)
    fails("E0304", "flatten", [(5,)])
    fails("E0303", "flatten", [(2, 3, 4)], 2, 1)


def test_reshape():
    check("reshape", [(2, 12)], [2, 3, 4], sym=False)  # a literal batch size
    check("reshape", [(2, 12)], [2, -1, 4], sym=False)
    check("reshape", [(2, 3, 4)], [-1])


def test_reshape_symbolic():
    # a head split: [B, T, 64] -> [B, T, 4, 16]
    (out,) = infer("reshape", [(B, T, 64)], [B, T, 4, 16])
    assert out.shape == (B, T, 4, 16)
    op, a = make("reshape", [B, T, 4, 16])
    code = op.lower(a, [TensorType((B, T, 64))], [out])
    assert code.template == "{0}.reshape({0}.shape[0], {0}.shape[1], 4, 16)"
    # merge axes: one unknown becomes -1
    (out,) = infer("reshape", [(B, T, 64)], [B * T, 64])
    assert out.shape == (B * T, 64)
    (out,) = infer("reshape", [(B, T, 64)], [-1, 64])
    assert out.shape == (B * T, 64)
    (out,) = infer("reshape", [(B, 4, T)], [B, -1])
    assert out.shape == (B, 4 * T)


@pytest.mark.parametrize("target", [[B, 12], [B, -1], [B, 3, 2, 2], [B, 2, -1]])
def test_reshape_symbolic_lowering_runs(target):
    import torch
    from opcheck import run
    op, a = make("reshape", target)
    ins = [TensorType((B, 3, 4))]
    (out,) = op.infer(a, ins)
    (y,) = run(op.lower(a, ins, [out]), [torch.randn(5, 3, 4)])
    assert tuple(y.shape) == tuple(d.subs({"B": 5}) if isinstance(d, Sym) else d for d in out.shape)


def test_reshape_errors():
    fails("E0303", "reshape", [(2, 12)], [5, 5])
    fails("E0303", "reshape", [(2, 12)], [-1, -1])
    fails("E0303", "reshape", [(2, 12)], [-1, 5])
    fails("E0305", "reshape", [(2, 12)], [0, 24])
    fails("E0303", "reshape", [(B, 12)], [T, 12])        # element counts differ
    fails("E0303", "reshape", [(B * T, 4)], [B, T, 4])   # two sizes unknown at run time


def test_permute_transpose():
    (out,) = check("permute", [(2, 3, 4, 5)], [0, 2, 3, 1])
    assert out.shape == (2, 4, 5, 3)
    check("permute", [(2, 3, 4)], [0, -1, 1])
    (out,) = check("transpose", [(2, 3, 4)], 1, 2)
    assert out.shape == (2, 4, 3)
    check("transpose", [(2, 3, 4)], -1, 0)
    assert infer("transpose", [(B, T, 8)], 1, 2)[0].shape == (B, 8, T)
    fails("E0302", "permute", [(2, 3, 4)], [0, 1])
    fails("E0304", "permute", [(2, 3, 4)], [0, 1, 3])
    fails("E0303", "permute", [(2, 3, 4)], [0, 1, 1])
    fails("E0304", "transpose", [(2, 3, 4)], 1, 3)


def test_concat():
    (out,) = check("concat", [(2, 3, 4), (2, 5, 4)])
    assert out.shape == (2, 8, 4)
    (out,) = check("concat", [(2, 3, 4), (2, 3, 4), (2, 3, 1)], dim=-1)
    assert out.shape == (2, 3, 9)
    (out,) = check("concat", [(2, 3), (2, 3)], dim=0)
    assert out.shape == (4, 3)
    assert infer("concat", [(B, 3), (B, 3)], dim=0)[0].shape == (2 * B, 3)
    assert REGISTRY["concat"].arity is None


def test_concat_errors():
    fails("E0306", "concat", [(2, 3)])
    fails("E0302", "concat", [(2, 3), (2, 3, 1)])
    fails("E0303", "concat", [(2, 3, 4), (2, 3, 5)])
    fails("E0303", "concat", [(B, 3), (T, 3)])
    fails("E0304", "concat", [(2, 3), (2, 3)], dim=2)


def test_split():
    outs = check("split", [(2, 10)], 4)
    assert [o.shape for o in outs] == [(2, 4), (2, 4), (2, 2)]
    outs = check("split", [(2, 10, 3)], [2, 8], dim=1)
    assert [o.shape for o in outs] == [(2, 2, 3), (2, 8, 3)]
    outs = check("split", [(2, 12)], 6)
    assert len(outs) == 2
    (q, k, v) = infer("split", [(B, T, 192)], 64)
    assert q.shape == (B, T, 64) and v.shape == (B, T, 64)


def test_split_errors():
    fails("E0303", "split", [(2, 10)], [3, 3])
    fails("E0213", "split", [(2, T)], 4)   # number of chunks depends on T
    fails("E0305", "split", [(2, 10)], 0)
    fails("E0305", "split", [(2, 10)], [10, 0])
    fails("E0304", "split", [(2, 10)], 2, dim=2)


def test_mean():
    (out,) = check("mean", [(2, 3, 4)], 1)
    assert out.shape == (2, 4)
    (out,) = check("mean", [(2, 3, 4, 5)], [2, 3], keepdim=True)
    assert out.shape == (2, 3, 1, 1)
    (out,) = check("mean", [(2, 3, 4)], -1)
    assert out.shape == (2, 3)
    assert infer("mean", [(B, T, 8)], 1)[0].shape == (B, 8)
    fails("E0304", "mean", [(2, 3)], 2)
    fails("E0303", "mean", [(2, 3)], [1, -1])


@pytest.mark.parametrize("shape,mode", [((2, 3, 5), "nearest"), ((2, 3, 5), "linear"),
                                        ((2, 3, 4, 5), "nearest"), ((2, 3, 4, 5), "bilinear"),
                                        ((2, 3, 4, 5), "bicubic"), ((2, 3, 2, 3, 4), "trilinear"),
                                        ((2, 3, 2, 3, 4), "nearest")])
def test_upsample(shape, mode):
    (out,) = check("upsample", [shape], 2, mode=mode)
    assert out.shape[2:] == tuple(2 * s for s in shape[2:])


def test_upsample_scales():
    (out,) = check("upsample", [(2, 3, 5, 7)], 1.5)
    assert out.shape == (2, 3, 7, 10)
    check("upsample", [(2, 3, 5, 7)], [2, 3])
    check("upsample", [(2, 3, 5, 7)], 2.0)
    H = Sym.symbol("H")
    assert infer("upsample", [(B, 3, H, 4)], 2)[0].shape == (B, 3, 2 * H, 8)
    fails("E0213", "upsample", [(B, 3, H, 4)], 1.5)
    fails("E0302", "upsample", [(2, 3, 4, 5)], 2, mode="trilinear")
    fails("E0302", "upsample", [(2, 3)], 2)
    fails("E0302", "upsample", [(2, 3, 4, 5)], [2, 2, 2])
    fails("E0305", "upsample", [(2, 3, 4, 5)], 0)
    with pytest.raises(ValidationError):
        REGISTRY["upsample"].Attrs(scale=2, mode="cubic")
