"""How close is archc's memory estimate to what PyTorch actually holds?

For every shipped spec (small input sizes so that it runs on a CPU in seconds),
build the model, run a real training step on the CPU and measure:

  (a) bytes saved for backward (torch.autograd.graph.saved_tensors_hooks, each
      storage once; parameters and buffers are model state, not activations),
  (b) the peak of live allocated bytes (torch.profiler memory events replayed
      in order, on top of what is live when the step starts),
  (c) parameter, gradient and optimizer-state bytes from the real tensors,

and print them next to `archc mem`'s estimate for the same plan, as ratios
(estimate / measured). Modes: fp32; fp32 with checkpoint(on=...) segments run
through torch.utils.checkpoint (as the generated forward runs them); bf16 (CPU autocast, fp32 master weights).
A peer column gives torchinfo's "estimated total size" for the same model.

    .venv/bin/python benchmarks/memory_accuracy.py [--mode fp32|checkpoint|bf16|all] [--spec NAME]

Targets: saved within ±2%, peak within ±5% and never more than 3% low,
parameter / gradient / optimizer bytes exact.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPECS = ROOT / "archc" / "specs"

# A small GPT written inline (std.gpt may not exist yet): pre-norm blocks with a fused
# qkv projection, causal attention with dropout, a GELU MLP, tied output embedding.
GPT_SPEC = """
block Block(x, heads: int, drop: float = 0.1) {
    d = x.shape[-1]
    h = x -> ln_1: layernorm -> c_attn: linear(3 * d)
    q, k, v = h -> split(d, dim=-1)
    a = attention(q, k, v, heads, causal=true, dropout=drop) -> c_proj: linear(d) -> dropout(drop)
    x = x + a
    m = x -> ln_2: layernorm -> c_fc: linear(4 * d) -> gelu -> mlp_proj: linear(d) -> dropout(drop)
    return x + m
}

model GPT(layers: int = 2, d: int = 64, heads: int = 4, vocab: int = 512, ctx: int = 64, drop: float = 0.1) {
    input idx: int64[B, T]
    x = idx -> wte: embedding(vocab, d) -> wpe: learned_pe(ctx) -> dropout(drop)
    x = x -> h: [Block(heads, drop) * layers] -> ln_f: layernorm
    output logits = x -> lm_head: linear(vocab, bias=false, tie="wte")
}
"""


@dataclass
class Case:
    name: str
    file: str  # a spec file under archc/specs, or "gpt" for GPT_SPEC
    model: str
    dims: dict
    args: dict
    resize: tuple[str, str] | None  # (text, replacement) applied to the spec's input size
    checkpoint: str  # the selector for checkpoint mode
    lora: str | None = None  # the layers LoRA adapts in lora mode (a frozen base, `freeze("*")`)


CASES = [
    Case("resnet18", "resnet.arch", "ResNet18", {"B": 2}, {}, ("224, 224", "64, 64"), "block:BasicBlock",
         "layer*.*.conv1, layer*.*.conv2"),
    Case("vgg11", "vgg.arch", "VGG11", {"B": 2}, {"classes": 10}, ("224, 224", "32, 32"), "features"),
    Case("lenet5", "lenet.arch", "LeNet5", {"B": 4}, {}, None, "c3"),
    Case("mlp", "mlp.arch", "MLP", {"B": 8}, {}, None, "layers"),
    Case("gpt2", "gpt.arch", "GPT2", {"B": 2, "T": 32},
         {"vocab_size": 512, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 4}, None, "block:GPT2Block",
         "h.*.attn.c_attn"),
]

# The other shipped specs, at small sizes (`--extended`): slower, not in the test suite.
# Every shipped model family is here; left out are the supernets that are search spaces,
# not trained networks (darts.arch's DartsSearch, pcdarts.arch's PCDartsSearch, nb201.arch's
# NB201Search, digits_space.arch's DigitsSpace), and the variants that repeat a family at
# other sizes (ResNet-34/50/101/152, VGG-16, GPT-3, DartsV1, DartsImageNet).
_V = {"frames": 4, "size": 32, "classes": 10}
EXTENDED = [
    Case("gpt-inline", "gpt", "GPT", {"B": 2, "T": 32}, {"layers": 2}, None, "block:Block"),
    Case("llama", "llama.arch", "Llama", {"B": 2, "T": 32}, {}, None, "block:LlamaDecoderLayer"),
    Case("bert", "bert.arch", "BERT", {"B": 2, "T": 32}, {"vocab_size": 512, "hidden_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}, None, "block:BertLayer",
         "**.query, **.value"),
    Case("transformer", "transformer.arch", "Transformer", {"B": 2, "S": 16, "T": 16},
         {"d_model": 64, "nhead": 4, "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 128},
         None, "block:TransformerEncoderLayer"),
    Case("vit", "vit.arch", "ViT", {"B": 2}, {"image_size": 64, "num_layers": 2}, None, "block:EncoderBlock"),
    Case("resnet50", "resnet.arch", "ResNet50", {"B": 2}, {"classes": 10}, ("224, 224", "64, 64"),
         "block:Bottleneck"),
    Case("vgg16bn", "vgg.arch", "VGG16BN", {"B": 2}, {"classes": 10}, ("224, 224", "32, 32"), "features"),
    Case("plain34", "plain.arch", "Plain34", {"B": 2}, {"classes": 10}, ("224, 224", "64, 64"), "block:PlainBlock"),
    # std.rnn
    Case("textrnn", "rnn.arch", "TextClassifier", {"B": 4, "T": 16}, {"vocab": 512, "dim": 32, "hidden": 64},
         None, "op:lstm"),
    Case("textgru", "rnn.arch", "TextClassifier", {"B": 4, "T": 16},
         {"vocab": 512, "dim": 32, "hidden": 64, "cell": "gru"}, None, "op:gru"),
    Case("seq2seq", "rnn.arch", "Seq2Seq", {"B": 2, "S": 12, "T": 10},
         {"src_vocab": 256, "tgt_vocab": 256, "dim": 32, "hidden": 64}, None, "op:lstm"),
    # std.video
    Case("c3d", "video.arch", "C3D", {"B": 2}, {"frames": 16, "size": 32, "classes": 10}, None, "op:conv"),
    Case("r3d18", "video.arch", "R3D18", {"B": 2}, _V, None, "block:VideoBasicBlock"),
    Case("mc3_18", "video.arch", "MC3_18", {"B": 2}, _V, None, "block:VideoBasicBlock"),
    Case("r2plus1d18", "video.arch", "R2Plus1D18", {"B": 2}, _V, None, "block:VideoBasicBlock"),
    Case("i3d", "video.arch", "I3D", {"B": 2}, _V, None, "block:Bottleneck3D"),
    Case("twostream", "video.arch", "TwoStream", {"B": 2}, {"classes": 10, "flow_frames": 2, "size": 32}, None,
         "block:BasicBlock"),
    Case("slowfast", "video.arch", "SlowFast", {"B": 2}, {"classes": 10, "frames": 8, "size": 32, "alpha": 4},
         None, "block:Bottleneck3D"),
    Case("timesformer", "video.arch", "TimeSformer", {"B": 2},
         {"classes": 10, "frames": 2, "size": 32, "patch": 8, "dim": 64, "depth": 2, "heads": 4}, None,
         "block:DividedSpaceTime"),
    Case("convlstm", "video.arch", "ConvLSTMNowcast", {"B": 2},
         {"in_frames": 3, "out_frames": 2, "size": 16, "hidden": 8, "kernel": 3}, None, "op:conv_lstm"),
    # std.ssl, std.clip, std.generative: the model computes its own loss
    Case("simclr", "ssl.arch", "SimCLR", {"B": 8}, {}, None, "block:DigitsEncoder"),
    Case("byol", "ssl.arch", "BYOL", {"B": 8}, {}, None, "block:OnlineNet"),
    Case("mae", "ssl.arch", "MAE", {"B": 4}, {"depth": 2}, None, "block:EncoderBlock"),
    Case("rotnet", "ssl.arch", "RotNet", {"B": 8}, {}, None, "block:DigitsEncoder"),
    Case("jigsaw", "ssl.arch", "Jigsaw", {"B": 8}, {}, None, "block:DigitsEncoder"),
    Case("clip", "clip.arch", "CLIP", {"B": 4}, {}, None, "block:EncoderBlock"),
    Case("clip-resnet", "clip.arch", "CLIP", {"B": 4}, {"tower": "resnet"}, None, "block:BasicBlock"),
    Case("autoencoder", "generative.arch", "Autoencoder", {"B": 8}, {}, None, "op:conv"),
    Case("vae", "generative.arch", "VAE", {"B": 8}, {}, None, "op:linear"),
    Case("dcgan", "generative.arch", "DCGAN", {"B": 8}, {}, None, "block:Discriminator"),
    # std.ensemble, std.hybrid, std.darts (the DARTS-V2 genotype, a tiny network), digits_compress
    Case("ensemble", "ensemble.arch", "DigitsEnsemble", {"B": 8}, {}, None, "block:ConvBNReLU"),
    Case("hybrid", "hybrid.arch", "Hybrid", {"B": 2}, {"classes": 10, "image_size": 64}, None,
         "block:MobileViTBlock"),
    Case("dartsv2", "darts.arch", "DartsV2", {"B": 2}, {"C": 8, "layers": 5}, None, "block:DartsEvalCell"),
    Case("pcdarts", "pcdarts.arch", "PCDarts", {"B": 2}, {"C": 8, "layers": 5}, None, "block:DartsEvalCell"),
    Case("teacher", "digits_compress.arch", "DigitsTeacher", {"B": 8}, {}, None, "op:conv"),
]


# fp32; checkpointed segments; bf16 autocast; a frozen fp32 base with LoRA adapters (cases with `lora`)
MODES = ("fp32", "checkpoint", "bf16", "lora")


def spec_text(case: Case, plan: str = "") -> str:
    text = GPT_SPEC if case.file == "gpt" else (SPECS / case.file).read_text()
    if case.resize:
        text = text.replace(*case.resize)
    return text + "\n" + plan


def plan_text(case: Case, mode: str, device: str = "cpu", optimizer: str = "adamw") -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in case.args.items()).replace("'", '"')
    dims = ", ".join(f"{k}={v}" for k, v in case.dims.items())
    lines = [f"dims({dims})", f'optimizer("{optimizer}")', f'device("{device}")']
    if mode == "lora":
        lines += ['freeze("*")', f'lora(on="{case.lora}", r=4, alpha=8)']
    if mode == "bf16":
        lines.append('precision("bf16-mixed")')
    if mode == "checkpoint":
        lines.append(f'checkpoint(on="{case.checkpoint}")')
    body = "\n    ".join(lines)
    kind = "finetune" if mode == "lora" else "train"
    return f"{kind} Measure for {case.model}({args}) {{\n    {body}\n}}\n"


def load_case(case: Case, mode: str):
    """(program, plan, symbolic graph with the plan's rewrites applied) for a case in a mode."""
    import archc
    from archc.compiler.passes.apply_plan import apply_plan

    prog = archc.parse(spec_text(case, plan_text(case, mode)), f"<{case.name}>")
    plan = prog.plan("Measure")
    sym = apply_plan(prog.graph(case.model, args=case.args), plan)
    return prog, plan, sym


def estimate(case: Case, mode: str):
    from archc.compiler.passes.estimate_memory import estimate_memory

    prog, plan, sym = load_case(case, mode)
    return estimate_memory(sym, plan)


def build(case: Case, mode: str):
    """The generated module for the case's plan (checkpointed segments and all), and its graph."""
    from archc.compiler.lower.torch import generate, load

    prog, plan, _ = load_case(case, mode)
    g = prog.graph(plan=plan)
    return load(generate(g, case.name))(), g


def batch(case: Case, g):
    import torch

    inputs = []
    for i in g.inputs:
        t = g.node(i).outputs[0]
        shape = tuple(int(d) for d in t.shape)
        if t.dtype.startswith("int"):  # token ids (and segment ids): valid for any vocabulary
            inputs.append(torch.randint(0, 2, shape, dtype=getattr(torch, t.dtype)))
        else:
            inputs.append(torch.randn(shape))
    out = g.in_types(g.outputs[0])[0]
    if not out.shape:  # the model computes its own loss
        return inputs, None
    classes = int(out.shape[-1])
    target = torch.randint(0, classes, tuple(int(d) for d in out.shape[:-1]), dtype=torch.int64)
    return inputs, target


def measure(case: Case, mode: str):
    import torch

    from archc.runtime import ema
    from archc.runtime.measure import measure_training

    torch.manual_seed(0)
    model, g = build(case, mode)
    model.train()
    inputs, target = batch(case, g)
    ema.init(model)  # as training does: `ema` targets copied from their sources and frozen
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return measure_training(model, inputs, target, opt,
                            autocast_dtype=torch.bfloat16 if mode == "bf16" else None), model, inputs


def torchinfo_total(model, inputs) -> int | None:
    try:
        import torchinfo
    except ImportError:  # pragma: no cover
        return None
    s = torchinfo.summary(model, input_data=[x.clone() for x in inputs], verbose=0, mode="train")
    # torchinfo's "Estimated Total Size": input + forward/backward pass + params, in bytes
    return int(s.total_input + s.total_output_bytes + s.total_param_bytes)


def accelerate_training(model) -> int | None:
    """`accelerate estimate-memory`'s "Training using Adam" figure for float32, computed in
    process on the same module: the largest of its model, gradient, optimizer and step terms
    (accelerate.commands.estimate.estimate_training_usage), i.e. 4x the parameter bytes."""
    try:
        from accelerate.commands.estimate import estimate_training_usage
        from accelerate.utils import calculate_maximum_sizes
    except ImportError:  # pragma: no cover
        return None
    total, _ = calculate_maximum_sizes(model)
    return int(max(estimate_training_usage(total, "float32").values()))


def compare(case: Case, mode: str, peer: bool = True) -> dict:
    est = estimate(case, mode)
    meas, model, inputs = measure(case, mode)
    st = meas.state
    return {
        "case": case.name, "mode": mode,
        "saved_est": est.activations, "saved_meas": meas.saved.bytes, "saved_naive": meas.saved.naive,
        "peak_est": est.peak, "peak_meas": meas.peak.peak, "peak_at": est.peak_at,
        "params": (est.parameters, st.parameters), "grads": (est.gradients, st.gradients),
        "optimizer": (est.optimizer, st.optimizer), "buffers": (est.buffers, st.buffers),
        "torchinfo": torchinfo_total(model, inputs) if peer and mode == "fp32" else None,
    }


def side_by_side() -> list[dict]:
    """Measured peak vs archc's estimate vs torchinfo's total vs `accelerate estimate-memory`'s
    fp32 Adam training figure vs the formulas people use (Transformer Math: 16 bytes per parameter for fp32 AdamW, plus Korthikanti et al.'s
    activations per layer, s·b·h·(34 + 5·a·s/h), for a transformer) for ResNet-18 and a
    4-layer GPT-2, at sizes where activations matter."""
    import dataclasses

    rows = []
    gpt2 = Case("gpt2-4l", "gpt", "GPT", {"B": 2, "T": 256},
                {"layers": 4, "d": 768, "heads": 12, "vocab": 50257, "ctx": 1024}, None, "block:Block")
    resnet = dataclasses.replace(CASES[0], name="resnet18-224", dims={"B": 8}, resize=None)
    for case in (resnet, gpt2):
        est = estimate(case, "fp32")
        meas, model, inputs = measure(case, "fp32")
        P = est.params_count
        formula = 16 * P
        if case.file == "gpt":
            s_, b_, h_, a_ = case.dims["T"], case.dims["B"], case.args["d"], case.args["heads"]
            # as published: 16-bit activations, 1-byte masks; doubled here for fp32 activations
            per_layer = s_ * b_ * h_ * (34 + 5 * a_ * s_ / h_)
            formula += int(case.args["layers"] * per_layer * 2)
        rows.append({"case": case.name, "measured": meas.peak.peak, "archc": est.peak,
                     "torchinfo": torchinfo_total(model, inputs), "formula": formula,
                     "accelerate": accelerate_training(model)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="all", choices=[*MODES, "all"])
    ap.add_argument("--spec", help="only this case (" + ", ".join(c.name for c in CASES) + ")")
    ap.add_argument("--extended", action="store_true", help="also the other shipped specs (slower)")
    ap.add_argument("--side-by-side", action="store_true",
                    help="ResNet-18 and a 4-layer GPT-2: measured peak vs archc, torchinfo, accelerate, the formulas")
    args = ap.parse_args(argv)
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    if args.side_by_side:
        print(f"{'model':14} {'measured peak':>14} {'archc':>8} {'torchinfo':>10} {'formula':>8} {'accelerate':>11}"
              "   (ratios to measured)")
        for r in side_by_side():
            m = r["measured"]
            ti, ac = (f"{r[k] / m:{w}.3f}" if r[k] else f"{'-':>{w}}" for k, w in (("torchinfo", 10), ("accelerate", 11)))
            print(f"{r['case']:14} {m / 2**20:11.1f} MiB {r['archc'] / m:8.4f} {ti} {r['formula'] / m:8.3f} {ac}")
        return 0
    modes = list(MODES) if args.mode == "all" else [args.mode]
    rows = []
    print(f"{'case':10} {'mode':10} {'saved est/meas':>15} {'naive/meas':>11} {'peak est/meas':>14} "
          f"{'torchinfo/meas':>15}  state exact   peak at")
    ok = True
    for case in CASES + (EXTENDED if args.extended or args.spec else []):
        if args.spec and case.name != args.spec:
            continue
        for mode in modes:
            if mode == "lora" and not case.lora:
                continue
            try:
                r = compare(case, mode)
            except Exception as e:  # one broken case does not hide the others
                ok = False
                print(f"{case.name:10} {mode:10} ERROR {type(e).__name__}: {str(e).splitlines()[0]}")
                continue
            rows.append(r)
            sr = r["saved_est"] / r["saved_meas"]
            pr = r["peak_est"] / r["peak_meas"]
            naive = r["saved_naive"] / r["saved_meas"]
            ti = f"{r['torchinfo'] / r['peak_meas']:.3f}" if r["torchinfo"] else "-"
            exact = all(a == b for a, b in (r["params"], r["grads"], r["optimizer"], r["buffers"]))
            good = abs(sr - 1) <= 0.02 and 0.97 <= pr <= 1.05 and exact
            ok &= good
            print(f"{r['case']:10} {mode:10} {sr:15.4f} {naive:11.3f} {pr:14.4f} {ti:>15}  "
                  f"{'yes' if exact else 'NO '}         {r['peak_at']}{'' if good else '   <-- off target'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
