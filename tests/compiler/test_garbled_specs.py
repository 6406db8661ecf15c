"""Garbled specs never crash the compiler.

Every shipped spec (archc/specs/*.arch), and the ResNet-50 example of
LANGUAGE.md section 5, is cut short and mangled in deterministic ways
(truncations, deleted, duplicated and swapped tokens, stray printable
characters, stray bytes including invalid UTF-8), and each variant goes through
`archc check` in-process. Whatever the damage, archc must answer with
diagnostics: exit status 0 or 1 (1 whenever it reports an error), no Python
traceback, and every position it prints inside the file, with the quoted
source line being that line of the file.

The variants are fixed by a seed per spec; a failure names the variant so it
can be reproduced with `variants(...)`. The number of variants per spec shrinks
with the spec's size, so the whole file stays well under 20 seconds.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import archc
from archc.cli import main

SPECS_DIR = Path(archc.__file__).resolve().parent / "specs"

# LANGUAGE.md section 5 (also the spec the project started from).
RESNET50 = """\
block Bottleneck(x, planes: int, stride: int = 1) {
    out = x -> conv1: conv(planes, 1, bias=false) -> bn1: bn -> relu
            -> conv2: conv(planes, 3, stride=stride, padding=1, bias=false) -> bn2: bn -> relu
            -> conv3: conv(planes * 4, 1, bias=false) -> bn3: bn
    if stride != 1 or x.shape[1] != planes * 4 {
        x = x -> downsample: [conv(planes * 4, 1, stride=stride, bias=false), bn]
    }
    return relu(out + x)
}

model ResNet50(classes: int = 1000) {
    input x: float32[B, 3, 224, 224]
    x = x -> conv1: conv(64, 7, stride=2, padding=3, bias=false) -> bn1: bn -> relu
          -> max_pool(3, stride=2, padding=1)
          -> layer1: [Bottleneck(64) * 3]
          -> layer2: [Bottleneck(128, stride=2), Bottleneck(128) * 3]
          -> layer3: [Bottleneck(256, stride=2), Bottleneck(256) * 5]
          -> layer4: [Bottleneck(512, stride=2), Bottleneck(512) * 2]
    output logits = x -> global_avg_pool -> flatten -> fc: linear(classes)
}
"""


def _specs() -> list[tuple[str, bytes]]:
    specs = [("resnet50_example.arch", RESNET50.encode())]
    specs += [(p.name, p.read_bytes()) for p in sorted(SPECS_DIR.glob("*.arch"))]
    return specs


SPECS = _specs()

# Code tokens (comments are skipped: mangling them changes nothing).
_TOKEN = re.compile(rb'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d[\w.]*|->|//|\*\*|[=!<>]=|\S')
_PRINTABLE = "abcxyzAB019_ ()[]{}:,.=+-*/%@#\"'\\$&<>!?^~`|;\t\n"
# Stray bytes: invalid UTF-8 (lone continuation, truncated sequence, surrogate,
# overlong form), NUL, escape, and valid non-ASCII that is not part of the language.
_BYTES = [b"\xff", b"\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00", b"\x1b",
          "\u00e9".encode(), "\u2192".encode(), "\U0001f600".encode()]

# Variants are shared out by size, since checking costs roughly 20-30 us a byte
# (parsing, then elaborating every model of a spec that still parses): a budget
# of bytes checked over all specs, split evenly, gives each spec between 8 and 80
# variants, half of them (up to 20) truncations. More shipped specs mean fewer
# variants each, not a slower test.
BYTE_BUDGET = 300_000


@dataclass
class Variant:
    what: str
    data: bytes


def variants(name: str, data: bytes) -> list[Variant]:
    """Deterministic garbled versions of one spec."""
    rng = random.Random(f"garble:{name}")
    n = len(data)
    share = BYTE_BUDGET // len(SPECS)
    count = max(8, min(80, share // max(n, 1)))
    cuts = max(4, min(20, count // 2))
    mutations = count - cuts
    out: list[Variant] = []

    # Truncations at evenly spread points, each nudged to a random byte nearby.
    for i in range(1, cuts + 1):
        p = min(n, max(0, i * n // (cuts + 1) + rng.randint(-8, 8)))
        out.append(Variant(f"truncated at byte {p}", data[:p]))

    toks = [m.span() for m in _TOKEN.finditer(data) if not m.group().startswith(b"#")]
    if len(toks) < 2:
        return out
    kinds = ["delete", "duplicate", "swap", "insert", "bytes"]
    for i in range(mutations):
        kind = kinds[i % len(kinds)]
        if kind == "delete":
            a, b = toks[rng.randrange(len(toks))]
            v = Variant(f"deleted token {data[a:b]!r} at byte {a}", data[:a] + data[b:])
        elif kind == "duplicate":
            a, b = toks[rng.randrange(len(toks))]
            v = Variant(f"duplicated token {data[a:b]!r} at byte {a}", data[:b] + b" " + data[a:b] + data[b:])
        elif kind == "swap":
            i1, i2 = sorted(rng.sample(range(len(toks)), 2))
            (a1, b1), (a2, b2) = toks[i1], toks[i2]
            v = Variant(f"swapped {data[a1:b1]!r} at byte {a1} with {data[a2:b2]!r} at byte {a2}",
                        data[:a1] + data[a2:b2] + data[b1:a2] + data[a1:b1] + data[b2:])
        elif kind == "insert":
            p = rng.randrange(n + 1)
            s = "".join(rng.choice(_PRINTABLE) for _ in range(rng.randint(1, 4))).encode()
            v = Variant(f"inserted {s!r} at byte {p}", data[:p] + s + data[p:])
        else:
            # Only where the line so far is ASCII: a bad byte after non-ASCII text
            # gets a byte column (test_diagnostics.py::test_invalid_utf8_column_counts_characters).
            p = rng.randrange(n + 1)
            while not data[data.rfind(b"\n", 0, p) + 1:p].isascii():
                p = rng.randrange(n + 1)
            s = rng.choice(_BYTES)
            v = Variant(f"inserted bytes {s!r} at byte {p}", data[:p] + s + data[p:])
        out.append(v)
    return out


_POSITION = re.compile(r"(?m)^\s*--> (.+?):(\d+):(\d+)$")
_ANY_POSITION = re.compile(r"([\w./-]+\.arch):(\d+):(\d+)")


def _problems(name: str, data: bytes, rc, err: str) -> list[str]:
    """What is wrong with archc's answer to one variant (empty if nothing)."""
    problems = []
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    n_errors = len(re.findall(r"(?m)^error\[E\d{4}\]", err))
    if rc not in (0, 1):
        problems.append(f"exit status {rc!r}")
    elif rc == 1 and n_errors == 0:
        problems.append("exit status 1 without a diagnostic")
    elif rc == 0 and n_errors:
        problems.append("exit status 0 with diagnostics")
    lines = data.decode("utf-8", "replace").split("\n")
    for m in _ANY_POSITION.finditer(err):
        if Path(m.group(1)).name != name:
            continue
        line, col = int(m.group(2)), int(m.group(3))
        if not (1 <= line <= len(lines) and 1 <= col <= len(lines[line - 1]) + 1):
            problems.append(f"position {line}:{col} outside the file ({len(lines)} lines)")
    # The quoted line under each ` --> file:L:C` is line L of the file.
    err_lines = err.split("\n")
    for i, text in enumerate(err_lines):
        m = _POSITION.match(text)
        if not m or Path(m.group(1)).name != name or i + 2 >= len(err_lines):
            continue
        line = int(m.group(2))
        quoted = err_lines[i + 2]
        want = f"{line} | " + (lines[line - 1].expandtabs(1) if line <= len(lines) else "")
        if quoted.strip() != want.strip():
            problems.append(f"line {line} quoted as {quoted!r}, the file has {want!r}")
    return problems


def _check(path: Path, capsys) -> tuple[object, str]:
    capsys.readouterr()
    try:
        rc = main(["check", path.name])
    except SystemExit as e:
        rc = f"SystemExit({e.code!r})"
    except BaseException as e:  # noqa: BLE001 - any escaping exception is the failure we look for
        rc = f"{type(e).__name__}: {e}"
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("name,data", SPECS, ids=[n for n, _ in SPECS])
def test_garbled_spec_gets_diagnostics(name, data, tmp_path, monkeypatch, capsys):
    # The shipped specs sit next to each other so relative imports still resolve.
    for p in SPECS_DIR.glob("*.arch"):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    monkeypatch.chdir(tmp_path)
    failures = []
    for k, v in enumerate(variants(name, data)):
        # A fresh name per variant: each one is a new file, as it would be on disk.
        path = tmp_path / f"v{k:03d}_{name}"
        path.write_bytes(v.data)
        rc, err = _check(path, capsys)
        problems = _problems(path.name, v.data, rc, err)
        if isinstance(rc, str):
            problems.insert(0, f"raised {rc}")
        if problems:
            failures.append(f"{name}, variant {k} ({v.what}): " + "; ".join(problems) + "\n" + err[:1500])
        path.unlink()
    assert not failures, f"{len(failures)} garbled variant(s) mishandled:\n\n" + "\n\n".join(failures[:5])


def test_variants_are_deterministic():
    name, data = SPECS[0]
    assert [v.data for v in variants(name, data)] == [v.data for v in variants(name, data)]
    kinds = {v.what.split()[0] for v in variants(name, data)}
    assert kinds == {"truncated", "deleted", "duplicated", "swapped", "inserted"}
    assert any(not v.data.decode("utf-8", "replace").isascii() or b"\xff" in v.data
               for v in variants(name, data) if v.what.startswith("inserted bytes"))
