"""The README and every page under docs/ show what the code does: every listing is checked.

Every fenced block in those files says what it is (its info string), and is checked so:

  ```net            a whole .net file: netdsl accepts it. A first line `# file: NAME` names
                    it; the file is written under NAME (for an include, or for a command
                    below that reads it). If NAME is a file of this repository (nets/...),
                    the rest of the block must be that file, exactly.
  ```net-fragment   a few layers or a train section: accepted after an
                    `input image: 3x32x32` line (`1x28x28` when it uses mnist). One whose
                    first line is `# from: nets/NAME.net` is an excerpt: verbatim in that
                    file (which is accepted).
  ```net-error      a file with a mistake, named by `# file: NAME`: netdsl rejects it, and
                    a console block of the same page shows `netdsl check NAME`.
  ```console        `$ netdsl check|summary|graph|import ...` lines, each followed by its output:
                    run, and compared exactly (standard output and error together).
                    `$ netdsl train FILE` samples are not run (they take minutes and show
                    timings): their shape is checked against FILE.
  ```json           equal to an object in `netdsl summary --json nets/lenet5.net`.
  ```python         valid Python.
  ```sh, ```text    shell commands, syntax templates: not run (the README's set-up commands
                    are run by .ci/run, verbatim).

No other kind of block is allowed, so a new listing cannot go unchecked.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from opcheck import load_script

import netdsl
from netdsl.errors import NetError

ROOT = Path(__file__).resolve().parent.parent
# Every page: a new page under docs/ is checked without being listed here.
DOCS = ("README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")))
KINDS = {"net", "net-fragment", "net-error", "console", "json", "python", "sh", "text"}
CHEAP = {"check", "summary", "graph", "import"}  # commands that run in a moment (no numba)
FILE_MARK = re.compile(r"# file: (\S+)$")
FROM_MARK = re.compile(r"# from: (\S+)$")


@dataclass(frozen=True)
class Block:
    doc: str  # README.md, docs/language.md
    line: int  # of the opening fence, 1-based
    kind: str  # the info string
    text: str  # the content, dedented to the fence, ending with a newline

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def file(self) -> str | None:
        """The NAME of a first line `# file: NAME`."""
        m = FILE_MARK.match(self.text.split("\n", 1)[0])
        return m.group(1) if m else None


def fenced_blocks(doc: str) -> list[Block]:
    """Every fenced code block of a Markdown file (indented fences, inside lists, too)."""
    blocks, lines = [], (ROOT / doc).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"( *)```(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, kind, start, body = len(m.group(1)), m.group(2).strip(), i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        assert i < len(lines), f"{doc}:{start + 1}: the block is not closed"
        blocks.append(Block(doc, start + 1, kind, "\n".join(body) + "\n"))
        i += 1
    return blocks


BLOCKS = [b for doc in DOCS for b in fenced_blocks(doc)]


def blocks(*kinds: str) -> list:
    return [pytest.param(b, id=f"{b.doc}:{b.line}") for b in BLOCKS if b.kind in kinds]


def fragment_prefix(text: str) -> str:
    return "input image: 1x28x28\n" if "mnist" in text else "input image: 3x32x32\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict[str, Path]:
    """Per document, a folder holding its named listings, as written, and a copy of nets/."""
    dirs = {}
    for doc in DOCS:
        d = tmp_path_factory.mktemp(Path(doc).stem)
        shutil.copytree(ROOT / "nets", d / "nets")
        shutil.copytree(ROOT / "tests" / "interop", d / "tests" / "interop")  # netdsl import
        for b in BLOCKS:
            if b.doc == doc and b.kind.startswith("net") and b.file:
                if (ROOT / b.file).is_file():
                    continue  # a file of the repository: the copy is there already
                (d / b.file).parent.mkdir(parents=True, exist_ok=True)
                (d / b.file).write_text(b.text, encoding="utf-8")
        dirs[doc] = d
    return dirs


def netdsl_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`netdsl ARGS` as a user runs it, with this checkout's package."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    env.pop("NETDSL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "netdsl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def console_commands(block: Block) -> list[tuple[list[str], str]]:
    """The `$ netdsl ...` commands of a console block, each with the output shown after it."""
    out: list[tuple[list[str], str]] = []
    for line in block.text.splitlines(keepends=True):
        if line.startswith("$ "):
            argv = shlex.split(line[2:])
            assert argv[0] == "netdsl", f"{block.where}: only netdsl commands are shown"
            out.append((argv[1:], ""))
        else:
            assert out, f"{block.where}: output before any `$ netdsl` line"
            out[-1] = (out[-1][0], out[-1][1] + line)
    assert out, f"{block.where}: a console block shows at least one command"
    return out


# ---------------------------------------------------------------------------------- listings


def test_every_block_says_what_it_is():
    unmarked = [f"{b.where} ```{b.kind}" for b in BLOCKS if b.kind not in KINDS]
    assert not unmarked, f"mark these blocks as one of {sorted(KINDS)}: {unmarked}"
    assert len(blocks("net", "net-fragment")) > 40  # the parser found the listings


@pytest.mark.parametrize("block", blocks("net"))
def test_net_listing_is_accepted(block, workdir, monkeypatch):
    monkeypatch.chdir(workdir[block.doc])  # includes resolve from the listing's folder
    if block.file and (ROOT / block.file).is_file():
        rest = block.text.split("\n", 1)[1]
        assert rest == (ROOT / block.file).read_text(encoding="utf-8"), (
            f"{block.where} claims to be {block.file} but differs from it"
        )
    netdsl.loads(block.text, block.file or "listing.net")


@pytest.mark.parametrize("block", blocks("net-fragment"))
def test_net_fragment_is_accepted(block, workdir, monkeypatch):
    m = FROM_MARK.match(block.text.split("\n", 1)[0])
    if m:  # an excerpt: verbatim in that file of the repository, which is accepted
        excerpt = block.text.split("\n", 1)[1]
        assert excerpt in (ROOT / m.group(1)).read_text(encoding="utf-8"), (
            f"{block.where} is not in {m.group(1)} as shown"
        )
        netdsl.load(ROOT / m.group(1))
        return
    monkeypatch.chdir(workdir[block.doc])
    netdsl.loads(fragment_prefix(block.text) + block.text, block.file or "fragment.net")


@pytest.mark.parametrize("block", blocks("net-error"))
def test_net_error_listing_is_rejected_and_its_message_shown(block, workdir, monkeypatch):
    assert block.file, f"{block.where}: name the file (`# file: NAME`) its error shows"
    monkeypatch.chdir(workdir[block.doc])
    with pytest.raises(NetError):
        netdsl.load(block.file)
    shown = [argv for b in BLOCKS if b.doc == block.doc and b.kind == "console"
             for argv, _ in console_commands(b)]  # fmt: skip
    assert ["check", block.file] in shown, f"{block.where}: no `$ netdsl check {block.file}`"


def _fragment(doc: str, containing: str) -> netdsl.Network:
    """The network of the one fragment of doc that contains a text."""
    found = [b for b in BLOCKS if b.doc == doc and b.kind == "net-fragment"
             and containing in b.text]  # fmt: skip
    assert len(found) == 1, f"{doc}: {len(found)} fragments contain {containing!r}"
    return netdsl.loads(fragment_prefix(found[0].text) + found[0].text, "fragment.net")


def test_what_the_language_reference_says_the_listings_mean():
    """What the prose says of two listings, beyond their being accepted: a named leaky
    slope is used (it was once documented as ignored), and train settings see constants
    (once documented as invisible there)."""
    net = _fragment("docs/language.md", "leaky(slope=0.2)")
    assert [lyr.attrs.get("activation") for lyr in net.layers[1:]] == [("leaky", 0.2)] * 2
    net = _fragment("docs/language.md", "const b = 256")
    assert net.train["batch"] == 256
    assert net.train["optimizer"]["lr"] == pytest.approx(0.1)


def test_a_listing_of_a_repository_net_is_that_file():
    """A whole listing that declares a network of nets/ must be the file (marked `# file:`)."""
    names = {}
    for path in sorted((ROOT / "nets").glob("*.net")):
        m = re.search(r"^network (\S+)", path.read_text(encoding="utf-8"), re.M)
        names[m.group(1) if m else path.stem] = f"nets/{path.name}"
    for b in BLOCKS:
        m = re.search(r"^network (\S+)", b.text, re.M) if b.kind == "net" else None
        if m and m.group(1) in names:
            assert b.file == names[m.group(1)], (
                f"{b.where} shows network {m.group(1)}: show {names[m.group(1)]} itself, "
                f"marked `# file: {names[m.group(1)]}`"
            )


# ---------------------------------------------------------------------------- command output


@pytest.mark.parametrize("block", blocks("console"))
def test_console_output_is_what_netdsl_prints(block, workdir):
    for argv, shown in console_commands(block):
        if argv[0] == "train":
            continue  # a sample with timings: test_training_sample_matches_its_listing
        assert argv[0] in CHEAP, f"{block.where}: `netdsl {argv[0]}` is not checked here"
        r = netdsl_cli(argv, workdir[block.doc])
        assert r.stdout + r.stderr == shown, f"{block.where}: `netdsl {shlex.join(argv)}`"


def _objects(value) -> list:
    """Every JSON object in value, nested ones included."""
    found = []
    if isinstance(value, dict):
        found.append(value)
        for v in value.values():
            found.extend(_objects(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(_objects(v))
    return found


@pytest.mark.parametrize("block", blocks("json"))
def test_json_sample_is_part_of_the_report(block):
    r = netdsl_cli(["summary", "--json", "nets/lenet5.net"], ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(block.text) in _objects(json.loads(r.stdout)), block.where


@pytest.mark.parametrize("block", blocks("python"))
def test_python_sample_is_python(block):
    ast.parse(block.text, block.where)


def _training_samples() -> list:
    return [pytest.param(b, argv[1], out, id=b.where) for b in BLOCKS if b.kind == "console"
            for argv, out in console_commands(b) if argv[0] == "train"]  # fmt: skip


@pytest.mark.parametrize(("block", "path", "shown"), _training_samples())
def test_training_sample_matches_its_listing(block, path, shown):
    """The sample's figures are measured (the README says when); what the listing fixes,
    and the accuracy the prose states, are checked against it."""
    net = netdsl.load(ROOT / path)
    epochs, batch = net.train["epochs"], net.train["batch"]
    lines = shown.splitlines()
    assert re.fullmatch(rf"training {net.name}: [\d,]+ images, batch {batch}, {epochs} epochs, "
                        rf"cpu, output runs/{net.name}/", lines[0]), lines[0]  # fmt: skip
    ep = [re.match(rf"epoch (\d+)/{epochs}  .*test err (\d+\.\d\d)%", s) for s in lines[1:-1]]
    shown_epochs = [int(m.group(1)) for m in ep if m]
    assert shown_epochs[0] == 1 and shown_epochs[-1] == epochs, lines
    done = re.fullmatch(rf"done: test accuracy (\d+\.\d\d)% \((cross-entropy|mse) \d+\.\d+\) "
                        rf"after {epochs} epochs, .*", lines[-1])  # fmt: skip
    assert done, lines[-1]
    last_err = float([m for m in ep if m][-1].group(2))
    assert abs(100 - last_err - float(done.group(1))) < 0.006, (last_err, done.group(1))
    prose = (ROOT / block.doc).read_text(encoding="utf-8")
    assert f"**{done.group(1)} % test accuracy**" in prose, "the prose states another figure"
    assert re.search(r"Measured \d{4}-\d\d-\d\d", prose), "say when the sample was measured"


# ------------------------------------------------------------------------------ set-up, plan


def _readme_commands():
    return load_script(ROOT / ".ci" / "readme_commands.py", "readme_commands")


def test_ci_runs_the_readmes_setup_commands():
    """.ci/run reads the two commands from the README: what CI proves is what it says."""
    mod = _readme_commands()
    commands = mod.setup_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert commands == ["pip install . && netdsl train nets/lenet5.net",
                        "pip install '.[test]' && pytest -n 2 --dist loadfile"]  # fmt: skip
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".ci/readme_commands.py README.md" in run
    assert run.rstrip().endswith('bash -c "${readme[1]}"')  # the test command comes last
    # the helper refuses a section without exactly two commands
    assert mod.main([str(ROOT / "docs" / "language.md")]) == 1


def test_compile_says_which_parameter_count_is_which():
    """The plan stores a connection table's weight dense; it reports the summary's count
    and says why it stores more."""
    from netdsl.compiler import CompiledNet

    net = netdsl.load(ROOT / "nets" / "lenet5-1998.net")
    used = sum(lyr.n_params for lyr in net.layers)
    plan = CompiledNet(net, batch=2)
    stored = plan.theta.size
    assert stored > used
    first = plan.describe().splitlines()[0]
    assert first.endswith(f", {used:,} parameters ({stored:,} stored in one flat buffer: the "
                          f"connection table of c3 is stored dense, {stored - used:,} weights "
                          f"held at zero)"), first  # fmt: skip
    r = netdsl_cli(["check", "nets/lenet5-1998.net"], ROOT)
    assert f" {used:,} parameters" in r.stdout  # what check and summary say
    plain = CompiledNet(netdsl.load(ROOT / "nets" / "lenet5.net"), batch=2)
    assert plain.theta.size == sum(lyr.n_params for lyr in plain.net.layers)
    assert f", {plain.theta.size:,} parameters in one flat buffer" in plain.describe()


def ranges_table() -> str:
    """docs/language.md §6.11's table, from the tables the checker reads (schema.CALL_ARGS)."""
    from netdsl.schema import CALL_ARGS

    kinds = {
        "float": "number",
        "int": "whole number",
        "bool": "true or false",
        "size": "whole number or size",
        "epochs": "list of increasing whole numbers",
    }
    rows = ["| for | call | parameter | value | range |", "|---|---|---|---|---|"]
    for what, calls in CALL_ARGS.items():
        for call, params in calls.items():
            for name, arg in params.items():
                rng = arg.bounds() or ("—" if arg.kind == "bool" else "any finite number")
                rows.append(f"| {what} | `{call}` | `{name}` | {kinds[arg.kind]} | {rng} |")
    return "\n".join(rows)


def test_the_documented_ranges_are_the_checked_ones():
    """A parameter added to a call, or a range changed, must show in the reference."""
    text = (ROOT / "docs/language.md").read_text(encoding="utf-8")
    assert "\n" + ranges_table() + "\n" in text
