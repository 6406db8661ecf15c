"""Incremental decoding speed of the archc-built GPT-2 small against transformers' GPT-2, same weights.

Both decode greedily with their key/value caches: transformers'
`GPT2LMHeadModel.generate(use_cache=True, do_sample=False)` and
`archc.generate(model, tokens, n)` (archc.runtime.generate). One run is a whole
decode: the prompt (`--prompt` tokens, batch `--batch`) and then `--new` tokens
one at a time (64 by default). End-of-text does not stop either (transformers'
eos_token_id is unset), and the script checks that both produce the same tokens.
Weights as in gpt2_train_step.py (transformers' model gets deterministic
pseudo-random weights and archc's loads them through the name map). CPU,
torch's default thread count, eval mode, no_grad; runs interleaved
(A B, B A, ...), medians; also the per-token time of each.

    .venv/bin/python benchmarks/gpt2_decode.py [--repeats N] [--new 64] [--prompt 16] [--batch 1]

Target: archc/transformers <= 1.0.
"""
from __future__ import annotations

import argparse
import sys

import _timing as T
from gpt2_train_step import gpt2_pair


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=6, help="timed decodes of each model (default 6)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed decodes of each model first (default 1)")
    ap.add_argument("--new", type=int, default=64, help="tokens to generate (default 64)")
    ap.add_argument("--prompt", type=int, default=16, help="prompt length (default 16)")
    ap.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    ap.add_argument("--layers", type=int, default=12, help="n_layer (default 12: GPT-2 small)")
    args = ap.parse_args(argv)

    import torch
    import transformers

    import archc

    net, ref = gpt2_pair(args.layers)
    net.eval()
    ref.eval()
    ref.generation_config.eos_token_id = None  # decode exactly --new tokens
    ref.generation_config.pad_token_id = 0
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 50257, (args.batch, args.prompt), generator=g)
    mask = torch.ones_like(prompt)

    @torch.no_grad()
    def ours():
        return archc.generate(net, prompt, args.new)

    @torch.no_grad()
    def theirs():
        return ref.generate(prompt, attention_mask=mask, max_new_tokens=args.new, do_sample=False,
                            use_cache=True)

    a_tokens, b_tokens = ours(), theirs()
    assert a_tokens.shape == b_tokens.shape == (args.batch, args.prompt + args.new), (a_tokens.shape, b_tokens.shape)
    same = torch.equal(a_tokens, b_tokens)
    print(f"decode: GPT-2 (n_layer={args.layers}), batch {args.batch}, prompt {args.prompt} + {args.new} new tokens, "
          f"greedy, key/value cache, CPU, {torch.get_num_threads()} torch threads, "
          f"{args.warmup} warm-up + {args.repeats} timed decodes each")
    print(T.machine_line() + f"  torch {torch.__version__}  transformers {transformers.__version__}")
    print(f"same weights: the same {args.new} tokens: {same}")
    if not same:
        print("error: the two models decoded different tokens", file=sys.stderr)
        return 1
    print()

    def run_ours() -> None:
        ours()

    def run_theirs() -> None:
        theirs()

    got = T.interleave({"A  archc.generate": run_ours, "B  transformers generate": run_theirs},
                       repeats=args.repeats, warmup=args.warmup)
    a, b = got.values()
    print(T.samples_table([a, b]))
    print()
    print(f"per new token: archc {T.fmt_s(a.median / args.new)}, transformers {T.fmt_s(b.median / args.new)}")
    print(f"median of per-run-pair ratios archc/transformers: {T.median(T.paired_ratios(a, b)):.3f}")
    print(f"CPU-time ratio archc/transformers (medians):      {a.cpu_median / b.cpu_median:.3f}")
    print(f"ratio archc/transformers (medians, target <= 1.0): {a.median / b.median:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
