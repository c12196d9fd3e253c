"""Private preprocessing: features bounded and scaled from public declarations only.

Standardising features with the data's own minimum, maximum, mean or
variance would publish those statistics (through the model) without paying
for them. Here every number the transform uses is **declared by the earner
as public metadata** in ``[datasets.NAME]`` and used verbatim:

``bounds = { "mean radius" = [6.0, 30.0], … }`` (per column) or ``bounds = [0, 16]``
    (one pair for every numeric feature; the form for npz images and signals).
    A value is clipped to ``[low, high]`` and mapped linearly to ``[-1, 1]``.
``categories = { colour = ["red", "green", "blue"] }``
    String columns, one-hot encoded in the declared order; a value not
    declared encodes as all zeros (never as a new category learnt from the data).
``classes = ["benign", "malignant"]``
    The label's classes in the model's order; a label outside them is a
    registration error the earner sees, never a buyer.
``extractor = { path = "digits8.safetensors", sha256 = "…" }`` (optional)
    A public, hash-pinned feature extractor applied after scaling
    (`pandacead.extractors`); training sees only its output.

A dataset that declares none of these is *unbounded*: it still trains as
before, and the plan and quote say so (`unbounded_notice`). A dataset that
declares some but not all (a numeric column without bounds, a string column
without categories, a classification label without classes) is refused at
registration, naming the columns and the keys to add.

The transform is a JSON object (format ``pandacead.preprocessing.v1``) that
travels with the dataset description and with the released model
(safetensors metadata ``pandacead.preprocessing``), so a buyer predicts from
raw feature values: `transform(pre, rows)`.

Only numpy is imported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "PreprocessingError",
    "declared",
    "from_spec",
    "input_dim",
    "output_dim",
    "transform",
    "encode_column",
    "unbounded_notice",
]

FORMAT = "pandacead.preprocessing.v1"
#: The dataset keys this module reads (for config-key validation).
SPEC_KEYS = ("bounds", "categories", "classes", "extractor", "input_shape")
MAX_CATEGORIES = 1000


class PreprocessingError(ValueError):
    """A dataset's preprocessing declaration is missing or malformed (one sentence)."""


def declared(spec: dict[str, Any]) -> bool:
    """True when the spec opts into declared preprocessing (any of bounds/categories/classes/extractor)."""
    return any(k in spec for k in ("bounds", "categories", "classes", "extractor"))


def _pair(name: str, where: str, v: Any) -> tuple[float, float]:
    ok = (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    )
    if not ok or float(v[0]) > float(v[1]):
        raise PreprocessingError(
            f"Dataset {name!r}: bounds for {where} must be [low, high] with finite low <= high, not {v!r}."
        )
    return float(v[0]), float(v[1])


def _categories(name: str, col: str, v: Any) -> list[str]:
    if not (isinstance(v, list) and v and all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in v)):
        raise PreprocessingError(
            f"Dataset {name!r}: categories for column {col!r} must be a non-empty list of values."
        )
    cats = [str(c).strip() for c in v]
    if len({value_key(c) for c in cats}) != len(cats) or len(cats) > MAX_CATEGORIES:
        raise PreprocessingError(
            f"Dataset {name!r}: categories for column {col!r} repeat a value or exceed {MAX_CATEGORIES}."
        )
    return cats


def from_spec(
    name: str,
    spec: dict[str, Any],
    columns: Sequence[str] | None,
    n_features: int,
    *,
    string_columns: Sequence[str] = (),
    input_shape: Sequence[int] | None = None,
) -> dict[str, Any] | None:
    """The public transform declared in `spec`, or None for an unbounded (undeclared) dataset.

    `columns` are the feature column names (None for npz); `string_columns`
    those whose values are not all numbers — only which columns, never values.
    Raises PreprocessingError naming every column that lacks a declaration.
    """
    if not declared(spec):
        if string_columns:
            raise PreprocessingError(
                f"Dataset {name!r}: column {string_columns[0]!r} holds text; declare its values as "
                f"categories = {{ {string_columns[0]!r} = [\"a\", \"b\", …] }} (public) and bounds for the "
                "numeric columns."
            )
        return None
    names = list(columns) if columns is not None else [f"x{j}" for j in range(n_features)]
    bounds = spec.get("bounds")
    cats_spec = spec.get("categories") or {}
    if not isinstance(cats_spec, dict):
        raise PreprocessingError(f"Dataset {name!r}: categories must be a table {{ column = [values] }}.")
    unknown = [c for c in cats_spec if c not in names]
    if unknown:
        raise PreprocessingError(f"Dataset {name!r}: categories name column {unknown[0]!r}, which is not a feature.")
    if isinstance(bounds, dict):
        unknown = [c for c in bounds if c not in names]
        if unknown:
            raise PreprocessingError(f"Dataset {name!r}: bounds name column {unknown[0]!r}, which is not a feature.")
    cols: list[dict[str, Any]] = []
    missing: list[str] = []
    for col in names:
        if col in cats_spec:
            cols.append({"name": col, "kind": "categorical", "categories": _categories(name, col, cats_spec[col])})
            continue
        if col in string_columns:
            raise PreprocessingError(
                f"Dataset {name!r}: column {col!r} holds text; declare categories = {{ {col!r} = [...] }}."
            )
        if isinstance(bounds, dict):
            if col not in bounds:
                missing.append(col)
                continue
            low, high = _pair(name, f"column {col!r}", bounds[col])
        elif bounds is not None:
            low, high = _pair(name, "every feature", bounds)
        else:
            missing.append(col)
            continue
        cols.append({"name": col, "kind": "numeric", "low": low, "high": high})
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PreprocessingError(
            f"Dataset {name!r}: no declared bounds for {shown}; add bounds = {{ {missing[0]!r} = [low, high], … }} "
            "or one pair bounds = [low, high] for all columns to [datasets."
            f"{name}] (public values, e.g. a documented measurement range, never the data's own min/max)."
        )
    pre: dict[str, Any] = {"format": FORMAT, "columns": cols, "scale": [-1.0, 1.0]}
    if input_shape is not None:
        pre["input_shape"] = [int(d) for d in input_shape]
    return pre


def input_dim(pre: dict[str, Any]) -> int:
    return len(pre["columns"])


def output_dim(pre: dict[str, Any]) -> int:
    """Width of the transformed rows (before any extractor)."""
    return sum(len(c["categories"]) if c["kind"] == "categorical" else 1 for c in pre["columns"])


def value_key(v: Any) -> str:
    """How a declared category/class and a value in the data are compared: text, numbers by value.

    ``"1"``, ``1``, ``1.0`` and ``" 1 "`` are one key; ``"red"`` is ``"red"``.
    """
    text = v.strip() if isinstance(v, str) else v
    try:
        f = float(text)
    except (TypeError, ValueError):
        return str(text)
    if math.isfinite(f) and f.is_integer():
        return str(int(f))
    return repr(f)


def encode_column(col: dict[str, Any], values: Any) -> np.ndarray:
    """Category codes (index in the declared list, -1 when undeclared) for one categorical column."""
    index = {value_key(c): i for i, c in enumerate(col["categories"])}
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        out[i] = index.get(value_key(v), -1)
    return out


def _codes(pre: dict[str, Any], rows: Any) -> np.ndarray:
    """Raw rows (numbers, or strings in categorical columns) -> float64 matrix with category codes."""
    cols = pre["columns"]
    arr = np.asarray(rows, dtype=object) if not isinstance(rows, np.ndarray) else rows
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[1] != len(cols):
        raise PreprocessingError(f"rows have {arr.shape[1]} values, the model expects {len(cols)} raw features")
    if not any(c["kind"] == "categorical" for c in cols):
        return np.asarray(arr, dtype=np.float64)
    out = np.empty(arr.shape, dtype=np.float64)
    for j, c in enumerate(cols):
        if c["kind"] == "categorical":
            out[:, j] = encode_column(c, arr[:, j])
        else:
            out[:, j] = np.asarray(arr[:, j], dtype=np.float64)
    return out


def transform(pre: dict[str, Any] | None, rows: Any, *, codes: bool = False) -> np.ndarray:
    """Rows of raw feature values -> the model's input (float32), by the declared transform only.

    `codes=True`: categorical columns already hold category codes (pandacead's
    dataset loader); otherwise they hold the raw values (strings or numbers).
    Numeric values are clipped to their declared bounds and scaled to [-1, 1];
    a non-finite numeric value is refused.
    """
    if pre is None:
        x = np.asarray(rows, dtype=np.float32)
        return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
    X = np.asarray(rows, dtype=np.float64) if codes else _codes(pre, rows)
    X = X.reshape(X.shape[0], -1)
    cols = pre["columns"]
    numeric = [j for j, c in enumerate(cols) if c["kind"] == "numeric"]
    if numeric and not np.all(np.isfinite(X[:, numeric])):
        raise PreprocessingError("feature values must be finite numbers")
    if all(c["kind"] == "numeric" for c in cols):
        low = np.array([c["low"] for c in cols])
        high = np.array([c["high"] for c in cols])
        span = np.where(high > low, high - low, 1.0)
        Z = np.where(high > low, 2.0 * (np.clip(X, low, high) - low) / span - 1.0, 0.0)
        return Z.astype(np.float32)
    parts: list[np.ndarray] = []
    for j, c in enumerate(cols):
        v = X[:, j]
        if c["kind"] == "numeric":
            lo, hi = c["low"], c["high"]
            z = 2.0 * (np.clip(v, lo, hi) - lo) / (hi - lo) - 1.0 if hi > lo else np.zeros_like(v)
            parts.append(z.reshape(-1, 1))
        else:
            k = len(c["categories"])
            onehot = np.zeros((len(v), k))
            ok = (v >= 0) & (v < k)
            onehot[np.nonzero(ok)[0], v[ok].astype(np.int64)] = 1.0
            parts.append(onehot)
    return np.concatenate(parts, axis=1).astype(np.float32)


def undeclared_classes_notice(name: str) -> str:
    return (
        f"Dataset {name!r} declares no classes: the model's classes are the distinct labels found "
        f"in the data; the earner can declare them (classes = [...] in [datasets.{name}])."
    )


def unbounded_notice(name: str, columns: Sequence[str] | None) -> str:
    """The plan's/quote's sentence for a dataset without declared bounds."""
    example = f"{columns[0]!r} = [low, high], …" if columns else "…"
    return (
        f"Dataset {name!r} declares no feature bounds: features are used unscaled, so DP-SGD's "
        "clipping may leave the model near chance; the earner can declare public bounds "
        f"(bounds = {{ {example} }} or bounds = [low, high] in [datasets.{name}]) and classes = [...]."
    )
