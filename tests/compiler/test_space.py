"""Search spaces: decisions, exact size against brute force, decisions by label, derivation."""
import pytest
from hypothesis import assume, given, settings, strategies as st

import archc
from archc.compiler.space import enumerate_space, explore

SPACE = """
block Blk(x, w: int) {
    return x -> conv(w, 3, padding=1) -> choice(relu, gelu, identity)
}
model Space() {
    input x: [B, 3, 8, 8]
    width = choice(16, 32, 64, label="width")
    x = x -> choice(conv(width, 3, padding=1), conv(width, 5, padding=2), label="op1")
    x = x -> body: [Blk(width) * choice(1, 2, 3, label="depth")]
    if width > 16 {
        x = x -> choice(identity, relu, label="late")
    }
    output y = x -> global_avg_pool -> flatten -> linear(10)
}
"""


def test_nested_depth_and_conditional_choices_are_counted_exactly():
    prog = archc.parse(SPACE, "s.arch")
    space = prog.space()
    # width=16: 2 ops x (3 + 9 + 27); width=32 or 64: the same x 2 for `late`
    assert space.size == 2 * 39 + 2 * (2 * 39 * 2) == len(enumerate_space(prog._prog, "Space"))
    assert list(space.decisions)[:3] == ["width", "op1", "depth"]
    assert space.decisions["body.0.choice_0"].candidates == ["relu", "gelu", "identity"]


def test_decisions_by_label_value_or_index_and_seeded_sampling():
    prog = archc.parse(SPACE, "s.arch")
    g = prog.graph(choose={"width": 32, "op1": 1, "depth": 2, "late": "relu"}, sample=0)
    assert g.decisions["width"] == 1 and g.decisions["depth"] == 1 and g.decisions["late"] == 1
    a = prog.graph(sample=7).decisions
    assert a == prog.graph(sample=7).decisions
    assert any(prog.graph(sample=s).decisions != a for s in range(8))


def test_unknown_labels_values_and_undecided_choices_are_diagnostics():
    prog = archc.parse(SPACE, "s.arch")
    with pytest.raises(archc.CompileError) as e:
        prog.build(choose={"widht": 32})
    assert e.value.diagnostics[0].code == "E0601" and "width" in e.value.diagnostics[0].help
    with pytest.raises(archc.CompileError) as e:
        prog.build(choose={"width": 48})
    d = e.value.diagnostics[0]
    assert d.code == "E0601" and (d.span.line, d.span.column) == (7, 13)
    with pytest.raises(archc.CompileError) as e:
        prog.build()
    assert e.value.diagnostics[0].code == "E0601" and "--choose" in e.value.diagnostics[0].help


def test_candidates_with_different_shapes_are_reported_with_the_decision():
    from archc.compiler.space import check_space

    bad = SPACE.replace("conv(width, 5, padding=2)", "conv(width, 5)")
    diags = check_space(archc.parse(bad, "s.arch").space())
    assert [d.code for d in diags][0] == "E0603"
    assert diags[0].span.line == 8


def test_a_large_space_is_sized_without_enumeration():
    text = "model M() {\n    input x: [B, 4]\n" + "".join(
        f"    x = x -> choice(linear(4), identity, relu, gelu, label=\"l{i}\")\n" for i in range(40)) + \
        "    output y = x\n}\n"
    space = archc.parse(text, "m.arch").space()
    assert space.size == 4 ** 40 and space.runs <= 1 + 40 * 4


# -- property: the counted size equals brute-force enumeration ---------------------

@st.composite
def spaces(draw):
    lines = []
    n = draw(st.integers(1, 4))
    labels = [f"d{i}" for i in range(draw(st.integers(1, 3)))]
    for i in range(n):
        kind = draw(st.sampled_from(["op", "nested", "depth", "shared", "if"]))
        k = draw(st.integers(2, 3))
        if kind == "op":
            cands = ", ".join(["identity", "relu", "gelu"][:k])
            lines.append(f"x = x -> choice({cands})")
        elif kind == "nested":
            lines.append("x = x -> choice(identity, [linear(4), choice(relu, gelu)], Inner)")
        elif kind == "depth":
            lines.append(f"x = x -> s{i}: [Inner * choice({', '.join(str(j) for j in range(1, k + 1))})]")
        elif kind == "shared":
            lab = draw(st.sampled_from(labels))
            lines.append(f'x = x -> choice(identity, relu, label="{lab}")')
        else:
            lines.append(f'w{i} = choice(1, 2, label="w{i}")\n    if w{i} > 1 {{ x = x -> choice(relu, gelu) }}')
    body = "\n    ".join(lines)
    return ("block Inner(x) { return x -> choice(relu, tanh, identity) }\n"
            f"model S() {{\n    input x: [B, 4]\n    {body}\n    output y = x\n}}\n")


@settings(max_examples=15, deadline=None)
@given(spaces())
def test_size_equals_brute_force_enumeration(text):
    prog = archc.parse(text, "s.arch")
    try:
        brute = len(enumerate_space(prog._prog, "S"))
    except (archc.CompileError, OverflowError):  # too large to enumerate: not a small case
        assume(False)
    assert explore(prog._prog, "S").size == brute


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_a_derived_candidate_is_a_plain_spec_of_the_same_network(tmp_path, seed):
    prog = archc.parse(SPACE, str(tmp_path / "s.arch"))
    text = prog.derive(sample=seed)
    assert "choice(" not in text
    picked = archc.parse(text, str(tmp_path / "picked.arch"))
    assert picked.models == ["Space"] and not picked.graph().decisions
    built, original = picked.build(), prog.build(sample=seed)
    assert list(built.state_dict()) == list(original.state_dict())
    assert [v.shape for v in built.state_dict().values()] == [v.shape for v in original.state_dict().values()]
    assert picked.check().params == prog.check(sample=seed).params
