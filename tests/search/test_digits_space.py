"""The shipped digits search space and its two plans check, and each candidate builds.

(The searches themselves take minutes: their results are in the search's docs, not in CI.)
"""
from __future__ import annotations

from pathlib import Path

import torch

import archc
from archc.cli import main
from archc.search import load_config
from archc.search.candidates import decide, measure_graph

SPEC = Path(archc.__file__).parent / "specs" / "digits_space.arch"


def test_the_space_and_its_plans_check(capsys):
    assert main(["check", str(SPEC)]) == 0
    prog = archc.load(SPEC)
    assert prog.models == ["DigitsSpace"] and set(prog.plans) == {"DigitsTPE", "DigitsNSGA2"}
    space = prog.space("DigitsSpace")
    assert space.size == 1728 and len(space.decisions) == 9
    tpe = load_config(prog, "DigitsTPE")
    assert (tpe.strategy, tpe.trials, [o.name for o in tpe.objectives]) == ("tpe", 30, ["accuracy"])
    nsga = load_config(prog, "DigitsNSGA2")
    assert [(o.name, o.direction) for o in nsga.objectives] == [("accuracy", "max"), ("params", "min")]
    assert nsga.storage.endswith("digits_space.search.db") and nsga.study_name.startswith("digits_space.DigitsNSGA2-")


def test_extreme_candidates_build_and_run():
    prog = archc.load(SPEC)
    cfg = load_config(prog, "DigitsTPE")
    x = torch.randn(2, 1, 8, 8)
    sizes = []
    for pick in (lambda label, n: 0, lambda label, n: n - 1):
        cand = decide(prog, cfg, pick)
        net = prog.build("DigitsSpace", decisions=cand.decisions)
        assert net(x).shape == (2, 10)
        sizes.append(measure_graph(cand, cfg)["params"])
        assert sum(p.numel() for p in net.parameters()) == sizes[-1]
    assert sizes[0] < 50_000 < sizes[1]  # the TPE plan's constraint cuts through the space
