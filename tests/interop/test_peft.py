"""archc.interop.peft: LoRA adapters to and from PEFT adapter directories, checked against
PEFT itself on transformers' GPT-2 and BERT."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import archc
from archc.interop import hf
from archc.interop.peft import export_peft, load_peft, lora_plan, read_peft
from archc.runtime.lora import load_base, lora_layers, merge, unmerge
from tests.compiler.passes.test_insert_lora import FIGURES

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TINY_GPT = dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)
TINY_BERT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=32)


def _args(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _gpt2(**extra):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(**TINY_GPT, **extra)).eval()


def _randomise_adapters(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(net):
            for name, p in m.named_parameters():
                if "lora" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "magnitude" in name else 0.0))


# -- PEFT's own figures ------------------------------------------------------------------------------

def test_archc_counts_are_peft_s_counts():
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    def peft_counts(make, config, second=None):
        with torch.device("meta"):
            model = make()
        pm = get_peft_model(model, config)
        if second is not None:
            pm.add_adapter("second", second)
        return pm.get_nb_trainable_parameters()

    gpt2 = lambda: GPT2LMHeadModel(GPT2Config())  # noqa: E731
    cases = {
        "A": peft_counts(gpt2, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"])),
        "B": peft_counts(lambda: BertModel(BertConfig()), LoraConfig(r=8, lora_alpha=16,
                                                                    target_modules=["query", "value"])),
        "C": peft_counts(gpt2, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj"],
                                          rank_pattern={"c_proj": 4})),
        "D": peft_counts(gpt2, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")),
        "E": peft_counts(gpt2, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"]),
                         LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"])),
    }
    assert cases["A"] == (294_912, 124_734_720) and cases["B"] == (294_912, 109_777_152)
    assert cases["C"][0] == 552_960 and cases["D"][0] == 1_179_648 and cases["E"][1] - cases["A"][1] == 147_456
    prog = archc.parse(FIGURES, "figures.arch")  # the same plans test_insert_lora.py checks
    for plan, (trainable, total) in cases.items():
        report = prog.check(plan=plan)
        assert (report.trainable, report.params) == (trainable, total), plan


# -- exporting ------------------------------------------------------------------------------------

GPT_PLANS = f"""
import std.gpt
finetune Attn for GPT2({_args(TINY_GPT)}) {{
    freeze("*")
    lora(on="h.*.attn.c_attn", r=8, alpha=16)
}}
finetune Mixed for GPT2({_args(TINY_GPT)}) {{
    freeze("*")
    lora(on="**.c_attn, **.c_proj, wte", r=4, alpha=16, rank_pattern=[["**.mlp.c_proj", 2]],
         alpha_pattern=[["h.1.attn.c_attn", 8]])
}}
finetune Dora for GPT2({_args(TINY_GPT)}) {{
    freeze("*")
    lora(on="all-linear", r=4, alpha=8, dora=true, rslora=true)
}}
finetune Second for GPT2({_args(TINY_GPT)}) {{
    freeze("*")
    lora(on="h.*.attn.c_attn", r=8, alpha=16)
    lora(on="h.*.mlp.c_fc", r=2, alpha=4, name="second")
    set_adapter("second")
}}
"""


@pytest.mark.parametrize("plan,adapter", [("Attn", "default"), ("Mixed", "default"), ("Dora", "default"),
                                          ("Second", "second")])
def test_exported_adapter_gives_archc_s_logits_in_peft(tmp_path, plan, adapter):
    from peft import PeftModel

    torch.manual_seed(0)
    ref = _gpt2()
    base = copy.deepcopy(ref.state_dict())
    net = archc.parse(GPT_PLANS, "gpt.arch").build(plan=plan).eval()
    load_base(net, hf.gpt2_from_hf(base))
    _randomise_adapters(net)
    out = export_peft(net, tmp_path / "adapter", adapter=adapter, family="gpt2")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] is True
    ids = torch.randint(0, 64, (2, 7))
    want = net(ids)
    pm = PeftModel.from_pretrained(ref, out).eval()
    torch.testing.assert_close(pm(ids).logits, want, rtol=1e-4, atol=1e-4)
    if plan == "Mixed":
        assert config["target_modules"] == ["c_attn", "c_proj", "wte"]
        assert config["rank_pattern"] == {"mlp.c_proj": 2} and config["alpha_pattern"] == {"h.1.attn.c_attn": 8}
        return  # the adapter on wte is tied to the head: never merged
    # merging gives the unmerged logits, in archc and in PEFT
    merge(net)
    torch.testing.assert_close(net(ids), want, rtol=1e-4, atol=1e-4)
    unmerge(net)
    torch.testing.assert_close(net(ids), want, rtol=1e-5, atol=1e-5)
    merged = pm.merge_and_unload()
    torch.testing.assert_close(merged(ids).logits, want, rtol=1e-4, atol=1e-4)


def test_bert_query_value_adapter_in_peft(tmp_path):
    from peft import PeftModel
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    ref = BertModel(BertConfig(**TINY_BERT)).eval()
    base = copy.deepcopy(ref.state_dict())
    spec = f"""
import std.bert
finetune QV for BERT({_args(TINY_BERT)}) {{
    freeze("*")
    lora(on="**.query, **.value", r=8, alpha=16)
}}
"""
    net = archc.parse(spec, "bert.arch").build(plan="QV").eval()
    load_base(net, hf.bert_from_hf(base))
    _randomise_adapters(net)
    out = export_peft(net, tmp_path / "qv", family="bert")
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ["query", "value"]
    ids, types = torch.randint(0, 64, (2, 9)), torch.zeros(2, 9, dtype=torch.long)
    hidden, pooled = net(ids, types)
    got = PeftModel.from_pretrained(ref, out).eval()(input_ids=ids, token_type_ids=types)
    torch.testing.assert_close(got.last_hidden_state, hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.pooler_output, pooled, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_gpt2_small_fused_attention_adapter_in_peft(tmp_path):
    """GPT-2 small from its default configuration, r=8 on c_attn: logits to 1e-4."""
    from peft import PeftModel
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    ref = GPT2LMHeadModel(GPT2Config()).eval()
    base = copy.deepcopy(ref.state_dict())
    spec = 'import std.gpt\nfinetune L for GPT2() {\n    freeze("*")\n    lora(on="h.*.attn.c_attn", r=8, alpha=16)\n}\n'
    prog = archc.parse(spec, "gpt.arch")
    net = prog.build(plan="L").eval()
    load_base(net, hf.gpt2_from_hf(base))
    del base
    _randomise_adapters(net)
    report = prog.check(plan="L")
    assert (report.trainable, report.params) == (294_912, 124_734_720)
    ids = torch.randint(0, 50257, (1, 8))
    want = net(ids)
    pm = PeftModel.from_pretrained(ref, export_peft(net, tmp_path / "a", family="gpt2")).eval()
    assert pm.get_nb_trainable_parameters() == (0, 124_734_720)  # loaded for inference
    torch.testing.assert_close(pm(ids).logits, want, rtol=1e-4, atol=1e-4)


# -- importing ------------------------------------------------------------------------------------

def test_importing_a_peft_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    ref = _gpt2()
    base = copy.deepcopy(ref.state_dict())
    pm = get_peft_model(ref, LoraConfig(r=4, lora_alpha=12, target_modules=["c_attn", "c_fc"],
                                        rank_pattern={"c_fc": 2}, alpha_pattern={"c_fc": 3},
                                        fan_in_fan_out=True))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    pm.save_pretrained(tmp_path / "theirs")
    pm.eval()
    ids = torch.randint(0, 64, (2, 5))
    want = pm(ids).logits

    config, layers = read_peft(tmp_path / "theirs", family="gpt2")
    assert set(layers) == {f"h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "mlp.c_fc")}
    assert layers["h.0.mlp.c_fc"]["r"] == 2 and layers["h.0.mlp.c_fc"]["alpha"] == 3
    lines = lora_plan(tmp_path / "theirs", family="gpt2")
    assert lines == ('lora(on="h.0.attn.c_attn, h.1.attn.c_attn", r=4, alpha=12)\n'
                     'lora(on="h.0.mlp.c_fc, h.1.mlp.c_fc", r=2, alpha=3)')
    spec = f"import std.gpt\nfinetune Imported for GPT2({_args(TINY_GPT)}) {{\n    freeze(\"*\")\n    " \
           + lines.replace("\n", "\n    ") + "\n}\n"
    net = archc.parse(spec, "gpt.arch").build(plan="Imported").eval()
    load_base(net, hf.gpt2_from_hf(base))
    assert load_peft(net, tmp_path / "theirs", family="gpt2") == sorted(layers, key=list(layers).index)
    torch.testing.assert_close(net(ids), want, rtol=1e-4, atol=1e-4)

    bare = archc.parse(GPT_PLANS, "gpt.arch").build(plan="Attn")  # no adapter on c_fc
    with pytest.raises(ValueError, match="has no adapter"):
        load_peft(bare, tmp_path / "theirs", family="gpt2")


def test_export_without_the_adapter_says_so(tmp_path):
    net = archc.parse(GPT_PLANS, "gpt.arch").build(plan="Attn")
    with pytest.raises(ValueError, match="no adapter named 'other'"):
        export_peft(net, tmp_path / "x", adapter="other", family="gpt2")
