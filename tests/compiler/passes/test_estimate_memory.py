"""The memory pass on shapes alone: formulas from the literature, ZeRO's model states,
the largest batch, speed, diagnostics and the `archc mem` command. (Estimates against
real PyTorch measurements are in tests/runtime/test_measure.py.)"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

import archc
from archc.cli import main
from archc.compiler import devices
from archc.compiler.diagnostics import CompileError
from archc.compiler.passes.estimate_memory import estimate_memory, settings_from_plan

ROOT = Path(__file__).resolve().parents[3]
SPECS = ROOT / "archc" / "specs"
sys.path.insert(0, str(ROOT / "benchmarks"))
from memory_accuracy import GPT_SPEC  # noqa: E402  (the inline GPT the benchmarks use)


def gpt(plan: str, **model):
    """The inline GPT spec with a `train P` plan; returns (program, symbolic graph, plan)."""
    args = ", ".join(f"{k}={v}" for k, v in model.items())
    prog = archc.parse(GPT_SPEC + f"\ntrain P for GPT({args}) {{\n{plan}\n}}\n", "<gpt>")
    p = prog.plan("P")
    return prog, prog.graph("GPT", args=p.args), p


def spec(file: str, plan: str, model: str, args: str = ""):
    prog = archc.parse((SPECS / file).read_text() + f"\ntrain P for {model}({args}) {{\n{plan}\n}}\n",
                       str(SPECS / file))
    p = prog.plan("P")
    return prog, prog.graph(model, args=p.args), p


# -- devices ----------------------------------------------------------------------------

def test_device_table_has_the_common_cards():
    sizes = {round(d.memory / 2**30) for d in devices.DEVICES.values() if d.memory}
    for gb in (16, 24, 40, 48, 80, 140):  # 141 GB (H200) is 140 GiB
        assert any(abs(s - gb) <= 2 for s in sizes), gb
    cpu = devices.lookup("cpu")
    assert cpu.kind == "cpu" and cpu.memory is None and cpu.dropout_mask_bytes is None
    a100 = devices.lookup("A100-80GB")
    assert a100.dropout_mask_bytes == 1 and a100.alloc_round == devices.CUDA_ALLOC_ROUND
    assert devices.parse_bytes("24GiB") == 24 * 2**30 and devices.parse_bytes("80GB") == 80 * 10**9


def test_attention_kernel_rules():
    cpu, cuda = devices.lookup("cpu"), devices.lookup("h100-80gb")
    assert cpu.attention_kernel(0.0, True) == "fused"
    assert cpu.attention_kernel(0.1, True) == "composite"  # no dropout in the CPU flash kernel
    assert cuda.attention_kernel(0.1, True) == "fused"
    assert devices.with_overrides(cuda, attention="composite").attention_kernel(0.1, True) == "composite"


# -- Korthikanti et al.: activations per transformer layer -----------------------------------

S, B, H, A = 512, 2, 512, 8  # sequence, batch, width, heads


@pytest.mark.parametrize("ckpt, per_layer", [
    ("", S * B * H * (34 + 5 * A * S / H)),  # no recomputation
    ('checkpoint(on="op:attention")', 34 * S * B * H),  # selective: the attention core recomputed
    ('checkpoint(on="block:Block")', 2 * S * B * H),  # full: every layer recomputed
])
def test_korthikanti_activation_per_layer(ckpt, per_layer):
    # their assumptions: 16-bit activations, 1-byte dropout masks, composite attention
    _, g, p = gpt(f'dims(B={B}, T={S})\nprecision("fp16")\ndevice("a100-80gb", attention="composite")\n{ckpt}',
                  layers=2, d=H, heads=A, vocab=256, ctx=S)
    r = estimate_memory(g, p, solve=False)
    for layer in ("h.0.", "h.1."):
        got = sum(n.saved for n in r.nodes if n.path.startswith(layer))
        assert got == pytest.approx(per_layer, rel=0.01), (layer, got / (S * B * H))


def test_fused_attention_keeps_no_probabilities():
    _, g, p = gpt(f'dims(B={B}, T={S})\nprecision("fp16")\ndevice("a100-80gb")', layers=1, d=H, heads=A,
                  vocab=256, ctx=S)
    r = estimate_memory(g, p, solve=False)
    att = next(n for n in r.nodes if n.op == "attention")
    # q, k, v (one fused projection: 3 s b h x 2 bytes), the output (2 s b h) and float32 log-sum-exp
    assert att.saved == 6 * S * B * H + 2 * S * B * H + 4 * B * A * S


def test_logits_and_loss_dominate_a_gpt2():
    # GPT-2 small shape with its 50k vocabulary: log_softmax's float32 output is most of what is saved
    _, g, p = gpt('dims(B=4, T=1024)\nprecision("bf16-mixed")\ndevice("a100-80gb")', layers=12, d=768, heads=12,
                  vocab=50257, ctx=1024)
    r = estimate_memory(g, p, solve=False)
    loss = next(n for n in r.nodes if n.path == "(loss)")
    assert loss.saved >= 4 * 1024 * 50257 * 4
    assert loss.saved + sum(n.saved for n in r.nodes if n.path == "lm_head") > 0.3 * r.activations


def test_kv_cache_formula():
    layers, batch, ctx, width = 3, 4, 128, 256
    _, g, p = gpt(f'dims(B={batch}, T={ctx})\nprecision("bf16")\ndevice("a100-80gb")', layers=layers, d=width,
                  heads=4, vocab=300, ctx=ctx)
    r = estimate_memory(g, p, solve=False, training=False)
    assert r.kv_cache == 2 * layers * batch * ctx * width * 2


# -- model states: optimizers, precisions, ZeRO ---------------------------------------------------

def model_state(r):
    return r.parameters + r.gradients + r.optimizer + r.master


@pytest.mark.parametrize("gpus", [1, 8, 64])
def test_zero_stages_match_deepspeed_estimators(gpus):
    _, g, p0 = gpt('dims(B=2, T=64)', layers=2, d=256, heads=4, vocab=1000, ctx=64)

    def run(strategy):
        _, g, p = gpt(f'dims(B=2, T=64)\nprecision("bf16-mixed")\noptimizer("adamw")\nshard("{strategy}", '
                      f'gpus={gpus})', layers=2, d=256, heads=4, vocab=1000, ctx=64)
        return estimate_memory(g, p, solve=False)

    r2, r3 = run("zero2"), run("zero3")
    # the parameter counts, computed independently of the pass
    total = largest = 0
    for n in g.nodes():
        if n.op in ("input", "output") or n.shared:
            continue
        ps = archc.compiler.ops.REGISTRY[n.op].params(n.attrs, g.in_types(n.id))
        total += sum(math.prod(s) for s in ps.values())
        per_module: dict[str, int] = {}
        for name, shape in ps.items():
            per_module[name.rpartition(".")[0]] = per_module.get(name.rpartition(".")[0], 0) + math.prod(shape)
        largest = max([largest, *per_module.values()])
    assert r2.params_count == total and r2.largest_layer == largest
    # DeepSpeed: estimate_zero2_model_states_mem_needs(cpu_offload=False): 2P + int(18P/N);
    # estimate_zero3_model_states_mem_needs(cpu_offload=False): 4 * largest_layer + int(18P/N)
    assert model_state(r2) == 2 * total + int(18 * total / gpus)
    assert model_state(r3) == 4 * largest + int(18 * total / gpus)


def test_frozen_parameters_need_no_gradients_or_optimizer_state():
    _, g, p = gpt('dims(B=2, T=64)\nprecision("bf16-mixed")\noptimizer("adam")\nshard("zero2", gpus=4)',
                  layers=2, d=128, heads=4, vocab=500, ctx=64)
    full = estimate_memory(g, p, solve=False)
    frozen = 0
    for n in g.nodes():  # freeze the first block and the embeddings, as fine-tuning would
        if n.path.startswith(("h.0.", "wte", "wpe")) and n.op not in ("input", "output"):
            n.meta["frozen"] = True
            ps = archc.compiler.ops.REGISTRY[n.op].params(n.attrs, g.in_types(n.id))
            frozen += sum(math.prod(s) for s in ps.values())
    r = estimate_memory(g, p, solve=False)
    total, trainable = full.params_count, full.params_count - frozen
    assert r.trainable_count == trainable
    assert r.parameters == full.parameters == 2 * total
    assert model_state(r) == 2 * total + int(18 * trainable / 4)
    assert r.activations < full.activations  # frozen leading layers keep nothing for backward


@pytest.mark.parametrize("opt, per_param", [("sgd", 0), ("adam", 8), ("adamw", 8)])
def test_optimizer_state_sizes(opt, per_param):
    _, g, p = spec("mlp.arch", f'dims(B=4)\noptimizer("{opt}")', "MLP")
    r = estimate_memory(g, p, solve=False)
    n_tensors = 6  # three linears, weight and bias
    step = 4 * n_tensors if opt != "sgd" else 0  # Adam's float32 step counts, on the CPU
    assert r.optimizer == per_param * r.params_count + step
    assert r.parameters == r.gradients == 4 * r.params_count
    _, g, p = spec("mlp.arch", 'dims(B=4)\noptimizer("sgd", momentum=0.9)', "MLP")
    assert estimate_memory(g, p, solve=False).optimizer == 4 * r.params_count


def test_precisions():
    def run(prec, dev="cpu"):
        _, g, p = spec("resnet.arch", f'dims(B=8)\nprecision("{prec}")\ndevice("{dev}")', "ResNet18")
        return estimate_memory(g, p, solve=False)

    fp32, bf16, mixed = run("fp32"), run("bf16"), run("bf16-mixed")
    steps = fp32.optimizer - 8 * fp32.params_count  # Adam's float32 step counts do not shrink
    assert bf16.parameters * 2 == fp32.parameters and (bf16.optimizer - steps) * 2 == fp32.optimizer - steps
    assert mixed.parameters == fp32.parameters and mixed.gradients == fp32.gradients
    assert bf16.activations < fp32.activations / 1.8
    assert mixed.activations < fp32.activations  # autocast's 16-bit activations and weight copies


def test_checkpoint_and_accumulation_on_the_timeline():
    def run(extra):
        _, g, p = spec("resnet.arch", f'dims(B=16)\n{extra}', "ResNet18")
        return estimate_memory(g, p, solve=False)

    base, ckpt, acc = run(""), run('checkpoint(on="block:BasicBlock")'), run("accumulate(4)")
    assert ckpt.activations < base.activations * 0.6  # the stem, outside the blocks, is kept
    assert ckpt.peak < base.peak
    assert acc.activations == base.activations
    assert acc.peak > base.peak  # micro-batches after the first run with every gradient allocated
    assert "micro-batch 2" in acc.peak_at
    for r in (base, ckpt, acc):
        assert r.peak >= max(b for _, b in r.phases)
        assert sum(r.peak_parts.values()) == r.peak


def test_inference_holds_no_gradients():
    _, g, p = spec("resnet.arch", 'dims(B=8)', "ResNet50")
    train = estimate_memory(g, p, solve=False)
    infer = estimate_memory(g, p, solve=False, training=False)
    assert infer.mode == "inference" and infer.gradients == infer.optimizer == infer.activations == 0
    assert infer.peak < train.peak / 3


# -- the largest batch, and speed -------------------------------------------------------------------

def test_resnet50_largest_batch_on_a_24gb_card():
    _, g, p = spec("resnet.arch", 'dims(B=32)\ndevice("rtx4090-24gb")', "ResNet50")
    r = estimate_memory(g, p)
    best, budget = r.max_batch, r.budget
    assert 100 < best < 1000
    fits = estimate_memory(g, p, dims={"B": best}, solve=False)
    over = estimate_memory(g, p, dims={"B": best + 1}, solve=False)
    assert fits.peak <= budget < over.peak
    # consistent with the per-sample figure at the peak
    assert r.per_sample > 0 and r.fixed + r.per_sample * 32 == pytest.approx(r.peak, rel=1e-3)
    assert best == pytest.approx((budget - r.fixed) / r.per_sample, rel=0.02)


def test_gpt3_175b_zero3_answers_in_under_a_second():
    plan = ('dims(B=1, T=2048)\nprecision("bf16-mixed")\noptimizer("adamw", weight_decay=0.1)\n'
            'shard("zero3", gpus=64)\ncheckpoint(on="block:GPT2Block")\ndevice("a100-80gb")')
    t0 = time.process_time()  # compiler time: parse, elaborate, estimate (and solve)
    prog, g, p = spec("gpt.arch", plan, "GPT3")  # std.gpt: 96 layers, d=12288
    r = estimate_memory(g, p)
    spent = time.process_time() - t0
    assert spent < 1.0, f"{spent:.2f} s of compiler time"
    assert r.params_count == pytest.approx(175e9, rel=0.01)
    per_gpu = r.params_count * 18 / 64
    assert model_state(r) == 4 * r.largest_layer + int(18 * r.params_count / 64)
    assert per_gpu < model_state(r) < per_gpu + 3e9
    assert r.fits and r.max_batch >= 1 and r.max_context == 2048  # capped by its 2048 positions


def test_sequence_models_solve_the_context_length():
    _, g, p = gpt('dims(B=8, T=256)\ndevice("t4-16gb")', layers=4, d=512, heads=8, vocab=8000, ctx=1 << 20)
    r = estimate_memory(g, p)
    assert r.context_symbol == "T" and r.max_context is not None
    t = r.max_context
    assert estimate_memory(g, p, dims={"T": t}, solve=False).peak <= r.budget
    assert estimate_memory(g, p, dims={"T": t + 1}, solve=False).peak > r.budget


def test_the_pass_imports_no_torch():
    code = ("import sys, archc; from archc.compiler.passes.estimate_memory import estimate_memory; "
            f"p = archc.load({str(SPECS / 'resnet.arch')!r}); "
            "estimate_memory(p.graph('ResNet18'), dims={'B': 2}); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- diagnostics ---------------------------------------------------------------------------------

def first(e: CompileError):
    return e.value.diagnostics[0]


def test_unknown_device_is_E0504_at_the_directive_with_did_you_mean():
    prog, g, p = gpt('dims(B=2, T=64)\ndevice("a100-80g")', layers=1, d=64, heads=4, vocab=100, ctx=64)
    with pytest.raises(CompileError) as e:
        estimate_memory(g, p)
    d = first(e)
    assert d.code == "E0504" and "a100-80gb" in d.help and d.span is not None
    assert d.span.line == p.one("device").span.line


def test_checkpoint_selector_matching_nothing_lists_near_misses():
    prog, g, p = spec("resnet.arch", 'dims(B=2)\ncheckpoint(on="block:BasicBlok")', "ResNet18")
    with pytest.raises(CompileError) as e:
        settings_from_plan(g, p)
    d = first(e)
    assert d.code == "E0503" and "block:BasicBlock" in d.help and d.span.line == p.one("checkpoint").span.line


def test_unbound_and_negative_dims():
    prog, g, p = spec("resnet.arch", 'optimizer("sgd")', "ResNet18")
    with pytest.raises(CompileError) as e:
        estimate_memory(g, p)
    assert first(e).code == "E0213" and "B" in first(e).message and first(e).span == p.span
    with pytest.raises(CompileError) as e:
        estimate_memory(g, p, dims={"B": -4})
    assert first(e).code == "E0502"
    with pytest.raises(CompileError) as e:
        spec("resnet.arch", 'dims(B=-4)', "ResNet18")
    assert first(e).code == "E0502"


# -- the command line ----------------------------------------------------------------------------

def write_spec(tmp_path, plan: str) -> Path:
    f = tmp_path / "net.arch"
    f.write_text((SPECS / "mlp.arch").read_text() + f"\ntrain P for MLP() {{\n{plan}\n}}\n")
    return f


def test_mem_json(tmp_path, capsys):
    f = write_spec(tmp_path, 'dims(B=64)\noptimizer("adam")\ndevice("t4-16gb")')
    assert main(["mem", str(f), "--plan", "P", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    t = out["totals"]
    for k in ("parameters", "gradients", "optimizer", "activations", "peak"):
        assert isinstance(t[k], int) and t[k] > 0
    assert out["nodes"] and {"path", "op", "saved", "total"} <= set(out["nodes"][0])
    assert out["fits"] is True and out["max_batch"]["value"] > 64


def test_mem_table_and_errors(tmp_path, capsys):
    f = write_spec(tmp_path, 'dims(B=64)\ndevice("t4-16gb")')
    assert main(["mem", str(f), "--plan", "P"]) == 0
    out = capsys.readouterr().out
    assert "peak" in out and "largest B" in out and "fits" in out and "layers.0" in out
    assert main(["mem", str(f), "--plan", "P", "--device", "tpu-v9"]) == 1
    assert "E0504" in capsys.readouterr().err


def test_build_prints_the_memory_line(capsys):
    assert main(["build", str(SPECS / "lenet.arch")]) == 0
    out = capsys.readouterr().out
    assert "memory (training" in out and "peak" in out


def test_render_colours_by_memory(tmp_path, capsys):
    out = tmp_path / "mlp.dot"
    assert main(["render", str(SPECS / "mlp.arch"), "--color", "memory", "--format", "dot", "-o", str(out)]) == 0
    text = out.read_text()
    assert "#ff" in text  # red fills, deepest on the largest layer
