"""Fuzzing (bounded for CI): every input ends in a result or diagnostics with codes
and positions inside the file; never an uncaught exception. benchmarks/fuzz.py
runs the same generators for as long as you like."""
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from .fuzzing import assert_positions_inside, check_text, mutate, token_streams, wrong_specs

SPECS = sorted((Path(__file__).resolve().parents[2] / "archc" / "specs").glob("*.arch"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token_streams)
def test_random_token_streams(text):
    assert_positions_inside(text, check_text(text))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wrong_specs())
def test_semantically_wrong_specs(text):
    assert_positions_inside(text, check_text(text))


def test_mutated_shipped_specs():
    rng = random.Random(1234)
    for path in SPECS:
        text = path.read_text()
        for _ in range(6):
            m = mutate(text, rng)
            shown = m.decode("utf-8", "replace") if isinstance(m, bytes) else m
            diags = check_text(m, str(path))
            assert_positions_inside(shown, diags, str(path))


def test_cyclic_and_missing_imports(tmp_path):
    (tmp_path / "a.arch").write_text('import "b.arch"\nblock A(x) { return x }\n')
    (tmp_path / "b.arch").write_text('import "a.arch"\nimport "missing.arch"\n')
    text = (tmp_path / "a.arch").read_text()
    diags = check_text(text, str(tmp_path / "a.arch"))
    assert {d.code for d in diags} >= {"E0102", "E0101"}
