import torch

from archc.compiler.ops import REGISTRY
from opcheck import B, check, infer, make, run


def test_identity_and_skip():
    assert REGISTRY["skip"] is REGISTRY["identity"]
    check("identity", [(2, 3, 4)])
    check("skip", [(2, 3)])
    assert infer("skip", [(B, 7)])[0].shape == (B, 7)


def test_zero():
    check("zero", [(2, 3, 4)])
    op, a = make("zero")
    (y,) = run(op.lower(a, [], []), [torch.randn(2, 3)])
    assert (y == 0).all()
