"""Job parsing and validation: raw bytes in, a typed `Job` out, or every violation named."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from functools import lru_cache
from typing import Any

from pandacead.errors import JobRejected
from pandacead.schemas import load_schema

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The outbox names a job's files <job_id>.json, <job_id>.dsse.json and <job_id>.error.json,
# so a job_id ending in one of these would overwrite another job's envelope or report.
RESERVED_SUFFIXES = (".dsse", ".error")
MAX_DEPTH = 16


def valid_id(value: object) -> bool:
    """True for a well-formed identifier. `ID_PATTERN.match` alone would accept a trailing
    newline (Python's `$` matches before one, and JSON Schema's `pattern` uses that same `$`)."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def valid_job_id(value: object) -> bool:
    return valid_id(value) and not str(value).lower().endswith(RESERVED_SUFFIXES)


@dataclass(frozen=True)
class DPParams:
    enabled: bool = True
    epsilon: float = 1.0
    delta: float = 1e-5
    clip: float = 1.0
    noise_multiplier: float | None = None
    accountant: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    type: str = "linear"
    hidden: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()  # cnn only
    kernel: int = 3  # cnn only


@dataclass(frozen=True)
class Job:
    """A validated job. Later stages use this, never the raw JSON."""

    job_id: str
    user_id: str
    dataset: str = "synthetic"
    task: str = "classification"
    dp: DPParams = field(default_factory=DPParams)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.01
    seed: int = 42
    backend: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    quote: str | None = None  # "sha256:<hex>" of a quote this host issued (pandacead.quote)
    #: Private hyperparameter search (schema `search`; see pandacead_opacus.search), or None.
    search: dict[str, Any] | None = None
    #: Training settings the job left out ("epochs", "batch_size", "learning_rate"):
    #: a backend may fill them with defaults for the model family (opacus does
    #: for datasets with declared bounds, `pandacead_opacus.defaults`).
    defaulted: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """`dataclasses.asdict`, with the model's tuples as lists; built field by field (asdict's
        generic recursion and deep copies cost more than the rest of parsing a job)."""
        d: dict[str, Any] = {}
        for name in _JOB_FIELDS:
            v = getattr(self, name)
            if v is None or type(v) in _SCALARS:
                d[name] = v
            elif name == "dp" and type(v) is DPParams:
                d[name] = {k: getattr(v, k) for k in _DP_FIELDS}
            elif name == "model" and type(v) is ModelSpec:
                d[name] = {"type": v.type, "hidden": list(v.hidden), "channels": list(v.channels), "kernel": v.kernel}
            elif type(v) is tuple and all(type(x) in _SCALARS for x in v):
                d[name] = tuple(v)
            else:  # anything else (the search's dict): what asdict makes of it
                d[name] = asdict(v) if is_dataclass(v) and not isinstance(v, type) else copy.deepcopy(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        """Rebuild a job from `to_dict()` output (trusted: our own serialisation)."""
        d = dict(d)
        d["dp"] = DPParams(**d.get("dp", {}))
        m = dict(d.get("model", {}))
        m["hidden"] = tuple(m.get("hidden", ()))
        m["channels"] = tuple(m.get("channels", ()))
        d["model"] = ModelSpec(**m)
        d["defaulted"] = tuple(d.get("defaulted", ()))
        return cls(**d)


_JOB_FIELDS = tuple(f.name for f in fields(Job))
_DP_FIELDS = tuple(f.name for f in fields(DPParams))
_SCALARS = (str, int, float, bool)
assert all(f.type in ("str", "int", "float", "bool", "str | None", "float | None") for f in fields(DPParams))


class _BadJSON(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _BadJSON(f"non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadJSON(f"number {text[:40]} is out of range (not finite)")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _BadJSON(f"duplicate key {key!r}")
        out[key] = value
    return out


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def _max_nesting(text: str) -> int:
    # Counted on the text before json.loads so a deeply nested file cannot
    # exhaust the parser's recursion; brackets inside strings only make this
    # conservative.
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(data: bytes) -> Any:
    """Decode a job file strictly: UTF-8, no NaN/Infinity, no duplicate keys, bounded nesting."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobRejected(
            "The job file is not valid UTF-8.", [f"byte {exc.start}: {exc.reason}"]
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if _max_nesting(text) > MAX_DEPTH:
        raise JobRejected(
            f"The job file nests deeper than {MAX_DEPTH} levels.", [f"nesting > {MAX_DEPTH}"]
        )
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicates,
        )
    except _BadJSON as exc:
        raise JobRejected(f"The job file is not acceptable JSON: {exc}.", [str(exc)]) from None
    except json.JSONDecodeError as exc:
        raise JobRejected(
            f"The job file is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
            [f"line {exc.lineno} column {exc.colno}: {exc.msg}"],
        ) from None
    except (ValueError, RecursionError) as exc:
        raise JobRejected(f"The job file is not valid JSON: {exc}.", [str(exc)]) from None


@lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema("job"))


@lru_cache(maxsize=1)
def _fast_validator() -> Any:
    """fastjsonschema's compiled check of the job schema (None when it is not installed).

    It only says "valid": a job it accepts skips jsonschema; anything else is
    explained by jsonschema, which stays the authority (tests/test_schema_fastpath.py
    checks that both accept the same jobs, on the hostile corpus and the fuzz strategies).
    No defaults are filled in and no formats checked, as jsonschema does.
    """
    try:
        import fastjsonschema
    except ImportError:
        return None
    return fastjsonschema.compile(load_schema("job"), use_default=False, use_formats=False)


def _fast_valid(raw: Any) -> bool:
    fast = _fast_validator()
    if fast is None:
        return False
    try:
        fast(raw)
    except Exception:  # JsonSchemaException, or anything odd: let jsonschema decide and explain
        return False
    return True


def _path(error: Any) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(job)"


MAX_VIOLATIONS = 50


def schema_violations(raw: Any) -> list[str]:
    """The schema violations of `raw` (at most MAX_VIOLATIONS), each starting with the field it concerns.

    Bounded: a 300 kB file with a 100 000-element list would otherwise cost
    seconds of validation and a multi-megabyte error report.
    """
    if _fast_valid(raw):
        return []
    out = []
    errors = list(itertools.islice(_validator().iter_errors(raw), MAX_VIOLATIONS + 1))
    more = len(errors) > MAX_VIOLATIONS
    for err in sorted(errors[:MAX_VIOLATIONS], key=lambda e: list(map(str, e.absolute_path))):
        message = err.message
        if len(message) > 200:
            message = message[:200] + "…"
        if err.validator == "additionalProperties":
            out.append(f"{_path(err)}: {message}")
        else:
            out.append(f"{_path(err)}: {message}")
    if more:
        out.append(f"(further problems not listed: only the first {MAX_VIOLATIONS} are reported)")
    return out


def job_id_hint(raw: Any) -> str | None:
    """The job's job_id if it is a well-formed one, for naming the error report."""
    if isinstance(raw, dict):
        jid = raw.get("job_id")
        if valid_job_id(jid):
            return str(jid)
    return None


def _search_violations(search: Any) -> list[str]:
    """What the schema cannot say about a `search` block."""
    if not isinstance(search, dict):
        return []
    out = []
    cand = search.get("candidates")
    if isinstance(cand, dict):
        dist = cand.get("distribution", "logarithmic")
        if dist == "negative_binomial" and "shape" not in cand:
            out.append("search.candidates.shape: a negative_binomial search needs its shape η")
        if dist != "negative_binomial" and "shape" in cand:
            out.append(f"search.candidates.shape: only a negative_binomial search has a shape, not {dist!r}")
    space = search.get("space")
    if isinstance(space, dict):
        for key in ("learning_rate", "clip"):
            r = space.get(key)
            if isinstance(r, dict) and isinstance(r.get("low"), (int, float)) and isinstance(r.get("high"), (int, float)):
                if not r["low"] < r["high"]:
                    out.append(f"search.space.{key}: low {r['low']} is not below high {r['high']}")
    return out


PRICE_MISSING = "dp.epsilon: 'dp.epsilon' is required (the most ε the job pays; no default is charged)"
PRICE_SCHEMA_MESSAGES = ("(job): 'dp' is a required property", "dp: 'epsilon' is a required property")


def validate(raw: Any, *, default_user: str | None = None) -> Job:
    """Turn parsed JSON into a `Job`, or raise JobRejected listing every violation."""
    if isinstance(raw, dict) and "user_id" not in raw and default_user is not None:
        raw = {**raw, "user_id": default_user}
    violations = schema_violations(raw)
    if isinstance(raw, dict):
        dp_in = raw.get("dp")
        if not isinstance(dp_in, dict) or "epsilon" not in dp_in:
            # The price is always explicit: no default ε is ever charged.
            violations = [v for v in violations if v not in PRICE_SCHEMA_MESSAGES]
            violations.insert(0, PRICE_MISSING)
        if "user_id" not in raw:
            violations.append("user_id: 'user_id' is a required property (whose budget pays)")
        dp = raw.get("dp")
        if isinstance(dp, dict) and dp.get("enabled") is False:
            violations.append("dp.enabled: differential privacy cannot be disabled")
        model = raw.get("model")
        if isinstance(model, dict) and model.get("type", "linear") == "linear" and model.get("hidden"):
            violations.append("model.hidden: a linear model has no hidden layers")
        if isinstance(model, dict) and model.get("type", "linear") != "cnn":
            for key in ("channels", "kernel"):
                if key in model:
                    violations.append(f"model.{key}: only a cnn has {key}")
        for key in ("job_id", "user_id", "dataset", "backend"):
            value = raw.get(key)
            if isinstance(value, str) and value.endswith("\n"):
                violations.append(f"{key}: {value!r} ends in a line break")
        violations.extend(_search_violations(raw.get("search")))
        jid = raw.get("job_id")
        if isinstance(jid, str) and valid_id(jid) and not valid_job_id(jid):
            violations.append(
                f"job_id: {jid!r} ends in {jid[jid.rfind('.'):]!r}, which is reserved for the outbox's"
                " signature and error files"
            )
    if violations:
        if not isinstance(raw, dict):
            summary = "The job must be a JSON object."
        elif len(violations) == 1:
            summary = f"The job is invalid: {violations[0]}."
        elif any(v.startswith("(further problems") for v in violations):
            summary = f"The job has more than {MAX_VIOLATIONS} problems, first: {violations[0]}."
        else:
            summary = f"The job has {len(violations)} problems, first: {violations[0]}."
        raise JobRejected(summary, violations)
    assert isinstance(raw, dict)
    dp_raw = raw.get("dp", {})
    model_raw = raw.get("model", {})
    dp = DPParams(
        enabled=True,
        epsilon=float(dp_raw["epsilon"]),
        delta=float(dp_raw.get("delta", 1e-5)),
        clip=float(dp_raw.get("clip", 1.0)),
        noise_multiplier=(
            float(dp_raw["noise_multiplier"]) if dp_raw.get("noise_multiplier") is not None else None
        ),
        accountant=dp_raw.get("accountant"),
    )
    defaulted = tuple(k for k in ("epochs", "batch_size", "learning_rate") if k not in raw)
    return Job(
        defaulted=defaulted,
        job_id=raw["job_id"],
        user_id=raw["user_id"],
        dataset=raw.get("dataset", "synthetic"),
        task=raw.get("task", "classification"),
        dp=dp,
        epochs=int(raw.get("epochs", 10)),
        batch_size=int(raw.get("batch_size", 32)),
        learning_rate=float(raw.get("learning_rate", 0.01)),
        seed=int(raw.get("seed", 42)),
        backend=raw.get("backend"),
        model=ModelSpec(
            type=model_raw.get("type", "linear"),
            hidden=tuple(int(h) for h in model_raw.get("hidden", ())),  # 1.0 is a JSON Schema integer
            channels=tuple(int(c) for c in model_raw.get("channels", ())),
            kernel=int(model_raw.get("kernel", 3)),
        ),
        quote=raw.get("quote"),
        search=raw.get("search"),
    )


def parse_job(data: bytes, *, default_user: str | None = None) -> Job:
    """Bytes of a job file to a `Job` (or JobRejected)."""
    job = validate(parse_json(data), default_user=default_user)
    _check_carried(job)
    return job


_JSON_INT_MAX = 2**53 - 1  # rfc8785's integer domain


def _plainly_carried(v: Any) -> bool:
    """True only for a value RFC 8785 surely carries: JSON types, integers within ±(2^53 − 1),
    finite floats, strings that encode to UTF-8, string keys. False sends it to rfc8785 itself, which
    decides (and explains)."""
    t = type(v)
    if v is None or t is bool:
        return True
    if t is str:
        return v.isascii() or _utf8(v)
    if t is int:
        return -_JSON_INT_MAX <= v <= _JSON_INT_MAX
    if t is float:
        return math.isfinite(v)
    if t is dict:
        return all(type(k) is str and (k.isascii() or _utf8(k)) and _plainly_carried(x) for k, x in v.items())
    if t is list or t is tuple:
        return all(_plainly_carried(x) for x in v)
    return False


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_carried(job: Job) -> None:
    """Refuse, before planning, a job the artifact's canonical JSON (RFC 8785) could not carry.

    The schema bounds integers to 2^53 − 1 (the largest an RFC 8785 / I-JSON
    number holds exactly); this catches whatever a future field lets through,
    instead of failing at hashing after the data was touched.
    """
    d = job.to_dict()
    if _plainly_carried(d):
        return
    import rfc8785

    try:
        rfc8785.dumps(d)
    except Exception as exc:
        raise JobRejected(
            f"The job holds a value its signed artifact could not carry ({exc}).",
            [f"canonical JSON: {exc}"],
        ) from None
