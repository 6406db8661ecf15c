"""The digits experiment behind issue #8's closing note (not run in CI: minutes of CPU).

    python -m archc.compress.experiment [--epochs 6] [--seeds 0 1 2] [--json out.json]

On scikit-learn's digits (archc/specs/digits_compress.arch): the teacher CNN is
trained once; the student (a quarter of its parameters) is trained alone and with
distillation, with the same budget and the same seeds, and the test accuracies are
averaged over the seeds; then the plan `Edge` runs (distil, prune 50%, fine-tune,
static int8) and its before/after table is printed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SPEC = Path(__file__).resolve().parents[1] / "specs" / "digits_compress.arch"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--skip-plan", action="store_true")
    args = ap.parse_args(argv)

    import torch

    import archc
    from archc.runtime.data import load_data
    from archc.runtime.train import TrainConfig, evaluate, fit
    from archc.runtime.train.distill import distill

    torch.set_num_threads(max(1, torch.get_num_threads()))
    prog = archc.load(SPEC)
    data = load_data("digits", batch=64)
    cfg = TrainConfig(epochs=args.epochs, lr=3e-3, seed=0)
    out: dict = {"epochs": args.epochs, "seeds": args.seeds}
    t0 = time.time()
    torch.manual_seed(0)
    teacher = prog.build("DigitsTeacher")
    fit(teacher, data.train, data.val, cfg)
    teacher.eval()
    out["teacher"] = {"params": sum(p.numel() for p in teacher.parameters()),
                      "accuracy": evaluate(teacher, data.test)["accuracy"]}
    print(f"teacher: {out['teacher']} ({time.time() - t0:.0f}s)", flush=True)
    rows = {"alone": [], "distilled": []}
    for seed in args.seeds:
        for how in ("alone", "distilled"):
            torch.manual_seed(seed)
            student = prog.build("DigitsStudent")
            c = cfg.but(seed=seed)
            if how == "alone":
                fit(student, data.train, data.val, c)
            else:
                distill(student, teacher, data.train, data.val, c, temperature=4.0, soft_weight=0.9, hard_weight=0.1)
            acc = evaluate(student, data.test)["accuracy"]
            rows[how].append(acc)
            print(f"student {how}, seed {seed}: {acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
    out["student_params"] = sum(p.numel() for p in prog.build("DigitsStudent").parameters())
    for how, accs in rows.items():
        out[how] = {"accuracies": accs, "mean": statistics.mean(accs),
                    "stdev": statistics.stdev(accs) if len(accs) > 1 else 0.0}
        print(f"student {how}: mean {out[how]['mean']:.4f} ± {out[how]['stdev']:.4f} over seeds {args.seeds}")
    if not args.skip_plan:
        from archc.cli import main as cli

        print("\n$ archc compress archc/specs/digits_compress.arch --plan Edge", flush=True)
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            rc = cli(["compress", str(SPEC), "--plan", "Edge", "-o", str(Path(d) / "edge.arch"), "--quiet"])
            out["plan_rc"] = rc
            print((Path(d) / "edge.arch").read_text())
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
