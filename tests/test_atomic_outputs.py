"""Outputs are written atomically: killing `archc build -o` or `archc fmt` midway
leaves the previous file intact (never a half-written one)."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SPECS = Path(__file__).resolve().parents[1] / "archc" / "specs"


def kill_after(args, delay: float, cwd) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "archc.cli", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def is_whole_module(text: str) -> bool:
    try:
        compile(text, "m.py", "exec")
    except SyntaxError:
        return False
    return text.rstrip().splitlines()[-1].strip().startswith("return")


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.8, 1.3, 1.8, 2.5, 3.5])
def test_killing_build_leaves_the_previous_module(tmp_path, delay):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "resnet50.py"
    target.write_text("# previous version\n")
    kill_after(["build", str(SPECS / "resnet.arch"), "--model", "ResNet50", "-o", str(out)], delay, tmp_path)
    text = target.read_text()
    assert text == "# previous version\n" or is_whole_module(text)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.8, 1.3, 2.0])
def test_killing_fmt_leaves_the_previous_spec(tmp_path, delay):
    original = (SPECS / "vgg.arch").read_text()
    messy = original.replace("    ", "  ").replace(" -> ", "->")
    target = tmp_path / "vgg.arch"
    target.write_text(messy)
    kill_after(["fmt", str(target)], delay, tmp_path)
    text = target.read_text()
    assert text == messy or text.endswith("}\n") and "->" in text and text.count("{") == text.count("}")
