"""pandacead/budget_read.py's TOML subset parser: never a different value from tomllib's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pandacead.budget_read import parse_simple_toml
from pandacead.config import DEFAULT_TOML

tomllib = pytest.importorskip("tomllib")  # the reader uses the subset parser on Python >= 3.11 only
REPO = Path(__file__).resolve().parents[1]


def _tomllib(text: str) -> dict | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def _agrees(text: str) -> bool:
    got = parse_simple_toml(text)
    return got is None or got == _tomllib(text) and repr(got) == repr(_tomllib(text))


def test_the_configurations_pandacead_writes_take_the_subset_path() -> None:
    texts = [DEFAULT_TOML, *(p.read_text() for p in REPO.rglob("*.toml") if "pandacead" in p.name
                             and ".venv" not in p.parts)]
    texts.append((REPO / "bench" / "common.py").read_text().split('BENCH_CONFIG = """\\\n')[1].split('"""')[0]
                 .format(workers=2, backend="mock", trainer_extra='preload = ["torch", "opacus"]'))
    for text in texts:
        got = parse_simple_toml(text)
        assert got is not None and got == tomllib.loads(text)


CASES = [
    'a = 07', 'a = 1_000', 'a = +1', 'a = 1.', 'a = .5', 'a = 1e', 'a = 1e+05', 'a = 1E5', 'a = -0', 'a = -0.0',
    'a = inf', 'a = nan', 'a = 0x10', 'a = 1979-05-27', 'a = True', 'a = "x\\ty"', "a = 'x\\y'", 'a = "a#b" # c',
    'a = """x"""', "a = '''x'''", 'a = "x" y', 'a = [1, 2,]', 'a = [1, "x"]', 'a = [[1], [2]]', 'a = [ ]', 'a = [,]',
    'a = {b = 1}', 'a.b = 1', '"a" = 1', 'a = 1\na = 2', '[t]\n[t]', '[t]\nb = 1\n[t.b]', '[t.b]\n[t]\nb = 1',
    '[t.b]\n[t]', '[[t]]', '[ t . u ]\nx = 1', '[t] x', '[t] # c', 'a=1#c', 'a = 1 2', 'a =', '= 1', 'a = "\x01"',
    '\ufeffa = 1', 'a = "é"', 'é = 1', 'a = 1\r\nb = 2', 'a = 9999999999999999999999', 'a = 1.5e-3', 'a = [true, false]',
    'a = ""', "a = ''", 'a = "\'"', "a = '\"'", 'a = "x', 'a\t=\t1\t', 'a = 1\t# c',
]


def test_tricky_lines_agree_with_tomllib() -> None:
    for text in CASES:
        assert _agrees(text), text


_atoms = st.sampled_from([
    "a", "b", "t", "t.u", "=", " ", "\t", "#", '"', "'", "[", "]", "[[", ",", ".", "-", "+", "_", "0", "1", "07",
    "1.5", "1e3", "e", "E", "true", "false", "x", "\\", "\n", "{", "}", "é", ":", "2024-01-01",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(_atoms, max_size=30).map("".join))
def test_random_text_agrees_with_tomllib(text: str) -> None:
    assert _agrees(text)


_key = st.sampled_from(["a", "b", "c-d", "e_f", "g1"])
_val = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr),
                 st.booleans().map(lambda b: str(b).lower()), st.text("abc #=[]'é", max_size=6).map(lambda s: f'"{s}"'),
                 st.lists(st.integers(0, 9).map(str), max_size=3).map(lambda v: "[" + ", ".join(v) + "]"))
_line = st.one_of(st.tuples(_key, _val).map(lambda kv: f"{kv[0]} = {kv[1]}"),
                  st.lists(_key, min_size=1, max_size=2).map(lambda p: "[" + ".".join(p) + "]"),
                  st.just("# comment"), st.just(""))


@settings(max_examples=400, deadline=None)
@given(st.lists(_line, max_size=12).map("\n".join))
def test_random_documents_agree_with_tomllib(text: str) -> None:
    assert _agrees(text)
