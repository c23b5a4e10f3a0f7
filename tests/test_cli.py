"""The `netdsl` command: check/summary/graph output, exit codes, no numba import, speed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import netdsl
from netdsl.cli import main

ROOT = Path(__file__).resolve().parent.parent
NETS = sorted(f"nets/{p.name}" for p in (ROOT / "nets").glob("*.net"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(autouse=True)
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=timeout,
    )


# ---------------------------------------------------------------- check


def test_check_prints_one_line_per_file_and_exits_0(capsys):
    code, out, err = run(capsys, ["check", *NETS])
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == len(NETS)
    for path, line in zip(NETS, lines, strict=True):
        net = netdsl.load(path)
        params = sum(lyr.n_params for lyr in net.layers)
        assert line.startswith(
            f"{path}: ok  {net.name}: {len(net.layers)} layers, {params:,} parameters, "
        )
        assert line.endswith(" MACs")


def test_check_line_for_lenet5(capsys):
    code, out, _ = run(capsys, ["check", "nets/lenet5.net"])
    assert code == 0
    assert out == "nets/lenet5.net: ok  lenet5: 9 layers, 61,706 parameters, 416.52K MACs\n"


def test_check_exits_2_when_any_file_is_bad(capsys, tmp_path):
    bad = tmp_path / "bad.net"
    bad.write_text("input image: 1x28x28\nconv c1: 6 filters 5x5, strid 2\n")
    code, out, err = run(capsys, ["check", "nets/lenet5.net", str(bad), "nets/vgg16.net"])
    assert code == 2
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "nets/lenet5.net",
        "nets/vgg16.net",
    ]
    assert err.startswith(f"{bad}:2:25: error: unknown option 'strid' for conv\n")
    assert err.count("error:") == 1


def test_check_exits_2_when_every_file_is_bad(capsys, tmp_path):
    files = []
    for i in range(3):
        f = tmp_path / f"bad{i}.net"
        f.write_text(f"input image: 1x28x28\nconv c{i}: {i} filters\n")
        files.append(str(f))
    code, out, err = run(capsys, ["check", *files])
    assert code == 2
    assert out == ""
    assert err.count(": error: ") == 3


def test_check_needs_a_file(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    assert "the following arguments are required: FILE" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["chek", "nets/lenet5.net"])
    assert info.value.code == 2
    assert "invalid choice: 'chek'" in capsys.readouterr().err


# ---------------------------------------------------------------- summary


def test_summary_table_structure(capsys):
    code, out, err = run(capsys, ["summary", "nets/lenet5.net"])
    assert code == 0 and err == ""
    lines = out.rstrip("\n").split("\n")
    assert lines[0] == "network lenet5  (nets/lenet5.net)"
    rules = [i for i, line in enumerate(lines) if set(line) == {"─"}]
    assert len(rules) == 3
    header = lines[rules[0] + 1].split()
    assert header == [
        "#",
        "name",
        "type",
        "kernel",
        "input",
        "output",
        "params",
        "MACs",
        "memory",
        "RF",
        "jump",
    ]
    rows = lines[rules[1] + 1 : rules[2]]
    net = netdsl.load("nets/lenet5.net")
    assert [row.split()[1] for row in rows] == [lyr.name for lyr in net.layers]
    assert [row.split()[0] for row in rows] == [str(i) for i in range(len(net.layers))]
    totals = lines[rules[2] + 1 :]
    assert totals[0].split() == ["trainable", "parameters", "61,706"]
    assert "MACs per image" in totals[3] and "416,520" in totals[3]
    assert "FLOPs per image" in totals[4] and "833,040" in totals[4]
    assert totals[-1].startswith("training batch of 128 ")


def test_summary_batch_option_changes_the_memory_line(capsys):
    _, out, _ = run(capsys, ["summary", "nets/lenet5.net", "--batch", "32"])
    assert re.search(r"^training batch of 32 ", out, re.M)
    _, js, _ = run(capsys, ["summary", "nets/lenet5.net", "--json", "--batch", "32"])
    totals = json.loads(js)["totals"]
    assert totals["batch"] == 32
    assert totals["training_activation_bytes"] == 2 * 32 * totals["activation_bytes_per_image"]


def test_summary_of_a_multi_gpu_net_has_a_gpu_column(capsys):
    _, out, _ = run(capsys, ["summary", "nets/alexnet.net"])
    header = next(line for line in out.splitlines() if line.lstrip().startswith("#"))
    assert header.split()[-1] == "gpu"
    assert "GPUs                                      2" in out
    assert re.search(r"^  gpu 0: +30,482,612 params", out, re.M)
    assert re.search(r"^  gpu 1: +30,482,612 params", out, re.M)


def test_summary_json_is_json_with_one_row_per_layer(capsys):
    for path in NETS:
        code, out, err = run(capsys, ["summary", "--json", path])
        assert code == 0 and err == ""
        doc = json.loads(out)
        net = netdsl.load(path)
        assert doc["network"] == net.name
        assert doc["file"] == path
        assert [row["name"] for row in doc["layers"]] == [lyr.name for lyr in net.layers]
        assert [row["index"] for row in doc["layers"]] == list(range(len(net.layers)))


# ---------------------------------------------------------------- graph


_DOT_TOKEN = re.compile(
    r'\s*(?:(->)|("(?:[^"\\]|\\.)*")|([A-Za-z_][\w.]*|-?\d+(?:\.\d+)?)|([{}\[\];,=]))'
)


def _tokens(text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        if text[i:].strip() == "":
            break
        m = _DOT_TOKEN.match(text, i)
        assert m, f"DOT: cannot read {text[i : i + 30]!r}"
        out.append(m.group(m.lastindex))
        i = m.end()
    return out


def parse_dot(text: str) -> dict:
    """A small DOT reader (the subset netdsl writes): graph, subgraphs, nodes, edges, attrs."""
    toks = _tokens(text)
    pos = 0
    nodes: dict[str, dict] = {}
    edges: list[tuple[str, str, dict]] = []
    clusters: dict[str, list[str]] = {}

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take(expected=None):
        nonlocal pos
        tok = toks[pos]
        assert expected is None or tok == expected, f"DOT: expected {expected}, got {tok}"
        pos += 1
        return tok

    def ident():
        tok = take()
        assert tok not in ("{", "}", "[", "]", ";", ",", "=", "->"), f"DOT: bad id {tok}"
        return tok[1:-1] if tok.startswith('"') else tok

    def attrs() -> dict:
        out = {}
        while peek() == "[":
            take("[")
            while peek() != "]":
                key = ident()
                take("=")
                out[key] = ident()
                if peek() in (",", ";"):
                    take()
            take("]")
        return out

    def stmts(cluster: list[str] | None) -> None:
        while peek() != "}":
            if peek() == "subgraph":
                take()
                name = ident() if peek() != "{" else ""
                take("{")
                members: list[str] = []
                stmts(members)
                take("}")
                if name.startswith("cluster"):
                    clusters[name] = members
            elif peek() in ("node", "edge", "graph"):
                take()
                attrs()
            else:
                first = ident()
                if peek() == "=":
                    take()
                    ident()
                elif peek() == "->":
                    chain = [first]
                    while peek() == "->":
                        take()
                        chain.append(ident())
                    a = attrs()
                    edges.extend((x, y, a) for x, y in zip(chain, chain[1:], strict=False))
                else:
                    nodes[first] = attrs()
                    if cluster is not None:
                        cluster.append(first)
            if peek() == ";":
                take()

    assert take() == "digraph"
    name = ident()
    take("{")
    stmts(None)
    take("}")
    assert pos == len(toks), "DOT: text after the graph"
    return {"name": name, "nodes": nodes, "edges": edges, "clusters": clusters}


def test_graph_of_alexnet_is_a_digraph_with_a_gpu_cluster(capsys):
    code, out, err = run(capsys, ["graph", "nets/alexnet.net"])
    assert code == 0 and err == ""
    dot = parse_dot(out)
    net = netdsl.load("nets/alexnet.net")
    names = [lyr.name for lyr in net.layers]
    assert dot["name"] == "alexnet"
    assert sorted(dot["nodes"]) == sorted(names)
    assert list(dot["clusters"]) == ["cluster_gpus"]
    split = [lyr.name for lyr in net.layers if lyr.type not in ("input", "loss")]
    assert dot["clusters"]["cluster_gpus"] == split
    assert {(a, b) for a, b, _ in dot["edges"]} == {
        (src, lyr.name) for lyr in net.layers for src in lyr.inputs
    }
    red = sorted(b for _, b, attr in dot["edges"] if attr.get("label") == "exchange")
    assert red == sorted(["norm1", "norm2", "conv3", "fc6", "fc7", "fc8", "loss"])
    assert dot["nodes"]["conv1"]["label"] == "{conv1|conv+relu 11x11/4|96x55x55}"


@pytest.mark.parametrize("path", NETS)
def test_graph_of_every_net_parses(capsys, path):
    code, out, _ = run(capsys, ["graph", path])
    assert code == 0
    dot = parse_dot(out)
    net = netdsl.load(path)
    assert sorted(dot["nodes"]) == sorted(lyr.name for lyr in net.layers)
    assert len(dot["edges"]) == sum(len(lyr.inputs) for lyr in net.layers)
    assert bool(dot["clusters"]) == (net.gpus > 1)
    for _, attr in dot["nodes"].items():
        assert attr["label"].startswith("{") and attr["label"].endswith("}")


def test_graph_to_a_file(capsys, tmp_path):
    target = tmp_path / "resnet.dot"
    code, out, err = run(capsys, ["graph", "nets/resnet18.net", "-o", str(target)])
    assert code == 0
    assert out == ""
    assert err == f"wrote {target}\n"
    dot = parse_dot(target.read_text())
    assert ("layer1a.bn2", "layer1a.out") in {(a, b) for a, b, _ in dot["edges"]}
    assert ("pool1", "layer1a.out") in {(a, b) for a, b, _ in dot["edges"]}


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_graphviz_accepts_the_dot(tmp_path):
    for path in NETS:
        dot = subprocess.run(
            [sys.executable, "-m", "netdsl", "graph", path],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        subprocess.run(
            ["dot", "-Tsvg", "-o", str(tmp_path / "g.svg")], input=dot, text=True, check=True
        )


# ---------------------------------------------------------------- no numba, and fast


def test_summary_does_not_import_numba():
    r = python(
        "import sys; from netdsl.cli import main; main(['summary','nets/vgg16.net']); "
        "assert 'numba' not in sys.modules, 'numba was imported'"
    )
    assert r.returncode == 0, r.stderr
    assert "network vgg16" in r.stdout


@pytest.mark.parametrize(
    "argv",
    [["check", *NETS], ["summary", "--json", "nets/alexnet.net"], ["graph", "nets/resnet18.net"]],
)
def test_check_json_and_graph_do_not_import_numba(argv):
    r = python(
        f"import sys; from netdsl.cli import main; code = main({argv!r}); "
        "assert code == 0; assert 'numba' not in sys.modules, 'numba was imported'"
    )
    assert r.returncode == 0, r.stderr


def test_a_bad_file_does_not_import_numba(tmp_path):
    bad = tmp_path / "bad.net"
    bad.write_text("input image: 1x28x28\nconv c1: 6 filters 5x5, groups 4\n")
    r = python(
        f"import sys; from netdsl.cli import main; code = main(['check', {str(bad)!r}]); "
        "assert code == 2; assert 'numba' not in sys.modules"
    )
    assert r.returncode == 0, r.stderr


# What would make `check` slow to answer (about 0.1 s per net, interpreter start included,
# measured): the kernels' compiler and the optional libraries. Tests never assert on time,
# so this asserts on what is imported.
HEAVY = ("numba", "llvmlite", "scipy", "torch", "matplotlib", "PIL", "onnx", "onnxruntime",
         "tensorboardX", "safetensors")  # fmt: skip


@pytest.mark.parametrize("path", NETS)
def test_check_imports_no_compiler_or_optional_library(path):
    r = python(
        f"import sys; from netdsl.cli import main; code = main(['check', {path!r}]); "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
        "assert code == 0, code; assert not heavy, heavy"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{path}: ok")


def test_netdsl_debug_prints_the_ir_after_each_pass(capsys, monkeypatch):
    monkeypatch.setenv("NETDSL_DEBUG", "1")
    code, out, err = run(capsys, ["check", "nets/lenet5.net"])
    assert code == 0
    for name in ("shapes", "data", "receptive", "placement"):
        assert f"--- IR after pass '{name}'" in err
    assert out.startswith("nets/lenet5.net: ok")
