"""Two JSON serialisations of the publish path, byte for byte those of the reference, faster.

* `canonical(obj)`: `rfc8785.dumps(obj)` (RFC 8785 / JCS, the artifact's hash).
* `pretty(obj)`: `json.dumps(obj, indent=2)` (the artifact and envelope files).

rfc8785 is a recursive pure-Python writer, and `json.dumps` with an indent
drops to the pure-Python encoder; for an artifact they cost more than the
signature (docs/benchmarks.md, (a)). These walk the few JSON types an artifact
holds, leave strings to the C escaper of `json` and floats to rfc8785's own
number formatter, and on anything else (another type, a subclass, a number
out of range, a string that is not UTF-8) hand the whole value to the
reference, which then produces its output or its error. tests/test_fastjson.py
checks both against the references on generated values.
"""

from __future__ import annotations

import io
import json
import math
from json.encoder import encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import rfc8785

try:  # rfc8785's ECMAScript number formatting (RFC 8785 3.2.2.3), used as is
    from rfc8785._impl import _serialize_float
except ImportError:  # pragma: no cover - another rfc8785 layout: the reference for everything
    _serialize_float = None  # type: ignore[assignment]

_INT_MAX = 2**53 - 1  # rfc8785's integer domain


class _Doubt(Exception):
    """A value the fast path does not vouch for: the reference decides."""


def canonical(obj: Any) -> bytes:
    """`rfc8785.dumps(obj)`."""
    if _serialize_float is not None:
        parts: list[str] = []
        try:
            _canon(obj, parts)
            return "".join(parts).encode("utf-8")
        except (_Doubt, UnicodeEncodeError, RecursionError):
            pass
    return rfc8785.dumps(obj)


def _float(f: float) -> str:
    if not math.isfinite(f):
        raise _Doubt
    sink = io.BytesIO()
    _serialize_float(f, sink)  # type: ignore[misc]
    return sink.getvalue().decode("ascii")


def _canon(o: Any, out: list[str]) -> None:
    t = type(o)
    if t is str:
        out.append(encode_basestring(o))
    elif o is None:
        out.append("null")
    elif t is bool:
        out.append("true" if o else "false")
    elif t is int:
        if not -_INT_MAX <= o <= _INT_MAX:
            raise _Doubt
        out.append(str(o))
    elif t is float:
        out.append(_float(o))
    elif t is dict:
        if not o:
            out.append("{}")
            return
        keys = list(o)
        if any(type(k) is not str for k in keys):
            raise _Doubt
        # RFC 8785 3.2.3 orders keys by their UTF-16 code units; for keys below U+10000 that is
        # code point order, which is str's order.
        if all(k.isascii() for k in keys):
            keys.sort()
        else:
            keys.sort(key=lambda k: k.encode("utf-16be"))
        sep = "{"
        for k in keys:
            out.append(sep)
            out.append(encode_basestring(k))
            out.append(":")
            _canon(o[k], out)
            sep = ","
        out.append("}")
    elif t is list or t is tuple:
        if not o:
            out.append("[]")
            return
        sep = "["
        for v in o:
            out.append(sep)
            _canon(v, out)
            sep = ","
        out.append("]")
    else:
        raise _Doubt


def pretty(obj: Any) -> str:
    """`json.dumps(obj, indent=2)`."""
    parts: list[str] = []
    try:
        _pretty(obj, parts, "\n")
    except (_Doubt, RecursionError):
        return json.dumps(obj, indent=2)
    return "".join(parts)


def _leaf(o: Any) -> str:
    t = type(o)
    if t is str:
        return encode_basestring_ascii(o)  # type: ignore[no-any-return]
    if o is None:
        return "null"
    if t is bool:
        return "true" if o else "false"
    if t is int:
        return int.__repr__(o)
    if t is float:
        if not math.isfinite(o):
            raise _Doubt
        return float.__repr__(o)
    raise _Doubt


def _pretty(o: Any, out: list[str], nl: str) -> None:
    t = type(o)
    if t is dict:
        if not o:
            out.append("{}")
            return
        inner = nl + "  "
        sep = "{" + inner
        for k, v in o.items():
            if type(k) is not str:
                raise _Doubt
            out.append(sep)
            out.append(encode_basestring_ascii(k))
            out.append(": ")
            _pretty(v, out, inner)
            sep = "," + inner
        out.append(nl + "}")
    elif t is list or t is tuple:
        if not o:
            out.append("[]")
            return
        inner = nl + "  "
        sep = "[" + inner
        for v in o:
            out.append(sep)
            _pretty(v, out, inner)
            sep = "," + inner
        out.append(nl + "]")
    else:
        out.append(_leaf(o))
