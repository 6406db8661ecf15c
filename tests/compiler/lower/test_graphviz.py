import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest

import archc
import archc.cli
from archc.compiler.lower.graphviz import render

SPEC = """
block Res(x, width: int) {
    y = x -> fc1: linear(width) -> relu -> fc2: linear(width)
    return relu(y + x)
}

model Tiny() {
    input x: float32[B, 16]
    x = x -> stem: linear(32) -> a: Res(32) -> b: Res(32)
          -> stack: [Res(32) * 2]
          -> head: [linear(64), relu, [linear(64), relu], linear(10)]
    x = x -> fc: linear(10) -> relu -> fc
    output y = x
}
"""

NODE = re.compile(r"^\t*(\d+) \[")
EDGE = re.compile(r'^\t*(\d+) -> (\d+) \[label="([^"]*)"')
OPEN = re.compile(r'^\t*subgraph "?cluster_([^" ]+)"? \{')


def parse_dot(source: str):
    """(node -> enclosing cluster path, cluster -> parent cluster, edges) from our own output."""
    stack, parents, home, edges = [""], {}, {}, []
    for line in source.splitlines():
        if m := OPEN.match(line):
            parents[m.group(1)] = stack[-1]
            stack.append(m.group(1))
        elif line.strip() == "}":
            stack.pop()
        elif m := EDGE.match(line):
            edges.append((int(m.group(1)), int(m.group(2)), m.group(3)))
        elif m := NODE.match(line):
            home[int(m.group(1))] = stack[-1]
    return home, parents, edges


@pytest.fixture(scope="module")
def graph():
    return archc.parse(SPEC).graph()


def test_one_graphviz_node_per_op_node(graph):
    home, _, _ = parse_dot(render(graph).source)
    assert sorted(home) == sorted(n.id for n in graph.nodes())


def test_edges_carry_output_shapes(graph):
    _, _, edges = parse_dot(render(graph).source)
    want = Counter((v.node, n.id, str(v.type)) for n in graph.nodes() for v in graph.in_values(n.id))
    assert Counter(edges) == want
    shapes = {label for _, _, label in edges}
    assert {"[B, 16]", "[B, 32]", "[B, 64]", "[B, 10]"} <= shapes


def test_clusters_nest_as_paths_do(graph):
    home, parents, _ = parse_dot(render(graph).source)
    assert parents == {"a": "", "b": "", "stack": "", "stack.0": "stack", "stack.1": "stack",
                       "head": "", "head.2": "head"}
    for n in graph.nodes():
        expect = {"a": "a", "b": "b", "stack": n.path.rsplit(".", 1)[0], "head": n.path.rsplit(".", 1)[0]}
        assert home[n.id] == expect.get(n.path.split(".")[0], ""), n.path
    source = render(graph).source
    assert "a</b> : Res" in source and "stack.1</b> : Res" in source


def test_node_labels_and_marks(graph):
    source = render(graph).source
    shared = [n for n in graph.nodes() if n.shared]
    assert len(shared) == 1 and "shares weights" in _line(source, shared[0].id)
    assert "<b>linear</b> 32" in _line(source, graph.nodes()[1].id)
    x = graph.inputs[0]
    assert "invhouse" in _line(source, x) and "[B, 16]" in _line(source, x)
    assert "shape=house" in _line(source, graph.outputs[0]) and "[B, 10]" in _line(source, graph.outputs[0])


def test_color_by_hook(graph):
    source = render(graph, color_by=lambda n: "#ff0000" if n.op == "relu" else None).source
    relus = [n.id for n in graph.nodes() if n.op == "relu"]
    assert all('fillcolor="#ff0000"' in _line(source, r) for r in relus)
    assert source.count("#ff0000") == len(relus)


def test_deterministic():
    a = render(archc.parse(SPEC).graph()).source
    b = render(archc.parse(SPEC).graph()).source
    assert a == b


def test_conv_short_form():
    g = archc.parse("""
model C() {
    input x: float32[B, 3, 32, 32]
    output y = x -> c: conv(64, 3, stride=2, padding=1, bias=false) -> max_pool(2)
}
""").graph()
    source = render(g).source
    assert "<b>conv</b> 64, 3x3, s2<br/>" in source
    assert "label=<max_pool 2x2>" in source  # weightless, auto-named: no path line


def test_does_not_import_torch():
    code = ("import sys, archc\n"
            "from archc.compiler.lower.graphviz import render\n"
            f"render(archc.parse({SPEC!r}).graph()).source\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_cli_render_svg(tmp_path):
    spec = tmp_path / "tiny.arch"
    spec.write_text(SPEC)
    out = tmp_path / "x.svg"
    assert archc.cli.main(["render", str(spec), "-o", str(out)]) == 0
    assert "<svg" in out.read_text()


def _line(source: str, nid: int) -> str:
    (line,) = [ln for ln in source.splitlines() if NODE.match(ln) and NODE.match(ln).group(1) == str(nid)]
    return line


def test_multi_output_edges_name_the_port():
    g = archc.parse("""
model S() {
    input x: float32[B, 8]
    a, b = split(x, 4)
    output y = concat(b, a)
}
""").graph()
    source = render(g).source
    _, _, edges = parse_dot(source)
    assert [label for *_, label in edges if label == "[B, 4]"] == ["[B, 4]", "[B, 4]"]
    assert 'taillabel=1' in source and 'taillabel=0' in source
