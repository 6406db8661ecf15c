"""The benchmark scripts run end to end and print their ratio line.

One short run of each, in a subprocess, as a user would start it. No timing is
asserted: the machines that run the tests are shared and noisy, and the figures
are for people to read (see benchmarks/).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

CASES = [
    pytest.param(["check_speed.py", "--repeats", "1", "--warmup", "0", "--model", "ResNet18"],
                 ["torchvision", "torchinfo"], id="check_speed"),
    pytest.param(["resnet_train_step.py", "--repeats", "1", "--warmup", "0", "--model", "ResNet18",
                  "--batch", "2", "--size", "64"], ["torchvision"], id="resnet_train_step"),
    pytest.param(["check_scaling.py", "--repeats", "1"], [], id="check_scaling"),
]


@pytest.mark.slow
@pytest.mark.parametrize("argv,needs", CASES)
def test_benchmark_runs(argv, needs):
    for mod in needs:
        pytest.importorskip(mod)
    proc = subprocess.run([sys.executable, str(BENCH / argv[0]), *argv[1:]], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"^ratio .*: \d+\.\d+$", proc.stdout, re.M), proc.stdout
