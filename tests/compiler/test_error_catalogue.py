"""docs/errors.md stays in step with the compiler.

The catalogue has one section per code in `CODES`, headed `## CODE: title`.
Each section holds an example spec (an ```arch block, or for E0006 a ```python
bytes literal, since the example is not valid UTF-8), the command it is checked
with (`archc check example.arch`, in backticks, followed by "prints:") and the
exact output in a ```text block. This test writes each example to
`example.arch`, runs the command in-process from that directory and compares
the output with the documented text, character for character.

A section without a ```text block documents a code that archc does not emit
yet; its example is expected to fail (strictly), so that the day it starts
working the test says so and the output can be added to the docs.
"""
from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from archc.cli import main
from archc.compiler import diagnostics
from archc.compiler.diagnostics import CODES

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"

_HEADING = re.compile(r"^## (E\d{4}): (.+?)\s*$", re.M)
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.M | re.S)
_COMMAND = re.compile(r"`(archc (?:check|build|render) example\.arch(?: [^`]*)?)`")


@dataclass
class Section:
    code: str
    title: str
    body: str
    example: bytes | None = None
    command: list[str] | None = None
    expected: str | None = None  # None: not reported yet


def _sections() -> list[Section]:
    if not DOC.is_file():
        return []
    text = DOC.read_text(encoding="utf-8")
    heads = list(_HEADING.finditer(text))
    out = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        # A level-1 heading (a group title) ends the section too.
        body = text[m.end():end]
        group = re.search(r"^# ", body, re.M)
        if group:
            body = body[:group.start()]
        s = Section(m.group(1), m.group(2), body)
        for tag, content in _FENCE.findall(body):
            if tag == "arch" and s.example is None:
                s.example = content.encode("utf-8")
            elif tag == "python" and s.example is None:
                value = ast.literal_eval(content.strip())
                s.example = value if isinstance(value, bytes) else str(value).encode("utf-8")
            elif tag == "text" and s.expected is None:
                s.expected = content.rstrip("\n")
        cmd = _COMMAND.search(body)
        if cmd:
            s.command = shlex.split(cmd.group(1))[1:]
        out.append(s)
    return out


SECTIONS = _sections()


def test_catalogue_exists():
    assert DOC.is_file(), f"{DOC} is missing"
    assert SECTIONS, f"{DOC} has no `## EXXXX: title` sections"


def test_every_code_has_a_section():
    documented = [s.code for s in SECTIONS]
    missing = [c for c in CODES if c not in documented]
    assert not missing, f"codes without a section in docs/errors.md: {missing}"


def test_every_section_is_a_known_code():
    unknown = [s.code for s in SECTIONS if s.code not in CODES]
    assert not unknown, f"docs/errors.md documents codes that are not in CODES: {unknown}"
    dup = sorted({s.code for s in SECTIONS if [t.code for t in SECTIONS].count(s.code) > 1})
    assert not dup, f"codes documented twice: {dup}"


def test_section_titles_match_codes():
    wrong = [(s.code, s.title, CODES[s.code]) for s in SECTIONS if s.code in CODES and s.title != CODES[s.code]]
    assert not wrong, f"headings must read `## CODE: <CODES title>`: {wrong}"


@pytest.mark.parametrize("section", SECTIONS, ids=[s.code for s in SECTIONS])
def test_section_is_complete(section: Section):
    assert section.example is not None, f"{section.code}: no ```arch example"
    assert section.command is not None, f"{section.code}: no `archc check example.arch` command"
    prose = _FENCE.sub("", section.body).strip()
    assert len(prose) > 40, f"{section.code}: say what the error means and how to fix it"


def _run(section: Section, tmp_path: Path, monkeypatch, capsys) -> tuple[int, str]:
    (tmp_path / "example.arch").write_bytes(section.example)
    monkeypatch.chdir(tmp_path)
    # Each example is documented as a fresh `archc` process prints it; in-process
    # the quoted-source cache would otherwise still hold the previous
    # `example.arch` (see test_diagnostics.py::test_stale_source_cache).
    monkeypatch.setattr(diagnostics, "_SOURCE_CACHE", {})
    capsys.readouterr()
    try:
        rc = main(list(section.command))
    except SystemExit as e:  # argparse exits on bad command lines
        rc = e.code
    return rc, capsys.readouterr().err


def _params():
    for s in SECTIONS:
        if s.example is None or s.command is None:
            continue
        marks = []
        if s.expected is None:
            marks.append(pytest.mark.xfail(strict=True, reason=f"archc does not report {s.code} yet; "
                                           "when it does, add its output to docs/errors.md"))
        yield pytest.param(s, id=s.code, marks=marks)


@pytest.mark.parametrize("section", list(_params()))
def test_example(section: Section, tmp_path, monkeypatch, capsys):
    rc, err = _run(section, tmp_path, monkeypatch, capsys)
    assert "Traceback" not in err
    codes = re.findall(r"^error\[(E\d{4})\]", err, re.M)
    assert codes, f"{section.code}: the example reports no error (exit {rc})"
    assert codes[0] == section.code, f"the example of {section.code} reports {codes[0]} first:\n{err}"
    assert rc == 1
    assert section.expected is not None
    assert err.rstrip("\n") == section.expected, (
        f"docs/errors.md is out of date for {section.code}; archc now prints:\n{err}")
