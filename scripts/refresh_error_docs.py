"""Re-run every example in docs/errors.md and write archc's current output into
its ```text block (after an intended change to a message; review the diff).

    .venv/bin/python scripts/refresh_error_docs.py
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archc.cli import main  # noqa: E402
from archc.compiler import diagnostics  # noqa: E402
from tests.compiler.test_error_catalogue import DOC, _sections  # noqa: E402


def output_of(example: bytes, command: list[str]) -> str:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "example.arch").write_bytes(example)
        cwd = os.getcwd()
        os.chdir(d)
        diagnostics._SOURCE_CACHE.clear()
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                main(command)
        finally:
            os.chdir(cwd)
    return err.getvalue().rstrip("\n")


def main_() -> None:
    text = DOC.read_text(encoding="utf-8")
    for s in _sections():
        if s.expected is None or s.example is None or s.command is None:
            continue
        new = output_of(s.example, s.command)
        if new != s.expected:
            text = text.replace("```text\n" + s.expected + "\n```", "```text\n" + new + "\n```", 1)
            print(f"updated {s.code}")
    DOC.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main_()
