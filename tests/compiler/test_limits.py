"""Limits: inputs that would hang or exhaust memory end in a diagnostic, fast.

Each case runs `archc check` (or `build`) in a fresh process under a memory cap
and a time limit, and asserts exit status 1, the code, and that it ended quickly.
"""
import subprocess
import sys
import textwrap
import time

import pytest

CASES = {
    "repeat-1e9": ("E0401", """
        model M() {
            input x: [B, 4]
            output y = x -> relu * 1000000000
        }"""),
    "nested-repeats-multiply": ("E0401", """
        block Blk(x) { return x -> [linear(4) * 1000] }
        model M() {
            input x: [B, 4]
            output y = x -> [Blk * 1000]
        }"""),
    "long-loop": ("E0401", """
        model M() {
            input x: [B, 4]
            for i in range(10000000) { x = x -> relu -> linear(4) }
            output y = x
        }"""),
    "block-calls-itself": ("E0402", """
        block Loop(x) { return x -> relu -> Loop }
        model M() {
            input x: [B, 4]
            output y = x -> Loop
        }"""),
    "deep-expression": ("E0402", "let A = " + " + ".join(["1"] * 25000) + """
        model M() {
            input x: [B, 4]
            output y = x -> linear(A)
        }"""),
    "huge-dimension": ("E0401", """
        model M() {
            input x: [B, 1099511627777]
            output y = x -> relu
        }"""),
    "huge-power": ("E0210", """
        let A = 2 ** 64 ** 64
        model M() {
            input x: [B, 4]
            output y = x -> linear(A)
        }"""),
}

RUNNER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 * 1024 ** 3, 2 * 1024 ** 3))  # 2 GiB
from archc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_limited(tmp_path, spec: str, *args: str):
    path = tmp_path / "t.arch"
    path.write_text(textwrap.dedent(spec).strip() + "\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args, str(path)], capture_output=True, text=True,
                          timeout=60)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("name", list(CASES))
def test_each_limit_is_a_diagnostic_not_a_hang(tmp_path, name):
    code, spec = CASES[name]
    proc, seconds = run_limited(tmp_path, spec, "check")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"error[{code}]" in proc.stderr and "Traceback" not in proc.stderr
    print(f"{name}: {seconds:.2f} s")  # the assertion above is what matters; this is for the log


def test_building_a_huge_model_asks_for_allow_large(tmp_path):
    spec = """
        model Wide() {
            input x: [B, 100000]
            output y = x -> linear(100000)
        }"""
    proc, _ = run_limited(tmp_path, spec, "check")
    assert proc.returncode == 0 and "10,000,100,000 parameters" in proc.stdout  # checking is fine
    proc, _ = run_limited(tmp_path, spec, "build")
    assert proc.returncode == 1 and "error[E0401]" in proc.stderr and "--allow-large" in proc.stderr
