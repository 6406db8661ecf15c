"""The channel-coupling analysis behind structured pruning (archc/compiler/passes/prune_groups.py).

No torch here: which channels are tied, which are locked, and the graph pruning
rewrites. tests/compress checks the pruned networks numerically."""
from __future__ import annotations

import archc
from archc.compiler.passes.prune_groups import analyze, prune_graph
from tests.compress.specs import ATTENTION_MHA, CHUNK, CONCAT, DEPTHWISE, GROUPED, HEADS, RESIDUAL, SHUFFLE, SPLIT


def _graph(text):
    return archc.parse(text).graph()


def _group_of(an, path):
    """The group holding the outputs of the node at `path`."""
    nid = next(n.id for n in an.graph.nodes() if n.path == path)
    return next(g for g in an.groups if nid in g.out_nodes)


def _layers(an, grp):
    return sorted(an.graph.node(n).path for n in grp.out_nodes)


def test_residual_add_ties_both_branches():
    an = analyze(_graph(RESIDUAL))
    grp = _group_of(an, "stem")
    assert _layers(an, grp) == ["c2", "stem"]
    assert len(grp.atoms) == 16 and not grp.locked
    assert _layers(an, _group_of(an, "c1")) == ["c1"]
    keys = {m.key for m in grp.members}
    assert {"stem.weight", "sbn.weight", "b2.running_var", "c1.weight", "fc.weight"} <= keys


def test_model_output_is_locked():
    an = analyze(_graph(RESIDUAL))
    fc = _group_of(an, "fc")
    assert len(fc.locked) == len(fc.atoms) == 5 and not fc.free


def test_concat_lays_groups_side_by_side():
    an = analyze(_graph(CONCAT))
    grp = _group_of(an, "ca")
    assert _layers(an, grp) == ["ca", "cb"] and len(grp.atoms) == 20
    removed = set(grp.atoms[:4]) | set(grp.atoms[10:13])
    g = prune_graph(an, removed)
    widths = {n.path: n.attrs.out for n in g.nodes() if n.op == "conv"}
    assert widths == {"ca": 4, "cb": 9, "mix": 16}
    mix = next(n for n in g.nodes() if n.path == "mix")
    assert g.in_types(mix.id)[0].shape[1] == 13
    g.verify()


def test_split_sizes_are_rewritten():
    an = analyze(_graph(SPLIT))
    grp = _group_of(an, "c1")
    removed = {grp.atoms[0], grp.atoms[1], grp.atoms[20]}
    g = prune_graph(an, removed)
    split = next(n for n in g.nodes() if n.op == "split")
    assert split.attrs.sizes == (6, 15)


def test_chunk_keeps_an_int_size_when_the_pieces_stay_equal():
    an = analyze(_graph(CHUNK))
    grp = _group_of(an, "c1")
    g = prune_graph(an, {grp.atoms[0], grp.atoms[9]})
    assert next(n for n in g.nodes() if n.op == "split").attrs.sizes == 7
    g = prune_graph(an, {grp.atoms[0]})
    assert next(n for n in g.nodes() if n.op == "split").attrs.sizes == (7, 8)


def test_channel_shuffle_prunes_a_position_in_every_group():
    an = analyze(_graph(SHUFFLE))
    grp = _group_of(an, "c1")
    assert len(grp.atoms) == 4  # 16 channels = 4 groups x 4 positions
    assert set(grp.size.values()) == {4}
    g = prune_graph(an, {grp.atoms[0]})
    assert next(n for n in g.nodes() if n.path == "c1").attrs.out == 12


def test_depthwise_loses_whole_groups():
    an = analyze(_graph(DEPTHWISE))
    grp = _group_of(an, "c1")
    assert _layers(an, grp) == ["c1", "dw"] and len(grp.atoms) == 16
    g = prune_graph(an, set(grp.atoms[:6]))
    dw = next(n for n in g.nodes() if n.path == "dw")
    assert (dw.attrs.out, dw.attrs.groups) == (20, 10)


def test_grouped_conv_keeps_equal_groups():
    an = analyze(_graph(GROUPED))
    grp = _group_of(an, "c1")
    assert len(grp.atoms) == 4  # 16 inputs in 4 groups: position j of every group is one atom
    gc = _group_of(an, "gc")
    assert len(gc.atoms) == 6
    g = prune_graph(an, {grp.atoms[0], gc.atoms[0], gc.atoms[1]})
    node = next(n for n in g.nodes() if n.path == "gc")
    assert (node.attrs.out, node.attrs.groups) == (16, 4)
    assert g.in_types(node.id)[0].shape[1] == 12


def test_attention_heads_go_whole():
    an = analyze(_graph(HEADS))
    grp = _group_of(an, "q_proj")
    assert _layers(an, grp) == ["k_proj", "q_proj", "v_proj"]
    assert len(grp.atoms) == 4 and set(grp.size.values()) == {8}
    g = prune_graph(an, {grp.atoms[1]})
    att = next(n for n in g.nodes() if n.op == "attention")
    assert att.attrs.heads == 3
    assert next(n for n in g.nodes() if n.path == "q_proj").attrs.out == 24


def test_mha_width_is_locked():
    an = analyze(_graph(ATTENTION_MHA))
    grp = _group_of(an, "embed")
    assert not grp.free
    assert any("mha" in why for why in an.notes.values())


def test_choose_per_layer_and_global():
    an = analyze(_graph(RESIDUAL))
    groups = [g for g in an.groups if g.free]
    removed = an.choose(groups, 0.5)
    assert len(removed) == 8 + 6
    scores = {a: 1.0 for g in groups for a in g.atoms}
    low = groups[0].atoms[:10]
    scores.update({a: 0.0 for a in low})
    removed = an.choose(groups, 0.5, scores, scope="global")
    assert set(low) <= removed and len(removed) == 14
    assert an.choose(groups, 0.0) == set()


def test_keep_indices_name_every_sliced_tensor():
    an = analyze(_graph(RESIDUAL))
    grp = _group_of(an, "stem")
    keep = an.keep_indices({grp.atoms[3]})
    assert keep["stem.weight"] == {0: [i for i in range(16) if i != 3]}
    assert keep["c1.weight"] == {1: [i for i in range(16) if i != 3]}
    assert set(keep["sbn.running_mean"]) == {0}
