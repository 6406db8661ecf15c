"""A real DARTS search on digits (not run in CI): first-order DARTS over std.darts's space
with a small search network on scikit-learn's 8x8 digits, then the derived network and a
random architecture of the same space trained from scratch with the same budget.

The search network is DartsSearch(C=8, layers=5, size=8, channels=1): the stem takes the
1-channel 8x8 images as they are (reduction cells at 1 and 3: 8 -> 4 -> 2). The search
is a `search` plan with strategy("darts") run by archc.search.darts (weights on the train
split, α on the validation split); the derived and the random networks train with SGD
(lr 0.025, momentum 0.9, weight decay 3e-4, cosine schedule, clipping at 5) on the
train split and are scored on the held-out test split, for each seed (the random
architecture of seed s is the space's sample of seed 1000 + s). The search runs in
one process (`--threads` torch threads), the 2 x len(seeds) trainings in `--workers`
processes of one thread each.

    .venv/bin/python benchmarks/darts_digits.py [--search-epochs 10] [--train-epochs 30]
                                                [--seeds 0 1 2] [--threads 1] [--workers 2] [--order 1]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import _timing as T

PLAN = """import std.darts

search Digits for DartsSearch(C={C}, layers={layers}, size=8, channels=1) {{
    strategy("darts")
    data("digits")
    budget(epochs={epochs}, batch={batch})
    seed({seed})
}}
"""


def _train(settings, job) -> dict:
    """Train one architecture from scratch (in a worker process, one torch thread)."""
    import torch

    import archc
    from archc.runtime.data import load_data
    from archc.runtime.train import TrainConfig, evaluate, fit

    torch.set_num_threads(1)
    model_args, batch, epochs = settings
    kind, seed, decisions = job
    prog = archc.load(T.SPECS / "darts.arch")
    data = load_data("digits", batch=batch)
    cfg = TrainConfig(epochs=epochs, optimizer="sgd", lr=0.025, momentum=0.9, weight_decay=3e-4,
                      schedule="cosine", clip_grad=5.0, seed=seed)
    torch.manual_seed(seed)
    net = prog.build("DartsSearch", decisions=decisions, **model_args)
    t, c = time.perf_counter(), time.process_time()
    fit(net, data.train, data.val, cfg)
    acc = evaluate(net, data.test)["accuracy"]
    graph = prog.graph("DartsSearch", decisions=decisions, **model_args)
    summary = {k: graph.decisions[k] for k in graph.decisions}
    return {"kind": kind, "seed": seed, "accuracy": acc, "params": sum(p.numel() for p in net.parameters()),
            "seconds": time.perf_counter() - t, "cpu": time.process_time() - c, "summary": summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--search-epochs", type=int, default=10)
    ap.add_argument("--train-epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the search (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="processes training the networks (default 2)")
    ap.add_argument("--order", type=int, default=1, choices=[1, 2])
    ap.add_argument("--out", default=None, help="a folder for the plan, the checkpoint and the derived .arch")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args(argv)

    import torch

    import archc
    from archc.search.darts import run

    torch.set_num_threads(args.threads)
    folder = Path(args.out or tempfile.mkdtemp(prefix="darts_digits_"))
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "digits_space.arch"
    spec.write_text(PLAN.format(C=args.C, layers=args.layers, epochs=args.search_epochs, batch=args.batch,
                                seed=args.seeds[0]))
    print(f"search: {spec} ({T.machine_line()}, {args.threads} torch threads)", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run(spec, "Digits", order=args.order, threads=args.threads, progress=False, verbose=True)
    search_seconds, search_cpu = time.perf_counter() - t0, time.process_time() - c0
    row = result.best[0]
    print(f"search time: {search_seconds:.1f} s wall, {search_cpu:.1f} s CPU; supernet validation accuracy "
          f"{100 * row['values']['accuracy']:.2f}%; derived network {row['metrics']['params']:,} parameters")
    print("derived cell:", row["arch"]["genotype"])
    print("written:", result.written, flush=True)

    prog = archc.load(T.SPECS / "darts.arch")
    model_args = {"C": args.C, "layers": args.layers, "size": 8, "channels": 1}
    derived = row["decisions"]
    jobs = []
    for seed in args.seeds:
        rand = prog.graph("DartsSearch", sample=1000 + seed, **model_args).decisions
        jobs += [("derived", seed, derived), ("random", seed, rand)]
    settings = (model_args, args.batch, args.train_epochs)
    with ProcessPoolExecutor(args.workers) as pool:
        done = list(pool.map(_train, [settings] * len(jobs), jobs))
    rows = []
    for seed in args.seeds:
        d = next(r for r in done if r["kind"] == "derived" and r["seed"] == seed)
        r = next(r for r in done if r["kind"] == "random" and r["seed"] == seed)
        rows.append({"seed": seed, "derived": d["accuracy"], "derived_params": d["params"],
                     "random": r["accuracy"], "random_params": r["params"], "random_arch": r["summary"],
                     "derived_seconds": d["seconds"], "random_seconds": r["seconds"],
                     "derived_cpu": d["cpu"], "random_cpu": r["cpu"]})
        print(f"seed {seed}: derived {100 * d['accuracy']:.2f}% ({d['params']:,} params, {d['seconds']:.0f} s), "
              f"random {100 * r['accuracy']:.2f}% ({r['params']:,} params, {r['seconds']:.0f} s)", flush=True)
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    print(T.table(["seed", "derived test acc", "random test acc", "derived params", "random params"],
                  [[r["seed"], f"{100 * r['derived']:.2f}%", f"{100 * r['random']:.2f}%", f"{r['derived_params']:,}",
                    f"{r['random_params']:,}"] for r in rows]
                  + [["mean", f"{100 * mean('derived'):.2f}%", f"{100 * mean('random'):.2f}%", "", ""]]))
    if args.json:
        Path(args.json).write_text(json.dumps({"search_seconds": search_seconds, "search_cpu": search_cpu,
                                               "history": row["metrics"].get("history"),
                                               "genotype": row["arch"]["genotype"],
                                               "supernet_accuracy": row["values"]["accuracy"],
                                               "derived_params": row["metrics"]["params"], "runs": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
