"""Hypothesis strategies for job files: near-valid jobs, hostile values, byte-level mutations."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

from fuzz.corpus import base

NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e-320, 5e-324, 1e308, 2**63, 2**64, 2**64 - 1, -1, 0.5, 1, 100, 100.0000001, 1000, 1001]),
)
HOSTILE_STRINGS = st.one_of(
    st.text(max_size=40),
    st.sampled_from([
        "", ".", "..", "../x", "/etc/passwd", "a/b", "x\n", "x\r\n", "\u0430lice", "\uff4a\uff4f\uff42", "\u202ejob",
        "a\u200bb", "a" * 128, "a" * 129, "victim.dsse", "victim.error", "CON", "nul", "-rf", "~", "*", "mock",
        "opacus", "synthetic", "classification", "regression", "mlp", "linear", "rdp", "prv", "\x00", "\ud800",
    ]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, HOSTILE_STRINGS)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)

JOB_FIELDS = ["job_id", "user_id", "dataset", "task", "dp", "epochs", "batch_size", "learning_rate", "seed", "backend", "model"]
DP_FIELDS = ["enabled", "epsilon", "delta", "clip", "noise_multiplier", "accountant"]


@st.composite
def near_valid_jobs(draw: Any) -> dict[str, Any]:
    """A valid job with a few fields replaced, removed or added: the edge of the schema."""
    job: dict[str, Any] = base(draw(st.from_regex(r"\Ahv-[a-z0-9]{1,12}\Z")))
    dp = dict(job["dp"])
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["set", "set", "set", "del", "add", "dp-set", "dp-set", "dp-del", "model"]))
        if action == "set":
            job[draw(st.sampled_from(JOB_FIELDS))] = draw(JSON_VALUES)
        elif action == "del":
            job.pop(draw(st.sampled_from(JOB_FIELDS)), None)
        elif action == "add":
            job[draw(st.text(max_size=10))] = draw(JSON_VALUES)
        elif action == "dp-set":
            dp[draw(st.sampled_from(DP_FIELDS))] = draw(st.one_of(NUMBERS, SCALARS))
        elif action == "dp-del":
            dp.pop(draw(st.sampled_from(DP_FIELDS)), None)
        else:
            job["model"] = {"type": draw(st.sampled_from(["linear", "mlp", "pickle"])),
                            "hidden": draw(st.lists(NUMBERS, max_size=6))}
    if isinstance(job.get("dp"), dict):
        job["dp"] = dp
    return job


def dumps_loose(obj: Any) -> bytes:
    """JSON as a hostile writer might produce it: NaN/Infinity literals allowed, any unicode."""
    return json.dumps(obj, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated_bytes(draw: Any) -> bytes:
    """A valid job's bytes with a few byte-level edits: flips, insertions, deletions, truncation."""
    data = bytearray(json.dumps(base(draw(st.from_regex(r"\Ahm-[a-z0-9]{1,12}\Z")))).encode())
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        else:
            j = draw(st.integers(i, len(data)))
            data[j:j] = data[i:j]
    return bytes(data)


JOB_BYTES = st.one_of(
    near_valid_jobs().map(dumps_loose),
    mutated_bytes(),
    JSON_VALUES.map(dumps_loose),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)

# Inbox file names: anything a filesystem takes (no "/" or NUL, at most 255 bytes), ending in .json.
FILE_NAMES = st.one_of(
    st.from_regex(r"\A[a-z0-9]{1,20}\Z"),
    st.text(alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=60),
    st.binary(min_size=1, max_size=60).filter(lambda b: b"/" not in b and b"\0" not in b).map(
        lambda b: b.decode("utf-8", "surrogateescape")),
).filter(lambda s: not s.startswith(".") and len((s + ".json").encode("utf-8", "surrogateescape")) <= 250)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
