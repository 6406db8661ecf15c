import pytest
from pydantic import ValidationError

from archc.compiler.ops import REGISTRY
from opcheck import check, make


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_dropout(p):
    check("dropout", [(2, 3, 4)], p)


def test_dropout_lowering_and_range():
    op, a = make("dropout", 0.1)
    assert op.lower(a, [], []).args == (0.1,)
    op, a = make("dropout")
    assert op.lower(a, [], []).target == "nn.Dropout"
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValidationError):
            REGISTRY["dropout"].Attrs(p=p)
