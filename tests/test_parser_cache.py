"""The parser's tables kept in netdsl's cache folder (netdsl/parse.py `_parser`): a start that
loads them parses and reports errors exactly as one that builds them, and a missing, damaged
or unwritable cache only means building them again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netdsl import parse
from netdsl.errors import NetError
from netdsl.limits import MAX_DEPTH
from netdsl.source import Source

ROOT = Path(__file__).resolve().parent.parent
NETS = sorted((ROOT / "nets").glob("*.net"))
BAD = [  # a syntax error, and limits the post-lexer enforces (it is code, not cached)
    "network t\ninput image: 1x8x8\nconv c1: 6 filters 5x5,, pad 2\n",
    "network t\ninput image: 1x8x8\nconv c1: " + "(" * (MAX_DEPTH + 2) + "1 filters 5x5\n",
    "network t\ninput image: 1x8x8\nconv c1: " + "-" * (MAX_DEPTH + 2) + "1 filters 5x5\n",
    "network t\ninput image: 1x8x8\nconv c1: 6 filters 5x5\n(\n",
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder; the in-process parser is dropped before and after."""
    monkeypatch.setenv("NETDSL_CACHE_DIR", str(tmp_path))
    parse._parser.cache_clear()
    yield tmp_path
    parse._parser.cache_clear()


def _outcomes() -> list:
    """What the current parser makes of every shipped net and of the bad sources."""
    out = [repr(parse.parse_source(Source(str(p), p.read_text()))) for p in NETS]
    for text in BAD:
        with pytest.raises(NetError) as e:
            parse.parse_source(Source("bad.net", text))
        out.append(str(e.value))
    return out


def _table_file(folder: Path) -> Path:
    (path,) = (folder / "parser").iterdir()
    return path


def _outcomes_loaded() -> list:
    """_outcomes() with a parser that must come from the cache file (fails if built)."""
    parse._parser.cache_clear()
    real = parse.lark.Lark.__init__

    def built(self, *a, **k):
        raise AssertionError("the parser was built, not loaded")

    parse.lark.Lark.__init__ = built
    try:
        return _outcomes()
    finally:
        parse.lark.Lark.__init__ = real


def test_loaded_tables_parse_and_fail_as_built_ones(cache):
    built = _outcomes()  # builds and saves the tables
    path = _table_file(cache)
    assert path.stat().st_size > 1000
    os.utime(path, (1, 1))  # to see below that loading left the file alone
    assert _outcomes_loaded() == built
    assert path.stat().st_mtime == 1


def test_a_damaged_table_file_is_rebuilt_whole(cache):
    built = _outcomes()
    path = _table_file(cache)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # as if a start had stopped mid-write
    parse._parser.cache_clear()
    assert _outcomes() == built
    assert [p.name for p in (cache / "parser").iterdir()] == [path.name]  # no temporary left
    assert _outcomes_loaded() == built  # written again, whole


def test_an_unwritable_cache_folder_only_means_building(cache):
    (cache / "parser").write_text("a file where the folder would go\n")
    assert _outcomes()  # parses; nothing to keep the tables in
    parse._parser.cache_clear()
    assert len(_outcomes()) == len(NETS) + len(BAD)
