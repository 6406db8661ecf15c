"""The shipped Transformer specs against the networks they reproduce (issue #3).

- std.gpt: GPT2 is transformers' GPT2LMHeadModel (124,439,808 parameters for GPT-2 small,
  weights transfer through archc.interop.hf, same logits); GPT3 checks as 174.6B without
  torch; the built GPT-2 compiles without graph breaks and exports; decoding with the
  key/value cache gives the tokens decoding without it gives (and transformers' generate).
- std.bert: BERT is transformers' BertModel (109,482,240; hidden states and pooler output).
- std.llama: Llama is LlamaForCausalLM (GQA, RoPE, SwiGLU); Llama-2-7B sizes by arguments.
- std.vit: ViT is torchvision's vit_b_16 (86,567,656; strict load, same key order).
- std.transformer: Transformer is torch.nn.Transformer(batch_first=True) (44,140,544).
- std.hybrid: a conv stem feeding Transformer blocks builds and runs.
- Diagnostics for bad transformer specs; `archc build` / `archc render` on every model;
  the renderer folds repeated blocks.

Reference models are built from configs (nothing is downloaded). The large ones are made
without their initializers (transformers' no_init_weights; torch's meta device for
parameter counts) and given deterministic pseudo-random weights (`_fill`), which is much
faster than their own initialization on a small CPU; the weights then go through the name
maps as any checkpoint would.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

import archc
import archc.cli
from archc.compiler.diagnostics import CompileError
from archc.interop import hf

torch = pytest.importorskip("torch")

ROOT = Path(archc.__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpt2_train_step import fill_ as _fill  # noqa: E402  (deterministic weights, shared with the benchmark)
SPECS = Path(archc.__file__).resolve().parent / "specs"
_programs: dict[str, archc.Program] = {}


def program(name: str) -> archc.Program:
    if name not in _programs:
        _programs[name] = archc.load(SPECS / f"{name}.arch")
    return _programs[name]


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())



@contextlib.contextmanager
def no_init():
    """Modules are allocated but not initialized (transformers' no_init_weights patches
    torch.nn.init for everything made inside, archc's modules included)."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        yield


def _close(a, b, tol=1e-4):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# -- GPT-2 and GPT-3 ----------------------------------------------------------------------

GPT2_SIZES = {  # GPT2Config arguments -> transformers' GPT2LMHeadModel parameter count
    "small": ({}, 124_439_808),
    "medium": ({"n_embd": 1024, "n_layer": 24, "n_head": 16}, 354_823_168),
    "large": ({"n_embd": 1280, "n_layer": 36, "n_head": 20}, 774_030_080),
    "xl": ({"n_embd": 1600, "n_layer": 48, "n_head": 25}, 1_557_611_200),
}


@pytest.mark.parametrize("size", GPT2_SIZES)
def test_gpt2_sizes_count_as_transformers_does(size):
    from transformers import GPT2Config, GPT2LMHeadModel

    kw, expected = GPT2_SIZES[size]
    assert program("gpt").check("GPT2", **kw).params == expected
    with torch.device("meta"):
        ref = GPT2LMHeadModel(GPT2Config(**kw))
    ref.tie_weights()
    assert n_params(ref) == expected


@pytest.mark.slow
def test_gpt2_small_matches_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel

    with no_init():
        ref = GPT2LMHeadModel(GPT2Config()).eval()
        net = program("gpt").build("GPT2").eval()
    ref.tie_weights()
    assert n_params(ref) == n_params(net) == program("gpt").check("GPT2").params == 124_439_808
    _fill(ref)
    theirs = ref.state_dict()
    ours = hf.gpt2_from_hf(theirs)
    assert list(ours) == list(net.state_dict())  # the same keys, in the same order
    net.load_state_dict(ours, strict=True)
    assert net.lm_head.weight is net.wte.weight  # still tied after loading
    assert sorted(hf.gpt2_to_hf(net.state_dict())) == sorted(theirs)

    ids = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(ids).logits
        got = net(ids)
    assert want.abs().max() > 0.5  # weights that make a difference
    _close(got, want)


def _tiny_gpt2():
    """A small GPT-2 and transformers' model with the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = dict(vocab_size=97, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    ref = GPT2LMHeadModel(GPT2Config(**cfg)).eval()
    _fill(ref, seed=1, std=0.1)
    net = program("gpt").build("GPT2", **cfg).eval()
    net.load_state_dict(hf.gpt2_from_hf(ref.state_dict()), strict=True)
    return net, ref


def test_gpt2_generation_with_cache_equals_without():
    net, ref = _tiny_gpt2()
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(2))
    a, la = archc.generate(net, prompt, 24, return_logits=True)
    b, lb = archc.generate(net, prompt, 24, use_cache=False, return_logits=True)
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    # and transformers' greedy decoding with its own cache agrees token for token
    theirs = ref.generate(prompt, max_new_tokens=24, do_sample=False, use_cache=True,
                          attention_mask=torch.ones_like(prompt), pad_token_id=0)
    assert torch.equal(a, theirs)


def test_gpt2_decoding_past_the_position_table_fails():
    net, _ = _tiny_gpt2()
    with pytest.raises(ValueError, match="max_len=64"):
        archc.generate(net, torch.zeros(1, 60, dtype=torch.long), 8)


@pytest.mark.slow
def test_gpt2_compiles_without_graph_breaks_and_exports():
    """torch.compile / torch.export of the built GPT-2 (GPT-2 small's widths, n_layer=2 to keep it quick)."""
    torch.manual_seed(0)
    net = program("gpt").build("GPT2", n_layer=2).eval()
    ids = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(net)(ids)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    exported = torch.export.export(net, (ids,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(ids), net(ids), atol=1e-5, rtol=1e-5)


def test_gpt3_checks_without_torch_or_weights():
    code = textwrap.dedent(f"""
        import sys, time, archc
        prog = archc.load({str(SPECS / 'gpt.arch')!r})
        t0 = time.perf_counter()
        report = prog.check("GPT3")
        dt = time.perf_counter() - t0
        assert 'torch' not in sys.modules, 'checking GPT-3 imported torch'
        print(report.params, f"{{dt:.3f}}")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    params, seconds = r.stdout.split()
    print(f"GPT-3 175B: {int(params):,} parameters, Program.check took {float(seconds):.3f} s")
    assert abs(int(params) - 174.6e9) / 174.6e9 < 1e-3
    # 96 x (12·d² + 13·d) + the token and position tables + ln_f, d = 12288
    d = 12288
    assert int(params) == 96 * (12 * d * d + 13 * d) + 50257 * d + 2048 * d + 2 * d == 174_604_259_328


def test_gpt3_build_is_refused_with_a_diagnostic():
    with pytest.raises(CompileError) as e:
        program("gpt").build("GPT3")
    assert e.value.diagnostics[0].code == "E0401"


# -- BERT ------------------------------------------------------------------------------

@pytest.mark.slow
def test_bert_base_matches_transformers():
    from transformers import BertConfig, BertModel

    with no_init():
        ref = BertModel(BertConfig()).eval()
        net = program("bert").build("BERT").eval()
    assert n_params(ref) == n_params(net) == program("bert").check("BERT").params == 109_482_240
    _fill(ref)
    theirs = ref.state_dict()
    net.load_state_dict(hf.bert_from_hf(theirs), strict=True)
    assert sorted(hf.bert_to_hf(net.state_dict())) == sorted(k for k in theirs if k not in (
        "embeddings.position_ids", "embeddings.token_type_ids"))

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30522, (2, 24), generator=g)
    types = torch.randint(0, 2, (2, 24), generator=g)
    with torch.no_grad():
        want = ref(input_ids=ids, token_type_ids=types)
        hidden, pooled = net(ids, types)
    assert net.output_names == ("last_hidden_state", "pooler_output")
    _close(hidden, want.last_hidden_state)
    _close(pooled, want.pooler_output)


def test_bert_task_model_weights_load_through_the_map():
    """A BertFor... model's `bert.` keys load; its task head (`classifier.*`) is left out."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=40)
    torch.manual_seed(0)
    ref = BertForSequenceClassification(BertConfig(**cfg)).eval()
    net = program("bert").build("BERT", **cfg).eval()
    net.load_state_dict(hf.bert_from_hf(ref.state_dict()), strict=True)
    ids = torch.randint(0, 120, (2, 9), generator=torch.Generator().manual_seed(1))
    types = torch.zeros_like(ids)
    with torch.no_grad():
        want = ref.bert(input_ids=ids, token_type_ids=types)
        hidden, pooled = net(ids, types)
    _close(hidden, want.last_hidden_state)
    _close(pooled, want.pooler_output)
    back = hf.bert_to_hf(net.state_dict(), prefix="bert.")
    assert set(back) <= set(ref.state_dict())
    assert "bert.encoder.layer.1.attention.output.LayerNorm.weight" in back


# -- Llama -----------------------------------------------------------------------------

LLAMA_SMALL = dict(vocab_size=100, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_matches_transformers(tie):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**LLAMA_SMALL, max_position_embeddings=128,
                                       tie_word_embeddings=tie)).eval()
    _fill(ref, seed=3, std=0.1)
    net = program("llama").build("Llama", **LLAMA_SMALL, tie_word_embeddings=tie).eval()
    assert n_params(net) == n_params(ref) == program("llama").check(**LLAMA_SMALL, tie_word_embeddings=tie).params
    net.load_state_dict(hf.llama_from_hf(ref.state_dict()), strict=True)
    assert sorted(hf.llama_to_hf(net.state_dict())) == sorted(ref.state_dict())
    assert net.state_dict()["layers.0.self_attn.k_proj.weight"].shape == (32, 64)  # 2 kv heads of 16

    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(ids).logits
        got = net(ids)
    assert want.abs().max() > 0.5
    _close(got, want)
    # incremental decoding with the cache: the same tokens as without, and as transformers'
    a = archc.generate(net, ids[:, :4], 12)
    assert torch.equal(a, archc.generate(net, ids[:, :4], 12, use_cache=False))
    theirs = ref.generate(ids[:, :4], max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids[:, :4]),
                          pad_token_id=0)
    assert torch.equal(a, theirs)


def test_llama_2_7b_size_by_arguments():
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
              num_key_value_heads=32, rms_norm_eps=1e-5)
    assert program("llama").check("Llama", **kw).params == 6_738_415_616
    with torch.device("meta"):
        ref = LlamaForCausalLM(LlamaConfig(**kw))
    assert n_params(ref) == 6_738_415_616
    # the default is a small model with grouped-query attention
    assert program("llama").check("Llama").params == 54_927_872


# -- ViT -------------------------------------------------------------------------------

@pytest.mark.slow
def test_vit_b_16_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    with no_init():
        ref = tv.models.vit_b_16().eval()
        net = program("vit").build("ViT").eval()
    assert n_params(ref) == n_params(net) == program("vit").check("ViT").params == 86_567_656
    _fill(ref)
    assert list(net.state_dict()) == list(ref.state_dict())  # torchvision's keys, in its order
    net.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(x)
        got = net(x)
    assert want.abs().max() > 0.1
    _close(got, want)


@pytest.mark.parametrize("name,kw", [
    ("vit_b_32", dict(patch_size=32)),
    ("vit_l_16", dict(num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096)),
    ("vit_h_14", dict(patch_size=14, num_layers=32, num_heads=16, hidden_dim=1280, mlp_dim=5120)),
])
def test_vit_variants_have_torchvision_names_and_sizes(name, kw):
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):
        ref = getattr(tv.models, name)()
    graph = program("vit").graph("ViT", **kw)
    assert program("vit").check("ViT", **kw).params == n_params(ref)
    from archc.compiler.ops import REGISTRY

    keys = {f"{n.path}.{k}" if k else n.path for n in graph.nodes() if not n.shared
            for k in REGISTRY[n.op].params(n.attrs, graph.in_types(n.id))}
    assert keys == set(ref.state_dict())


def test_vit_depth_beyond_the_written_layers_is_a_diagnostic():
    with pytest.raises(CompileError) as e:
        program("vit").check("ViT", num_layers=33)
    d = e.value.diagnostics[0]
    assert d.code == "E0208" and "at most 32 encoder layers" in d.message


# -- torch.nn.Transformer ----------------------------------------------------------------

def _nn_transformer(**kw):
    with no_init():
        ref = torch.nn.Transformer(batch_first=True, **kw).eval()
    _fill(ref, seed=4, std=0.05)
    return ref


@pytest.mark.slow
def test_transformer_matches_torch():
    prog = program("transformer")
    ref = _nn_transformer()
    with no_init():
        net = prog.build("Transformer").eval()
    assert n_params(ref) == n_params(net) == prog.check("Transformer").params == 44_140_544
    net.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(2, 11, 512, generator=g), torch.randn(2, 7, 512, generator=g)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(7)
    with torch.no_grad():
        want = ref(src, tgt, tgt_mask=mask, tgt_is_causal=True)
        got = net(src, tgt)
    _close(got, want)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_variants_match_torch(norm_first):
    """Without the causal mask (nn.Transformer's default forward), and pre-norm; smaller sizes."""
    kw = dict(d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=96)
    ref = _nn_transformer(norm_first=norm_first, activation="gelu", **kw)
    net = program("transformer").build("Transformer", norm_first=norm_first, causal=False,
                                       activation=archc.cli._value("gelu"), **kw).eval()
    net.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randn(3, 6, 64, generator=g), torch.randn(3, 5, 64, generator=g)
    with torch.no_grad():
        _close(net(src, tgt), ref(src, tgt))


# -- std.hybrid ------------------------------------------------------------------------

def test_hybrid_builds_and_runs():
    prog = program("hybrid")
    assert prog.check("Hybrid").params == 3_228_952
    torch.manual_seed(0)
    net = prog.build("Hybrid", image_size=64, classes=10).eval()
    assert n_params(net) == prog.check("Hybrid", image_size=64, classes=10).params
    with torch.no_grad():
        y = net(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    keys = list(net.state_dict())
    assert "layer2.1.transformer.0.attn.qkv.weight" in keys and "layer2.1.transformer.0.attn.proj.bias" in keys
    assert "layer4.1.conv_fusion.conv.weight" in keys and "layer3.1.conv_1x1.weight" in keys


# -- diagnostics -------------------------------------------------------------------------

def _diagnostic(text: str, at: str):
    """The first diagnostic of a spec, checked to point at the first occurrence of `at`."""
    text = textwrap.dedent(text).lstrip()
    with pytest.raises(CompileError) as e:
        archc.parse(text, "bad.arch").check()
    d = e.value.diagnostics[0]
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if at in ln)
    assert (d.span.file, d.span.line, d.span.column) == ("bad.arch", line, text.splitlines()[line - 1].index(at) + 1)
    assert d.span.end_column - d.span.column == len(at)  # the caret spans the op call
    assert f"bad.arch:{line}:" in d.render()
    return d


def test_heads_not_dividing_the_width():
    d = _diagnostic("""
        model M() {
            input x: float32[B, 16, 48]
            output y = x -> layernorm -> attn: mha(5)
        }
    """, at="mha(5)")
    assert d.code == "E0303" and "heads=5 does not divide the width 48" in d.message


def test_heads_not_dividing_the_width_in_a_spec_argument():
    with pytest.raises(CompileError) as e:
        program("gpt").check("GPT2", n_head=7)
    d = e.value.diagnostics[0]
    assert d.code == "E0303" and d.span.file.endswith("gpt.arch")
    assert "attention(" in Path(d.span.file).read_text().splitlines()[d.span.line - 1]
    assert any("h.0" in n for n in d.notes)  # the chain of block calls that led there


def test_cross_attention_with_mismatched_widths():
    d = _diagnostic("""
        model M() {
            input x: float32[B, 10, 64]
            input memory: float32[B, 7, 32]
            output y = x -> cross: mha(4, kv=memory)
        }
    """, at="mha(4, kv=memory)")
    assert d.code == "E0303" and "width 32" in d.message and "width 64" in d.message


def test_tying_weights_of_different_shapes():
    d = _diagnostic("""
        model M() {
            input tokens: int64[B, T]
            x = tokens -> wte: embedding(100, 64)
            output logits = x -> linear(32) -> lm_head: linear(100, bias=false, tie=wte)
        }
    """, at="linear(100, bias=false, tie=wte)")
    assert d.code == "E0303" and "cannot tie" in d.message and "wte.weight" in d.message


def test_sequence_longer_than_the_position_table():
    d = _diagnostic("""
        model M() {
            input tokens: int64[B, 2048]
            output x = tokens -> wte: embedding(100, 64) -> wpe: learned_pe(1024)
        }
    """, at="learned_pe(1024)")
    assert d.code == "E0304" and "2048 positions is longer than max_len=1024" in d.message
    with pytest.raises(CompileError) as e:  # the same through a shipped spec and a bound length
        program("gpt").check("GPT2", dims={"T": 2048})
    assert e.value.diagnostics[0].code == "E0304"


# -- the command line ------------------------------------------------------------------

MODELS = [("gpt", "GPT2"), ("gpt", "GPT3"), ("bert", "BERT"), ("vit", "ViT"), ("llama", "Llama"),
          ("transformer", "Transformer"), ("hybrid", "Hybrid")]


@pytest.mark.parametrize("spec,model", MODELS, ids=[m for _, m in MODELS])
def test_cli_render(spec, model, tmp_path, capsys):
    out = tmp_path / f"{model}.dot"
    assert archc.cli.main(["render", str(SPECS / f"{spec}.arch"), "--model", model, "--format", "dot",
                           "-o", str(out)]) == 0
    source = out.read_text()
    assert source.startswith("digraph")
    if model in ("GPT2", "GPT3", "BERT", "ViT", "Transformer"):  # big enough to be folded by default
        assert "&#215; " in source


BUILDS = [pytest.param("llama", "Llama", []), pytest.param("hybrid", "Hybrid", []),
          pytest.param("gpt", "GPT2", ["--set", "n_layer=2"]),
          pytest.param("gpt", "GPT2", [], marks=pytest.mark.slow, id="GPT2-small"),
          pytest.param("bert", "BERT", [], marks=pytest.mark.slow),
          pytest.param("vit", "ViT", [], marks=pytest.mark.slow),
          pytest.param("transformer", "Transformer", [], marks=pytest.mark.slow)]


@pytest.mark.parametrize("spec,model,extra", BUILDS)
def test_cli_build(spec, model, extra, tmp_path, capsys):
    assert archc.cli.main(["build", str(SPECS / f"{spec}.arch"), "--model", model, *extra,
                           "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{model}: " in out and "built as torch.nn.Module" in out
    assert (tmp_path / f"{model.lower()}.py").exists()


def test_cli_build_gpt3_is_refused_but_checks(capsys):
    path = str(SPECS / "gpt.arch")
    assert archc.cli.main(["build", path, "--model", "GPT3"]) == 1
    assert "E0401" in capsys.readouterr().err
    assert archc.cli.main(["check", path]) == 0
    assert "174,604,259,328 parameters" in capsys.readouterr().out


# -- folding repeated blocks in the diagram ---------------------------------------------------

NODE = re.compile(r"^\t*(\d+) \[")
EDGE = re.compile(r'^\t*(\d+) -> (\d+) \[')


def _drawn(source: str):
    nodes = {int(m.group(1)) for ln in source.splitlines() if (m := NODE.match(ln))}
    edges = [(int(m.group(1)), int(m.group(2))) for ln in source.splitlines() if (m := EDGE.match(ln))]
    return nodes, edges


def test_fold_draws_48_gpt2_xl_blocks_once():
    from archc.compiler.lower.graphviz import FOLD_ABOVE, render

    graph = program("gpt").graph("GPT2", **GPT2_SIZES["xl"][0])
    full, folded = render(graph, fold=False).source, render(graph).source  # folded by default: it is big
    assert len(graph) > FOLD_ABOVE
    nodes, edges = _drawn(full)
    assert len(nodes) == len(graph)
    nodes, edges = _drawn(folded)
    per_block = sum(1 for n in graph.nodes() if n.path.startswith("h.0."))
    assert len(nodes) == len(graph) - 47 * per_block
    assert all(a in nodes and b in nodes for a, b in edges)  # every edge between drawn nodes
    # each drawn node gets as many edges as it has inputs (links between copies are dropped,
    # the last block's edge to ln_f comes from the first)
    assert Counter(b for _, b in edges) == {n: len(graph.in_values(n)) for n in nodes if graph.in_values(n)}
    assert folded.count("&#215; 48") == 1 and "h.0 &#8230; 47</b> : GPT2Block" in folded
    assert "cluster_h.1" not in folded and "cluster_h.0.attn" in folded
    # the folded block is wired in: embedding -> first block, block -> ln_f
    ln_f = next(n.id for n in graph.nodes() if n.path == "ln_f")
    assert any(b == ln_f and a in nodes for a, b in edges)
    assert render(graph, fold=True).source == folded


def test_fold_is_off_for_small_graphs_and_keeps_distinct_blocks():
    from archc.compiler.lower.graphviz import render

    small = program("gpt").graph("GPT2", n_layer=3)
    assert "&#215;" not in render(small).source  # small: drawn in full by default
    assert "h.0 &#8230; 2</b> : GPT2Block" in render(small, fold=True).source
    # blocks that differ (the first Bottleneck of a stage has a downsample) are not folded into the others
    resnet = archc.load(SPECS / "resnet.arch").graph("ResNet50")
    source = render(resnet, fold=True).source
    assert "layer3.1 &#8230; 5</b> : Bottleneck" in source and "cluster_layer3.0" in source
    assert "layer1.1 &#8230; 2</b> : Bottleneck" in source


def test_fold_shares_the_memory_edges_of_the_decoder():
    """Every decoder layer reads the encoder's output; folded, the edge is drawn once."""
    from archc.compiler.lower.graphviz import render

    graph = program("transformer").graph("Transformer")
    nodes, edges = _drawn(render(graph, fold=True).source)
    enc_norm = next(n.id for n in graph.nodes() if n.path == "encoder.norm")
    assert [b for a, b in edges if a == enc_norm] != []
    assert len([b for a, b in edges if a == enc_norm]) == 1  # into the one drawn cross-attention
    assert all(a in nodes and b in nodes for a, b in edges)


def test_fold_nests():
    """The hybrid's transformer stacks fold inside their stages."""
    from archc.compiler.lower.graphviz import render

    source = render(program("hybrid").graph("Hybrid"), fold=True).source
    for stage, n in (("layer2", 2), ("layer3", 4), ("layer4", 3)):
        assert f"{stage}.1.transformer.0 &#8230; {n - 1}</b> : TransformerBlock" in source
        assert f"&#215; {n}</font>" in source


# -- the name maps ---------------------------------------------------------------------------

def test_name_maps_without_torch():
    code = textwrap.dedent("""
        import sys
        from archc.interop import hf
        sd = {"transformer.wte.weight": 1, "transformer.h.0.attn.bias": 2, "transformer.h.0.attn.masked_bias": 3,
              "transformer.h.0.attn.c_attn.weight": 4, "lm_head.weight": 5}
        assert hf.gpt2_from_hf(sd) == {"wte.weight": 1, "h.0.attn.c_attn.weight": 4, "lm_head.weight": 5}
        assert hf.gpt2_from_hf({"wte.weight": 1})["lm_head.weight"] == 1   # GPT2Model: the tied head
        assert hf.gpt2_to_hf({"wte.weight": 1, "lm_head.weight": 5}) == {"transformer.wte.weight": 1,
                                                                         "lm_head.weight": 5}
        b = {"bert.encoder.layer.3.attention.output.dense.weight": 1, "bert.encoder.layer.3.output.dense.bias": 2,
             "bert.embeddings.position_ids": 3, "cls.predictions.bias": 4, "bert.pooler.dense.weight": 5}
        assert hf.bert_from_hf(b) == {"encoder.layer.3.attention.output_.dense.weight": 1,
                                      "encoder.layer.3.output_.dense.bias": 2, "pooler.dense.weight": 5}
        assert hf.bert_to_hf(hf.bert_from_hf(b), prefix="bert.") == {k: v for k, v in b.items() if v in (1, 2, 5)}
        l = {"model.embed_tokens.weight": 1, "model.rotary_emb.inv_freq": 2, "lm_head.weight": 3}
        assert hf.llama_from_hf(l) == {"embed_tokens.weight": 1, "lm_head.weight": 3}
        assert hf.llama_to_hf(hf.llama_from_hf(l)) == {"model.embed_tokens.weight": 1, "lm_head.weight": 3}
        assert "torch" not in sys.modules
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
