import pytest
from pydantic import ValidationError

from archc.compiler.ops import REGISTRY
from opcheck import B, check, fails, infer


@pytest.mark.parametrize("name", ["relu", "gelu", "silu", "sigmoid", "tanh", "leaky_relu", "softmax"])
@pytest.mark.parametrize("shape", [(3,), (2, 5), (2, 3, 4, 5)])
def test_activation(name, shape):
    (out,) = check(name, [shape])
    assert out.shape == tuple(shape)


def test_attributes():
    check("gelu", [(2, 5)], approximate="tanh")
    check("leaky_relu", [(2, 5)], 0.2)
    check("softmax", [(2, 5, 3)], dim=1)
    check("softmax", [(2, 5, 3)], 0)
    with pytest.raises(ValidationError):
        REGISTRY["gelu"].Attrs(approximate="erf")


def test_relu_inplace_template():
    import torch
    from opcheck import NS
    t = REGISTRY["relu"].inplace_template
    x = torch.randn(4)
    eval(t.format("x"), {**NS, "x": x})
    assert (x >= 0).all()


def test_symbolic():
    assert infer("gelu", [(B, 7)])[0].shape == (B, 7)


def test_softmax_dim_out_of_range():
    fails("E0304", "softmax", [(2, 5)], dim=2)
    fails("E0304", "softmax", [(2, 5)], dim=-3)
