"""The `lora` plan directive (passes/insert_lora.py): adapter nodes in the IR, their counts
(PEFT's own figures), the built modules, freezing, merging, several adapters, diagnostics."""
from __future__ import annotations

import pytest
import torch

import archc
from archc.cli import main
from archc.compiler.passes.count_cost import count_cost
from archc.runtime.lora import LoRAConv, LoRAEmbedding, LoRALinear, lora_layers

SMALL = "vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2"
GPT = f"""
import std.gpt

finetune Attn for GPT2({SMALL}) {{
    freeze("*")
    lora(on="h.*.attn.c_attn", r=4, alpha=8)
}}
finetune NoFreeze for GPT2({SMALL}) {{
    lora(on="h.*.attn.c_attn", r=4, alpha=8)
}}
finetune Two for GPT2({SMALL}) {{
    freeze("*")
    lora(on="h.*.attn.c_attn", r=4, alpha=8)
    lora(on="h.*.attn.c_attn", r=2, alpha=4, name="second")
}}
finetune Switch for GPT2({SMALL}) {{
    freeze("*")
    lora(on="h.*.attn.c_attn", r=4, alpha=8)
    lora(on="h.*.attn.c_attn", r=2, alpha=4, name="second")
    set_adapter("second")
}}
finetune Merged for GPT2({SMALL}) {{
    freeze("*")
    lora(on="**.c_attn, **.c_proj", r=4, alpha=8)
    merge()
}}
finetune Unmerged for GPT2({SMALL}) {{
    freeze("*")
    lora(on="**.c_attn, **.c_proj", r=4, alpha=8)
    merge()
    unmerge()
}}
finetune Ckpt for GPT2({SMALL}) {{
    freeze("*")
    checkpoint(on="block:GPT2Block")
    lora(on="h.*.attn.c_attn", r=4, alpha=8)
}}
finetune Embed for GPT2({SMALL}) {{
    freeze("*")
    lora(on="wte", r=4, alpha=8)
}}
"""


@pytest.fixture(scope="module")
def gpt():
    return archc.parse(GPT, "gpt.arch")


# -- PEFT's figures ------------------------------------------------------------------------------

FIGURES = """
import std.gpt
import std.bert
finetune A for GPT2() {
    freeze("*")
    lora(on="h.*.attn.c_attn", r=8, alpha=16)
}
finetune B for BERT() {
    freeze("*")
    lora(on="**.query, **.value", r=8, alpha=16)
}
finetune C for GPT2() {
    freeze("*")
    lora(on="**.c_attn, **.c_proj", r=8, alpha=16, rank_pattern=[["**.c_proj", 4]])
}
finetune D for GPT2() {
    freeze("*")
    lora(on="all-linear", r=8, alpha=16)
}
finetune E for GPT2() {
    freeze("*")
    lora(on="h.*.attn.c_attn", r=8, alpha=16)
    lora(on="h.*.attn.c_attn", r=4, alpha=8, name="second")
}
"""


@pytest.mark.parametrize("plan,trainable,total", [
    ("A", 294_912, 124_734_720),  # GPT-2 small, fused c_attn, r=8
    ("B", 294_912, 109_777_152),  # BERT-base, query and value
    ("C", 552_960, 124_992_768),  # c_attn r=8, c_proj r=4 (rank_pattern)
    ("D", 1_179_648, 125_619_456),  # all-linear (the head left out)
    ("E", 294_912, 124_734_720 + 147_456),  # a second adapter at r=4: kept, inactive
])
def test_counts_are_peft_s(plan, trainable, total):
    """PEFT's get_nb_trainable_parameters() on transformers' default GPT2/Bert models
    (tests/interop/test_peft.py computes them with PEFT itself)."""
    report = archc.parse(FIGURES, "figures.arch").check(plan=plan)
    assert (report.trainable, report.params) == (trainable, total)


# -- the IR ----------------------------------------------------------------------------------------

def test_adapters_are_nodes_after_the_frozen_layer(gpt):
    graph = gpt.graph(plan="Attn")
    graph.verify()
    at = [n for n in graph.nodes() if n.path == "h.0.attn.c_attn"]
    assert [n.op for n in at] == ["linear", "lora"]
    base, lora = at
    assert base.meta["frozen"] is True and lora.meta["frozen"] is False and lora.meta["lora"] is True
    assert [v.node for v in graph.in_values(lora.id)] == [base.id, graph.in_values(base.id)[0].node]
    assert [u for u, _ in graph.users(base.id)] == [lora.id]  # the split now reads the adapted output
    report = count_cost(graph)
    row = next(r for r in report.nodes if r.op == "lora" and r.path == "h.0.attn.c_attn")
    assert row.params == 4 * 16 + 48 * 4 and row.flops != 0
    assert graph.plan.one("lora").matched == ["h.0.attn.c_attn", "h.1.attn.c_attn"]


def test_built_module_keeps_base_keys_and_adds_peft_named_adapters(gpt):
    net = gpt.build(plan="Attn")
    keys = list(net.state_dict())
    assert "h.0.attn.c_attn.weight" in keys and "h.0.attn.c_attn.bias" in keys
    assert "h.0.attn.c_attn.lora_A.default.weight" in keys and "h.0.attn.c_attn.lora_B.default.weight" in keys
    layer = net.h[0].attn.c_attn
    assert isinstance(layer, LoRALinear) and layer.fan_in_fan_out  # GPT-2's [in, out] layout, one fused adapter
    assert layer.lora_A["default"].weight.shape == (4, 16) and layer.lora_B["default"].weight.shape == (48, 4)
    report = gpt.check(plan="Attn")
    assert sum(p.numel() for p in net.parameters()) == report.params
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == report.trainable == 2 * (64 + 192)
    assert net.lm_head.weight is net.wte.weight  # tied weights stay one tensor


def test_a_fresh_adapter_changes_nothing_exactly(gpt):
    torch.manual_seed(0)
    plain = gpt.build("GPT2", args=dict(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()
    adapted = gpt.build(plan="Attn").eval()
    missing = adapted.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert all(".lora_" in k for k in missing)
    ids = torch.randint(0, 50, (2, 6))
    assert torch.equal(adapted(ids), plain(ids))


def test_one_step_leaves_frozen_parameters_bit_identical_without_grads_or_state(gpt):
    torch.manual_seed(0)
    net = gpt.build(plan="Attn")
    net.train()
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=0.1)
    ids = torch.randint(0, 50, (2, 6))
    for _ in range(2):  # B starts at zero: the second step moves A too
        opt.zero_grad()
        net(ids).square().mean().backward()
        opt.step()
    for name, p in net.named_parameters():
        if ".lora_" in name:
            assert p.requires_grad and not torch.equal(p, before[name]) and p in opt.state, name
        else:
            assert p.grad is None and torch.equal(p, before[name]) and p not in opt.state, name


def test_without_freeze_only_the_adapted_layer_is_frozen(gpt):
    report = gpt.check(plan="NoFreeze")
    base = gpt.check("GPT2", args=dict(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2))
    assert report.params == base.params + 2 * (64 + 192)
    assert report.trainable == base.params - 2 * (16 * 48 + 48) + 2 * (64 + 192)


def test_several_adapters_and_set_adapter(gpt):
    two, switch = gpt.check(plan="Two"), gpt.check(plan="Switch")
    assert two.params == switch.params
    assert two.trainable == 2 * (4 * 16 + 48 * 4) and switch.trainable == 2 * (2 * 16 + 48 * 2)
    net = gpt.build(plan="Switch")
    layer = net.h[1].attn.c_attn
    assert layer.adapters == ["default", "second"] and layer.active_adapters == ["second"]
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == \
        ["lora_A.second.weight", "lora_B.second.weight"]


def test_merge_in_a_plan(gpt):
    merged, unmerged = gpt.check(plan="Merged"), gpt.check(plan="Unmerged")
    assert merged.params == unmerged.params and merged.trainable == 0 and unmerged.trainable > 0
    assert sum(n.flops for n in merged.nodes if n.op == "lora") == 0
    assert sum(n.flops for n in unmerged.nodes if n.op == "lora") != 0
    net = gpt.build(plan="Merged")
    assert all(m.merged for _, m in lora_layers(net))
    assert not any(m.merged for _, m in lora_layers(gpt.build(plan="Unmerged")))


def test_checkpointed_blocks_keep_their_adapters_inside(gpt):
    graph = gpt.graph(plan="Ckpt")
    lora = next(n for n in graph.nodes() if n.op == "lora")
    assert lora.meta["checkpoint"] == graph.node(graph.in_values(lora.id)[0].node).meta["checkpoint"]
    src = gpt.source(plan="Ckpt")
    assert src.count("torch.utils.checkpoint.checkpoint(") == 2
    net = gpt.build(plan="Ckpt")
    net(torch.randint(0, 50, (1, 4))).sum().backward()
    assert net.h[0].attn.c_attn.lora_A["default"].weight.grad is not None


def test_embedding_and_conv_adapters():
    spec = """
model Net() {
    input x: float32[B, 3, 16, 16]
    input ids: int64[B, T]
    h = x -> stem: conv(8, 3, padding=1) -> relu -> body: [conv(8, 3, stride=2, padding=1), bn, relu]
             -> dw: conv(8, 3, padding=1, groups=8) -> global_avg_pool -> flatten
    e = ids -> emb: embedding(40, 8, padding_idx=0) -> mean(dim=1)
    output y = (h + e) -> fc: linear(5)
}
finetune Tune for Net() {
    freeze("*")
    lora(on="stem, body, emb, fc", r=2, alpha=4)
}
"""
    prog = archc.parse(spec, "net.arch")
    report = prog.check(plan="Tune")
    per = {"stem": 2 * 3 * 9 + 8 * 2, "body.0": 2 * 8 * 9 + 8 * 2, "emb": 2 * 40 + 8 * 2, "fc": 2 * 8 + 5 * 2}
    assert report.trainable == sum(per.values())
    assert prog.graph(plan="Tune").plan.one("lora").matched == ["stem", "body.0", "emb", "fc"]  # not bn, dw
    torch.manual_seed(0)
    net = prog.build(plan="Tune").eval()
    assert isinstance(net.stem, LoRAConv) and isinstance(net.emb, LoRAEmbedding)
    assert isinstance(net.body[0], LoRAConv) and not isinstance(net.dw, LoRAConv)
    assert net.emb.padding_idx == 0
    plain = prog.build().eval()
    net.load_state_dict(plain.state_dict(), strict=False)
    x, ids = torch.randn(2, 3, 16, 16), torch.randint(0, 40, (2, 5))
    assert torch.equal(net(x, ids), plain(x, ids))


def test_a_reused_module_gets_one_adapter():
    spec = """
model Net() {
    input x: float32[B, 8]
    h = x -> proj: linear(8) -> relu -> proj
    output y = h
}
finetune Tune for Net() {
    lora(on="proj", r=2)
}
"""
    prog = archc.parse(spec, "net.arch")
    graph = prog.graph(plan="Tune")
    loras = [n for n in graph.nodes() if n.op == "lora"]
    assert [n.shared for n in loras] == [False, True]
    assert prog.check(plan="Tune").params == 8 * 8 + 8 + 2 * 8 + 8 * 2
    net = prog.build(plan="Tune")
    assert sum(p.numel() for p in net.parameters()) == 8 * 8 + 8 + 32


# -- diagnostics -----------------------------------------------------------------------------------

NET = """model Net() {
    input x: float32[B, 16]
    h = x -> fc: linear(32) -> norm: layernorm
    output y = h -> out: linear(4)
}
"""


@pytest.mark.parametrize("directives,code,line,col", [
    ('lora(on="norm", r=4)', "E0701", 8, 10),
    ('lora(on="op:layernorm", r=4)', "E0701", 8, 10),
    ('lora(on="fc", r=4, dora=true)\n    lora(on="out", r=2, name="b")', None, 0, 0),
    ('lora(on="out", r=8)', "E0702", 8, 20),
    ('lora(on="fc, out", r=4, rank_pattern=[["out", 6]])', "E0702", 8, 29),
    ('lora(on="fc", r=4)\n    lora(on="fc", r=2)', "E0703", 9, 5),
    ('lora(on="fc", r=4)\n    lora(on="fc", r=2, name="default")', "E0703", 9, 24),
    ('lora(on="fc", r=4)\n    merge("other")', "E0704", 9, 11),
    ('lora(on="fc", r=4)\n    set_adapter("b")', "E0704", 9, 17),
    ('lora(on="fcc", r=4)', "E0503", 8, 10),
    ('lora(on="fc", r=0)', "E0502", 8, 19),
    ('lora(on="fc", r=4, name="a.b")', "E0502", 8, 24),
    ('lora(on="fc", rank_pattern=[["nothing", 2]])', "E0503", 8, 19),
])
def test_diagnostics(directives, code, line, col):
    prog_text = NET + "\nfinetune Tune for Net() {\n    " + directives + "\n}\n"
    prog = archc.parse(prog_text, "net.arch")
    if code is None:
        prog.graph(plan="Tune")
        return
    with pytest.raises(archc.CompileError) as e:
        prog.graph(plan="Tune")
    d = e.value.diagnostics[0]
    assert (d.code, d.span.line, d.span.column) == (code, line, col), d.render()


def test_dora_on_an_embedding_and_lora_on_a_grouped_conv_are_e0701():
    spec = """model Net() {
    input x: float32[B, 4, 8, 8]
    input ids: int64[B, T]
    h = x -> dw: conv(4, 3, padding=1, groups=4) -> global_avg_pool -> flatten
    output y = h + (ids -> emb: embedding(10, 4) -> mean(dim=1))
}
finetune A for Net() {
    lora(on="emb", r=2, dora=true)
}
finetune B for Net() {
    lora(on="dw", r=2)
}
finetune C for Net() {
    lora(on="op:relu", r=2)
}
"""
    prog = archc.parse(spec, "net.arch")
    for plan, words in (("A", "DoRA adapts linear layers only"), ("B", "groups=1")):
        with pytest.raises(archc.CompileError) as e:
            prog.graph(plan=plan)
        assert e.value.diagnostics[0].code == "E0701" and words in e.value.diagnostics[0].label
    with pytest.raises(archc.CompileError) as e:
        prog.graph(plan="C")
    assert e.value.diagnostics[0].code == "E0503"  # no relu at all: nothing matched


def test_merging_a_tied_layer_is_refused():
    spec = """model Net() {
    input ids: int64[B, T]
    x = ids -> wte: embedding(100, 16)
    output logits = x -> head: linear(100, bias=false, tie=wte)
}
finetune Head for Net() {
    lora(on="head", r=4)
    merge()
}
finetune Emb for Net() {
    lora(on="wte", r=4)
    merge()
}
finetune Fine for Net() {
    lora(on="wte, head", r=4)
}
"""
    prog = archc.parse(spec, "net.arch")
    for plan in ("Head", "Emb"):
        with pytest.raises(archc.CompileError) as e:
            prog.graph(plan=plan)
        assert e.value.diagnostics[0].code == "E0705"
    net = prog.build(plan="Fine")
    assert net.head.weight is net.wte.weight and net.head.tied and net.wte.tied
    with pytest.raises(RuntimeError, match="tied"):
        net.head.merge()


# -- tools ---------------------------------------------------------------------------------------

def test_check_lists_what_each_directive_matched(tmp_path, capsys):
    f = tmp_path / "net.arch"
    f.write_text(NET + '\nfinetune Tune for Net() {\n    freeze("*")\n    lora(on="fc, out", r=2)\n'
                       '    unfreeze("norm")\n}\n')
    assert main(["check", str(f), "--plan", "Tune"]) == 0
    out = capsys.readouterr().out
    assert 'freeze("*")' in out and "fc, norm, out" in out
    assert "lora" in out and "fc, out" in out


def test_memory_estimate_and_render_see_the_adapters(gpt):
    from archc.compiler.lower.graphviz import render
    from archc.compiler.passes.estimate_memory import estimate_memory

    graph = gpt.graph(plan="Attn")
    mem = estimate_memory(graph, graph.plan, dims={"B": 2, "T": 8}, solve=False)
    assert mem.trainable_count == gpt.check(plan="Attn").trainable
    frozen = estimate_memory(gpt.graph(plan="Embed"), None, dims={"B": 2, "T": 8}, solve=False)
    assert frozen.params_count == gpt.check(plan="Embed").params
    dot = render(graph).source
    assert "@lora" in dot and "@frozen" in dot
    ck = render(gpt.graph(plan="Ckpt")).source
    assert "@checkpoint" in ck
