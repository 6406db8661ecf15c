"""A long fuzz run of the compiler, for use outside CI.

    .venv/bin/python benchmarks/fuzz.py --minutes 10

Feeds random token streams, semantically wrong specs and mutations of the
shipped specs to the compiler; every input must end in a result or in
diagnostics with positions inside the file. Prints how many inputs it tried
and exits 1 on the first crash, printing the input.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.compiler.fuzzing import assert_positions_inside, check_text, mutate, token_streams, wrong_specs  # noqa


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    specs = [p.read_text() for p in sorted((ROOT / "archc" / "specs").glob("*.arch"))]
    end = time.time() + 60 * args.minutes
    tried = {"tokens": 0, "wrong": 0, "mutated": 0}
    while time.time() < end:
        kind = rng.choice(list(tried))
        if kind == "tokens":
            text = token_streams.example()
        elif kind == "wrong":
            text = wrong_specs().example()
        else:
            text = mutate(rng.choice(specs), rng)
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        try:
            assert_positions_inside(shown, check_text(text))
        except Exception:  # noqa: BLE001 - any escape is a finding
            print(f"CRASH on a {kind} input:\n{shown!r}\n")
            traceback.print_exc()
            return 1
        tried[kind] += 1
    total = sum(tried.values())
    print(f"{total} inputs tried ({', '.join(f'{k} {v}' for k, v in tried.items())}); no crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
