"""Imports resolve only under the importing file's folder, ARCHC_PATH and std."""
import os

import pytest

import archc

MODEL = '\nmodel M() {\n    input x: [B, 4]\n    output y = x -> Act\n}\n'


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "outside.arch").write_text("block Act(x) { return x -> relu }\n")
    spec = tmp_path / "project"
    spec.mkdir()
    (spec / "lib").mkdir()
    (spec / "lib" / "inside.arch").write_text("block Act(x) { return x -> relu }\n")
    return tmp_path


def code_of(path):
    with pytest.raises(archc.CompileError) as e:
        archc.load(path)
    return e.value.diagnostics[0]


def test_files_below_the_importing_folder_are_fine(tree):
    main = tree / "project" / "main.arch"
    main.write_text('import "lib/inside.arch"' + MODEL)
    assert archc.load(main).check().params == 0


def test_dot_dot_is_refused(tree):
    main = tree / "project" / "main.arch"
    main.write_text('import "../outside.arch"' + MODEL)
    d = code_of(main)
    assert d.code == "E0105" and (d.span.line, d.span.column) == (1, 1)


def test_absolute_paths_are_refused(tree):
    main = tree / "project" / "main.arch"
    main.write_text(f'import "{tree / "outside.arch"}"' + MODEL)
    assert code_of(main).code == "E0105"


def test_symbolic_links_are_followed_before_the_check(tree):
    os.symlink(tree / "outside.arch", tree / "project" / "lib" / "link.arch")
    main = tree / "project" / "main.arch"
    main.write_text('import "lib/link.arch"' + MODEL)
    assert code_of(main).code == "E0105"


def test_archc_path_adds_a_root(tree, monkeypatch):
    monkeypatch.setenv("ARCHC_PATH", str(tree))
    main = tree / "project" / "main.arch"
    main.write_text('import "outside.arch"' + MODEL)
    assert archc.load(main).check().params == 0


def test_a_spec_never_executes_python(tree):
    main = tree / "project" / "main.arch"
    main.write_text('import "os"\nlet X = __import__("os")' + MODEL)
    with pytest.raises(archc.CompileError):
        archc.load(main).check()
