"""pandacead.fastjson is byte for byte the reference serialisations (rfc8785.dumps, json.dumps indent=2),
on generated JSON values and on real artifacts; what it does not vouch for goes to the reference."""

from __future__ import annotations

import json
import math

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from pandacead import fastjson

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", "\x00", "\x1f\x7f", '"\\', "\b\f\n\r\t", "é€𝄞", "\u2028\u2029", "\ud800x"])
_num = (st.integers(min_value=-(2**60), max_value=2**60)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.sampled_from([0.0, -0.0, 1e-7, 1e-6, 1e21, 1e20, 5e-324, 1.7976931348623157e308, 0.1, 1e-05, 2**53, -(2**53)]))
_leaf = st.none() | st.booleans() | _num | _text
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=4) | st.tuples(c, c)
                     | st.dictionaries(_text, c, max_size=4), max_leaves=25)


def _outcome(f, *a, **k):  # type: ignore[no-untyped-def]
    try:
        return ("ok", f(*a, **k))
    except Exception as exc:
        return ("error", type(exc))


@settings(max_examples=400, deadline=None)
@given(_json)
def test_canonical_is_rfc8785(value) -> None:  # type: ignore[no-untyped-def]
    assert _outcome(fastjson.canonical, value) == _outcome(rfc8785.dumps, value)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_pretty_is_json_dumps_indent_2(value) -> None:  # type: ignore[no-untyped-def]
    assert _outcome(fastjson.pretty, value) == _outcome(json.dumps, value, indent=2)


def test_what_the_fast_path_does_not_vouch_for_goes_to_the_reference() -> None:
    class S(str):
        pass

    for value in ({1: 2}, {S("a"): 1}, [S("x")], {"a": math.nan}, [2**53], {"k": object()}, True):
        assert _outcome(fastjson.canonical, value) == _outcome(rfc8785.dumps, value)
        assert _outcome(fastjson.pretty, value) == _outcome(json.dumps, value, indent=2)


def test_a_real_artifact_and_envelope_serialise_as_before(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import drop, job, make_home, run_once

    home = make_home(tmp_path / "h")
    drop(home, "a.json", job("a", epochs=2))
    assert run_once(home, timeout=120).returncode == 0
    for name in ("a.json", "a.dsse.json"):
        raw = (home / "outbox" / name).read_bytes()
        obj = json.loads(raw)
        assert (fastjson.pretty(obj) + "\n").encode() == raw
        assert fastjson.canonical(obj) == rfc8785.dumps(obj)
    art = json.loads((home / "outbox" / "a.json").read_bytes())
    from pandacead.artifacts import artifact_hash

    assert artifact_hash(art) == art["hash"]


@pytest.mark.parametrize("f", [0.01, 1e-05, 123456789.0, 1e21, 1.5e-7, -0.5])
def test_floats_are_rfc8785_numbers(f: float) -> None:
    assert fastjson.canonical([f]) == rfc8785.dumps([f])
