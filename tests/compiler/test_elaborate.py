"""Elaboration: module paths (LANGUAGE.md section 5), control flow, values."""
import pytest
import torch

import archc
from archc.compiler.dims import Sym


def build(text, model=None, **kw):
    return archc.parse(text, "t.arch").build(model, **kw)


def keys(text, model=None, **kw):
    return list(build(text, model, **kw).state_dict())


def test_unlabelled_modules_are_numbered_per_op():
    text = """
model M() {
    input x: [B, 3, 8, 8]
    output y = x -> conv(4, 3) -> bn -> relu -> conv(4, 3) -> bn
}"""
    assert keys(text) == [
        "conv_0.weight", "conv_0.bias", "bn_0.weight", "bn_0.bias", "bn_0.running_mean", "bn_0.running_var",
        "bn_0.num_batches_tracked", "conv_1.weight", "conv_1.bias", "bn_1.weight", "bn_1.bias",
        "bn_1.running_mean", "bn_1.running_var", "bn_1.num_batches_tracked"]


def test_sequence_children_count_every_stage_like_nn_sequential():
    text = """
model M() {
    input x: [B, 3, 8, 8]
    output y = x -> features: [conv(4, 3, padding=1), relu, max_pool(2), conv(8, 3, padding=1), relu]
}"""
    assert [k for k in keys(text) if k.endswith("weight")] == ["features.0.weight", "features.3.weight"]


def test_repetition_inside_a_sequence_continues_the_numbering():
    text = """
block Blk(x, c: int) { return x -> conv1: conv(c, 1) -> relu }
model M() {
    input x: [B, 3, 8, 8]
    output y = x -> layer: [Blk(8), Blk(8) * 2] -> stem: Blk(4) * 2
}"""
    ws = [k for k in keys(text) if k.endswith("weight")]
    assert ws == ["layer.0.conv1.weight", "layer.1.conv1.weight", "layer.2.conv1.weight",
                  "stem.0.conv1.weight", "stem.1.conv1.weight"]


def test_unlabelled_repetition_makes_fresh_copies():
    text = """
model M() {
    input x: [B, 16]
    output y = x -> linear(16) * 3
}"""
    net = build(text)
    assert [k for k in net.state_dict() if k.endswith("weight")] == ["linear_0.weight", "linear_1.weight",
                                                                   "linear_2.weight"]


def test_reusing_a_label_shares_weights():
    text = """
model M() {
    input a: [B, 16]
    input b: [B, 16]
    p = a -> proj: linear(8)
    q = b -> proj
    output y = p + q
}"""
    prog = archc.parse(text, "t.arch")
    assert prog.check().params == 16 * 8 + 8
    net = prog.build()
    assert list(net.state_dict()) == ["proj.weight", "proj.bias"]
    a, b = torch.randn(2, 16), torch.randn(2, 16)
    torch.testing.assert_close(net(a, b), net.proj(a) + net.proj(b))


def test_a_label_used_twice_is_an_error():
    text = """
model M() {
    input x: [B, 16]
    y = x -> proj: linear(8)
    output z = y -> proj: linear(8)
}"""
    with pytest.raises(archc.CompileError) as e:
        archc.parse(text, "t.arch").check()
    assert e.value.diagnostics[0].code == "E0211"


def test_block_defaults_see_earlier_parameters_and_input_shapes():
    text = """
block FF(x, hidden: int = 4 * x.shape[-1], act: op = gelu) {
    return x -> up: linear(hidden) -> act -> down: linear(x.shape[-1])
}
model M() {
    input x: [B, T, 32]
    output y = x -> ff: FF
}"""
    prog = archc.parse(text, "t.arch")
    r = prog.check()
    assert r.params == (32 * 128 + 128) + (128 * 32 + 32)
    assert prog.graph().node(prog.graph().outputs[0]) is not None


def test_symbolic_dims_stay_symbolic_and_bind_with_dims():
    text = """
model M() {
    input x: [B, T * 2, 64]
    output y = x -> linear(32) -> reshape([B, T, 64])
}"""
    prog = archc.parse(text, "t.arch")
    out = prog.check().nodes[-1].shapes[0]
    assert out == "[B, T, 64]"
    assert prog.check(dims={"B": 3, "T": 5}).nodes[-1].shapes[0] == "[3, 5, 64]"
    net = prog.build()
    assert net(torch.randn(3, 10, 64)).shape == (3, 5, 64)


def test_if_for_assert_and_lists_of_tensors():
    text = """
block Down(x, c: int) { return x -> conv(c, 3, stride=2, padding=1) -> relu }
model UNetish(widths: list = [8, 16], deep: bool = true) {
    input x: [B, 3, 16, 16]
    assert len(widths) == 2, "two levels"
    skips = []
    for c in widths {
        skips = skips + [x]
        x = x -> Down(c)
    }
    if deep { x = x -> conv(16, 1) } else { x = x -> identity }
    output y = x
    output first = skips[0]
}"""
    prog = archc.parse(text, "t.arch")
    net = prog.build()
    y, first = net(torch.randn(2, 3, 16, 16))
    assert y.shape == (2, 16, 4, 4) and first.shape == (2, 3, 16, 16)
    assert net.output_names == ("y", "first")
    with pytest.raises(archc.CompileError) as e:
        prog.check(widths=[8])
    assert e.value.diagnostics[0].code == "E0208" and e.value.diagnostics[0].message == "two levels"


def test_models_are_blocks_and_tuples_unpack():
    text = """
model Student(classes: int = 10) {
    input x: [B, 8]
    output logits = x -> fc: linear(classes)
}
model Pair() {
    input x: [B, 16]
    a, b = x -> split(8, dim=1)
    output s = a -> student: Student(classes=4)
    output t = b -> teacher: Student
}"""
    net = build(text, "Pair")
    assert list(net.state_dict()) == ["student.fc.weight", "student.fc.bias", "teacher.fc.weight",
                                      "teacher.fc.bias"]
    s, t = net(torch.randn(2, 16))
    assert s.shape == (2, 4) and t.shape == (2, 10)


def test_direct_calls_and_tensor_operators():
    text = """
model M() {
    input x: [B, 4, 8, 8]
    y = relu(conv(x, 4, 3, padding=1) + x)
    z = concat(y, x, dim=1) * 2 - 1
    output o = -z
}"""
    prog = archc.parse(text, "t.arch")
    net = prog.build()
    x = torch.randn(2, 4, 8, 8)
    y = torch.relu(net.conv_0(x) + x)
    torch.testing.assert_close(net(x), -(torch.cat([y, x], 1) * 2 - 1))


def test_let_constants_and_size_suffixes():
    text = """
let WIDTH = 1K // 1000 * 16
model M() {
    input x: [B, WIDTH]
    output y = x -> linear(WIDTH)
}"""
    assert archc.parse(text, "t.arch").check().params == 16 * 16 + 16


def test_imports_of_files_and_cycles(tmp_path):
    (tmp_path / "common.arch").write_text("block Lin(x, n: int) { return x -> fc: linear(n) }\n")
    (tmp_path / "main.arch").write_text(
        'import "common.arch"\nmodel M() {\n    input x: [B, 4]\n    output y = x -> head: Lin(3)\n}\n')
    assert archc.load(tmp_path / "main.arch").check().params == 15
    (tmp_path / "a.arch").write_text('import "b.arch"\n')
    (tmp_path / "b.arch").write_text('import "a.arch"\n')
    with pytest.raises(archc.CompileError) as e:
        archc.load(tmp_path / "a.arch")
    assert e.value.diagnostics[0].code == "E0102"


def test_model_arguments_are_type_checked():
    text = """
model M(n: int = 4) {
    input x: [B, 4]
    output y = x -> linear(n)
}"""
    with pytest.raises(archc.CompileError) as e:
        archc.parse(text, "t.arch").check(n="four")
    assert e.value.diagnostics[0].code == "E0206"
    assert isinstance(archc.parse(text, "t.arch").check().flops, Sym)


# -- cells (DARTS) in the discrete space -------------------------------------------

CELL_OPS = """
block pool(x, stride: int = 1) {
    assert x.shape[2] >= 8, "pool needs 8 rows"
    return x -> max_pool(3, stride=stride, padding=1)
}

model M() {
    input x: float32[B, 8, 8, 8]
    output y = cell(x, x, nodes=2, ops=[pool, conv(8, 3, padding=1)], keep=1, stride=STRIDE)
}
"""


def test_cell_ops_are_checked_on_a_scratch_graph():
    """Every op of `ops` is tried on each kind of edge, but only the decided ones are in the graph."""
    prog = archc.parse(CELL_OPS.replace("STRIDE", "1"), "t.arch")
    for seed in range(4):
        g = prog.graph("M", sample=seed)
        again = prog.graph("M", sample=seed)
        assert g.decisions == again.decisions  # checking the other ops draws nothing
        paths = [n.path for n in g.nodes()]
        assert not any("probe" in p for p in paths)
        applied = [n.op for n in g.nodes() if n.op in ("max_pool", "conv")]
        assert len(applied) == 2  # one edge per node (keep=1)
    assert prog.space("M").size == 2 * 2 * 3 * 2  # inputs x op, for each of the two nodes


def test_cell_op_that_fails_on_an_undecided_edge_kind():
    """With stride 2 the nodes are 4x4: `pool` on an edge from node 0 fails even when no
    decision takes that edge, as it does in the supernet."""
    src = CELL_OPS.replace("STRIDE", "2")
    prog = archc.parse(src, "t.arch")
    with pytest.raises(archc.CompileError) as relaxed:
        prog.check("M", relax="darts")
    with pytest.raises(archc.CompileError) as discrete:
        prog.check("M", choose={"cell_1.node1.inputs": 0})
    assert discrete.value.diagnostics[0].message == relaxed.value.diagnostics[0].message == "pool needs 8 rows"
