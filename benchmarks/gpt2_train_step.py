"""Training-step speed of the archc-built GPT-2 small against transformers' GPT-2, same weights.

A step is: drop the gradients, forward a batch of token ids in train mode,
next-token cross-entropy over the logits, backward (no optimizer update: that
is the same code for both). Dropout is off in both models by default
(`--dropout` sets embd/attn/resid_pdrop), so the two compute the same thing and
the script checks that their logits, loss and gradients agree on the first step.
transformers' model gets deterministic pseudo-random weights (no initializers
run: they would take longer than the benchmark) and archc's model loads them
through archc.interop.hf.gpt2_from_hf (strict). CPU, torch's default thread
count, batch 2 x 256 tokens. After warm-up steps the models step in turn
(A B, B A, A B, ...) and the figures are medians.

    .venv/bin/python benchmarks/gpt2_train_step.py [--repeats N] [--batch 2] [--tokens 256] [--layers 12]

Target: archc/transformers <= 1.0.
"""
from __future__ import annotations

import argparse
import sys

import _timing as T


def fill_(module, seed: int = 0, std: float = 0.02) -> None:
    """Deterministic pseudo-random weights, fast: every parameter is a window of one random
    pool; norm scales (1-D `weight`s of norm layers) are 1 + noise so activations keep their size.
    (tests/specs/test_transformer_parity.py fills its reference models with this too.)"""
    import re

    import torch

    pool = torch.randn(1 << 20, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for i, (name, p) in enumerate(module.named_parameters()):
            flat = p.view(-1)
            n, off, pos = flat.numel(), (i * 7919) % pool.numel(), 0
            while pos < n:
                k = min(n - pos, pool.numel() - off)
                flat[pos:pos + k].copy_(pool[off:off + k])
                pos, off = pos + k, 0
            norm = p.dim() == 1 and name.endswith("weight") and re.search(r"(norm|ln|LayerNorm)", name, re.I)
            flat.mul_(0.1 if norm else std)
            if norm:
                flat.add_(1.0)


def gpt2_pair(n_layer: int = 12, dropout: float = 0.0):
    """(archc's GPT2, transformers' GPT2LMHeadModel) with the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.initialization import no_init_weights

    import archc
    from archc.interop import hf

    drops = dict(embd_pdrop=dropout, attn_pdrop=dropout, resid_pdrop=dropout)
    with no_init_weights():
        ref = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, **drops))
        net = archc.load(T.SPECS / "gpt.arch").build("GPT2", n_layer=n_layer, **drops)
    ref.tie_weights()
    fill_(ref)
    net.load_state_dict(hf.gpt2_from_hf(ref.state_dict()), strict=True)
    return net, ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=6, help="timed steps of each model (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first (default 2)")
    ap.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    ap.add_argument("--tokens", type=int, default=256, help="sequence length (default 256)")
    ap.add_argument("--layers", type=int, default=12, help="n_layer (default 12: GPT-2 small)")
    ap.add_argument("--dropout", type=float, default=0.0, help="embd/attn/resid_pdrop of both (default 0)")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    import transformers

    net, ref = gpt2_pair(args.layers, args.dropout)
    net.train()
    ref.train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50257, (args.batch, args.tokens), generator=g)

    def step(model, hf_model: bool):
        model.zero_grad(set_to_none=True)
        logits = model(ids).logits if hf_model else model(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        return logits, loss

    print(f"train step: GPT-2 (n_layer={args.layers}; 12 is GPT-2 small), batch {args.batch}x{args.tokens} tokens, "
          f"CPU, {torch.get_num_threads()} torch threads, dropout {args.dropout}, "
          f"{args.warmup} warm-up + {args.repeats} timed steps each")
    print(T.machine_line() + f"  torch {torch.__version__}  transformers {transformers.__version__}")
    if args.dropout == 0:  # same weights, same batch: the first step must agree
        la, lossa = step(net, False)
        lb, lossb = step(ref, True)
        diff = (la - lb).abs().max().item()
        torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
        grads = dict(ref.named_parameters())
        gdiff = max((p.grad - grads[k].grad).abs().max().item()
                    for k, p in zip(_hf_names(net), net.parameters()))
        print(f"same weights: max |logits diff| {diff:.2e}, loss {lossa.item():.6f} vs {lossb.item():.6f}, "
              f"max |grad diff| {gdiff:.2e}")
    print()

    def step_archc() -> None:
        step(net, False)

    def step_transformers() -> None:
        step(ref, True)

    got = T.interleave({"A  archc GPT2": step_archc, "B  transformers GPT2LMHeadModel": step_transformers},
                       repeats=args.repeats, warmup=args.warmup)
    a, b = got.values()
    print(T.samples_table([a, b]))
    print()
    print(f"median of per-step-pair ratios archc/transformers: {T.median(T.paired_ratios(a, b)):.3f}")
    print(f"CPU-time ratio archc/transformers (medians):       {a.cpu_median / b.cpu_median:.3f}")
    print(f"ratio archc/transformers (medians, target <= 1.0): {a.median / b.median:.3f}")
    return 0


def _hf_names(net):
    """transformers' names of archc's parameters, in net.parameters() order."""
    from archc.interop import hf

    seen, names = set(), []
    for k, p in net.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            names.append(next(iter(hf.gpt2_to_hf({k: None}))))
    return names


if __name__ == "__main__":
    sys.exit(main())
