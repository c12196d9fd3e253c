"""The fast schema check (fastjsonschema) accepts exactly the jobs jsonschema accepts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fuzz.corpus import base, benign_cases, big_cases, load_corpus
from fuzz.strategies import JOB_BYTES, JSON_VALUES, near_valid_jobs
from hypothesis import given, settings

from pandacead import jobs
from pandacead.errors import JobRejected

pytest.importorskip("fastjsonschema")


def _authority(raw: Any) -> bool:
    return jobs._validator().is_valid(raw)


def _agree(raw: Any) -> None:
    """Whatever the fast check accepts, jsonschema accepts; so the verdict is always jsonschema's.

    (The converse need not hold: fastjsonschema reads a pattern's ``$`` as the
    very end, so it refuses ``"mock\\n"``, which jsonschema's ``re.search``
    lets through; such a job falls to jsonschema, and validate() refuses the
    line break itself.)
    """
    ok = _authority(raw)
    if jobs._fast_valid(raw):
        assert ok, raw
    assert (jobs.schema_violations(raw) == []) == ok, raw


def _parsed(data: bytes) -> Any:
    try:
        return jobs.parse_json(data)
    except JobRejected:
        return None


def test_the_hostile_corpus_and_benign_jobs_get_the_same_verdict() -> None:
    n = 0
    for _name, data, *_ in [*load_corpus(), *big_cases(), *benign_cases()]:
        raw = _parsed(data)
        if raw is not None:
            _agree(raw)
            n += 1
    assert n > 100
    assert jobs._fast_valid(base("ok")) and jobs.schema_violations(base("ok")) == []


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(near_valid_jobs())
def test_near_valid_jobs_get_the_same_verdict(raw: dict[str, Any]) -> None:
    data = json.dumps(raw, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    parsed = _parsed(data)
    if parsed is not None:
        _agree(parsed)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(JOB_BYTES)
def test_mutated_job_files_get_the_same_verdict(data: bytes) -> None:
    parsed = _parsed(data)
    if parsed is not None:
        _agree(parsed)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json_gets_the_same_verdict(value: Any) -> None:
    _agree(value)
    _agree({**base("x"), "model": value})
    _agree({**base("x"), "dp": value})


def test_the_fast_check_never_fills_in_defaults() -> None:
    raw = base("d")
    raw.pop("backend", None)
    before = json.dumps(raw, sort_keys=True)
    assert jobs._fast_valid(raw)
    assert json.dumps(raw, sort_keys=True) == before
