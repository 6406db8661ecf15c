"""`archc compress`: the table, the files it writes, what it never overwrites, and its diagnostics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import archc
from archc.cli import main
from archc.compress.check import check_compress_plan

SPEC = """
model Net() {
    input x: float32[B, 1, 8, 8]
    x = x -> c1: conv(8, 3, padding=1, bias=false) -> b1: bn -> relu -> max_pool(2) -> flatten
    output logits = x -> h: linear(32) -> relu -> fc: linear(10)
}

compress Small for Net() {
    prune(on="op:conv,op:linear", amount=0.5, exclude="fc")
    quantize(mode="dynamic", on="op:linear")
}
"""


@pytest.fixture()
def spec(tmp_path):
    path = tmp_path / "net.arch"
    path.write_text(SPEC)
    torch.manual_seed(0)
    net = archc.load(path).build("Net")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "net.safetensors")
    return path


def test_compress_writes_spec_and_weights(spec, capsys):
    weights = spec.with_name("net.safetensors")
    original = spec.read_bytes(), weights.read_bytes()
    rc = main(["compress", str(spec), "--plan", "Small", "--weights", str(weights), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    names = [s["name"] for s in out["stages"]]
    assert names == ["float", "pruned", "quantized"]
    float_, pruned, quant = out["stages"]
    assert pruned["params"] < float_["params"] and pruned["flops"] < float_["flops"]
    assert quant["bytes"] < pruned["bytes"] < float_["bytes"]
    assert {q[0] for q in out["quantized"]} == {"h", "fc"}
    assert ("c1", "conv") in {(p, op) for p, op, _ in out["left_float"]}
    written = Path(out["spec"])
    assert written.name == "net.Small.arch" and Path(out["weights"]).name == "net.Small.safetensors"
    small = archc.load(written).graph()
    assert {n.path: n.attrs.out for n in small.nodes() if n.op in ("conv", "linear")} == {"c1": 4, "h": 16, "fc": 10}
    assert Path(out["weights"]).stat().st_size == quant["bytes"]
    assert (spec.read_bytes(), weights.read_bytes()) == original  # never touched


def test_never_overwrites_the_original_unless_in_place(spec, capsys):
    weights = spec.with_name("net.safetensors")
    rc = main(["compress", str(spec), "--plan", "Small", "--weights", str(weights), "-o", str(spec), "--quiet"])
    assert rc == 2
    assert "--in-place" in capsys.readouterr().err
    rc = main(["compress", str(spec), "--plan", "Small", "--weights", str(weights), "--weights-out", str(weights),
               "--quiet"])
    assert rc == 2
    assert spec.read_text() == SPEC
    rc = main(["compress", str(spec), "--plan", "Small", "--weights", str(weights), "--in-place", "--quiet"])
    assert rc == 0
    assert "Written by `archc compress`" in spec.read_text()


def test_table_is_printed(spec, capsys):
    rc = main(["compress", str(spec), "--plan", "Small", "--weights", str(spec.with_name("net.safetensors")),
               "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    for row in ("parameters", "FLOPs", "bytes on disk", "CPU latency", "accuracy", "left in float"):
        assert row in out


BAD = """
model Net() {
    input x: float32[B, 16]
    output logits = x -> h: linear(32) -> relu -> fc: linear(4)
}

model Big() {
    input x: float32[B, 16]
    output logits = x -> fc: linear(10)
}

compress A for Net() {
    prune(amount=-0.1)
}

compress Q for Net() {
    quantize(mode="dynamic", on="op:relu")
}

compress D for Net() {
    distill(teacher=Big())
    data("digits")
}

compress M for Net() {
    quantize(mode="qat")
}

compress L for Net() {
    quantize(mode="dynamic")
    prune(amount=0.5)
}

compress U for Net() {
    data("no such data")
}
"""


@pytest.mark.parametrize("plan,code", [("A", "E0801"), ("Q", "E0802"), ("D", "E0803"), ("M", "E0804"),
                                       ("L", "E0805"), ("U", "E0804")])
def test_bad_plans_have_codes_and_positions(plan, code):
    prog = archc.parse(BAD, "bad.arch")
    diags = check_compress_plan(prog, plan)
    assert diags and diags[0].code == code
    assert diags[0].span is not None and diags[0].span.line > 1


def test_missing_data_at_run_time(tmp_path, capsys):
    path = tmp_path / "net.arch"
    path.write_text(SPEC.replace('quantize(mode="dynamic", on="op:linear")',
                                 'quantize(mode="dynamic", on="op:linear")\n    data("nosuchmodule_xyz:load")'))
    rc = main(["compress", str(path), "--plan", "Small"])
    assert rc == 1
    assert "error[E0804]" in capsys.readouterr().err
