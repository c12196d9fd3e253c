"""Datasets an earner offers: descriptions (public metadata) and loading.

Two calls, deliberately separate:

* `describe(name, spec, base_dir)` reads a registered dataset once and returns
  a `DatasetInfo` — row/feature/class counts and a content digest. Trainers plan
  a job's privacy cost from this description alone, before any data is loaded
  for training.
* `keyed(info, key)` adds what needs the host secret: the dataset's public
  identity `commitment` = HMAC-SHA256(host key, name, digest) — an opaque
  version id; the plain digest is an exact oracle for guessed rows and never
  leaves the host — and the held-out split's seed, HMAC(host key, name),
  which does not depend on the data (a split seeded by the data would move
  when one row changes, and a buyer could rebuild it per hypothesis).
* `load(info, base_dir)` returns the arrays, split into a training part and a
  held-out part by that secret seed, so every job on the same data sees the
  same held-out rows. The digest is checked again: data that changed since it
  was described fails the job.

Privacy declarations (keys of ``[datasets.<name>]``, docs/privacy.md):
``public = true`` declares the data public (non-private trainers may use it,
its true row count and exact held-out metrics may be released); the
synthetic generator is always public. ``rows = <int>`` is the earner's
*public* row count of a private dataset: DP-SGD's sample rate, steps, noise
and normalisation are computed from it, never from the true count, which is
private under add/remove neighbours. A private dataset without ``rows`` can
only be used by trainers that need no count.

Kinds of dataset (a spec is one ``[datasets.<name>]`` table of the config):

* ``synthetic`` (built in): ``{"kind": "synthetic", "rows": 1000,
  "features": 10, "seed": 0}`` — standard-normal features, label
  ``x0 + x1 > 0`` (the seed project's task). Its digest is the SHA-256 of the
  canonical generator spec.
* ``csv`` / ``parquet``: ``{"kind", "path", "label": <column>, "task":
  "classification"|"regression"}`` and optionally ``"features": [columns]``
  (default: every other column) and ``"holdout_fraction"`` (default 0.2 for
  public data, 0 for private data, whose held-out metrics are never released).
  CSV needs a header row. Its digest is ``sha256:<hex>`` of the file bytes.
* ``npz``: as above, but ``"features"`` and ``"label"`` name arrays (default
  ``"X"`` and ``"y"``). Loaded with ``allow_pickle=False``.

Public declarations (`pandacead.preprocessing`, docs/preprocessing.md):
``bounds``, ``categories``, ``classes``, ``extractor`` and, for npz,
``input_shape``. With them, `load` returns rows clipped and scaled by the
declared bounds (one-hot for declared categories, then the extractor's
features), and ``info.n_features`` is the width of those rows; npz arrays may
be images ``[n, h, w]`` / ``[n, c, h, w]`` (rows flattened, the shape in
``info.source["input_shape"]``).

Features must be numeric and finite. Classification labels may be numbers or
strings; they are remapped to ``0..k-1`` in sorted order (the original labels
are kept in ``info.source["classes"]``). Regression labels must be numeric.

Only numpy is imported here; pyarrow is imported lazily, for parquet only.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pandacead import preprocessing
from pandacead.errors import JobFailed, JobRejected
from pandacead.trainers import DatasetInfo

__all__ = [
    "DatasetError",
    "DEFAULT_HOLDOUT_FRACTION",
    "PRIVATE_HOLDOUT_FRACTION",
    "MAX_CLASSES",
    "builtin_specs",
    "describe",
    "keyed",
    "load",
    "split_indices",
    "split_seed",
    "synthetic_arrays",
]

DEFAULT_HOLDOUT_FRACTION = 0.2
#: Private data trains on every row by default: its held-out metrics are withheld anyway.
PRIVATE_HOLDOUT_FRACTION = 0.0
#: More distinct labels than this in a classification dataset is a registration mistake.
MAX_CLASSES = 1000
SYNTHETIC_GENERATOR = "pandacead.synthetic.v1"
_SYNTHETIC_MAX_ROWS = 10_000_000
_SYNTHETIC_MAX_CELLS = 200_000_000
_FILE_KINDS = ("csv", "npz", "parquet")
_TASKS = ("classification", "regression")

# (kind, resolved path, size, mtime_ns, spec) -> DatasetInfo
_DESCRIBE_CACHE: dict[tuple[Any, ...], DatasetInfo] = {}


class DatasetError(JobRejected, ValueError):
    """A dataset is misregistered or unreadable (a ValueError and a JobRejected)."""


# --------------------------------------------------------------------------- specs


def builtin_specs() -> dict[str, dict[str, Any]]:
    """The datasets every host offers, with their default specs."""
    return {
        "synthetic": {
            "kind": "synthetic",
            "rows": 1000,
            "features": 10,
            "seed": 0,
            "task": "classification",
            "holdout_fraction": DEFAULT_HOLDOUT_FRACTION,
        }
    }


def _err(name: str, sentence: str, *details: str) -> DatasetError:
    return DatasetError(f"Dataset {name!r}: {sentence}", list(details) or [sentence])


def _holdout(name: str, spec: dict[str, Any], public: bool = True) -> float:
    """The held-out fraction: declared, else 0.2 for public data and 0 for private data.

    A private dataset's held-out metrics are never released (docs/privacy.md), so
    holding rows out of its training would only cost accuracy: by default it
    trains on every row. `holdout_fraction = 0` is allowed for public data too.
    """
    default = DEFAULT_HOLDOUT_FRACTION if public else PRIVATE_HOLDOUT_FRACTION
    f = spec.get("holdout_fraction", default)
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0 <= float(f) < 1):
        raise _err(name, f"holdout_fraction must be a number from 0 (no held-out rows) up to but not including 1, not {f!r}.")
    return float(f)


def _check_split(name: str, n_rows: int, fraction: float) -> None:
    n_test = int(round(n_rows * fraction))
    if (fraction > 0 and n_test < 1) or n_rows - n_test < 1:
        raise _err(
            name,
            f"{n_rows} rows cannot be split into training and held-out rows "
            f"with holdout_fraction {fraction}.",
        )


def _int_field(name: str, spec: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = spec.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not (lo <= v <= hi):
        raise _err(name, f"{key} must be an integer in [{lo}, {hi}], not {v!r}.")
    return int(v)


def _public(name: str, spec: dict[str, Any], default: bool) -> bool:
    v = spec.get("public", default)
    if not isinstance(v, bool):
        raise _err(name, f"public must be true or false, not {v!r}.")
    return v


def _declared_rows(name: str, spec: dict[str, Any]) -> int | None:
    v = spec.get("rows")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not (2 <= v <= 10**12):
        raise _err(name, f"rows (the public row count) must be an integer of at least 2, not {v!r}.")
    return int(v)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------- synthetic


def _synthetic_source(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    rows = _int_field(name, spec, "rows", 1000, 10, _SYNTHETIC_MAX_ROWS)
    features = _int_field(name, spec, "features", 10, 2, 10_000)
    seed = _int_field(name, spec, "seed", 0, 0, 2**63 - 1)
    if rows * features > _SYNTHETIC_MAX_CELLS:
        raise _err(name, f"rows × features must be at most {_SYNTHETIC_MAX_CELLS}.")
    task = spec.get("task", "classification")
    if task != "classification":
        raise _err(name, f"the synthetic dataset is a classification task, not {task!r}.")
    return {
        "kind": "synthetic",
        "generator": SYNTHETIC_GENERATOR,
        "rows": rows,
        "features": features,
        "seed": seed,
    }


def _synthetic_digest(source: dict[str, Any]) -> str:
    canon = {k: source[k] for k in ("generator", "rows", "features", "seed")}
    return "sha256:" + hashlib.sha256(_canonical(canon)).hexdigest()


def synthetic_arrays(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic task: X ~ N(0, 1)^features (float32), y = 1[x0 + x1 > 0] (int64)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features)).astype(np.float32)
    y = (X[:, 0].astype(np.float64) + X[:, 1].astype(np.float64) > 0).astype(np.int64)
    return X, y


# --------------------------------------------------------------------------- file readers


def _resolve(name: str, spec: dict[str, Any], base_dir: Path | str) -> Path:
    raw = spec.get("path")
    if not isinstance(raw, str) or not raw:
        raise _err(name, "a file dataset needs a 'path'.")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    return path


def _read_bytes(name: str, path: Path) -> tuple[bytes, os.stat_result]:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except FileNotFoundError:
        raise _err(name, f"file {str(path)!r} does not exist.") from None
    except IsADirectoryError:
        raise _err(name, f"{str(path)!r} is a directory, not a data file.") from None
    except OSError as exc:
        raise _err(name, f"file {str(path)!r} cannot be read: {exc.strerror or exc}.") from None
    return data, st


def _file_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _to_float_column(name: str, column: str, values: np.ndarray, *, row_offset: int) -> np.ndarray:
    """Strings/objects -> float64; error names the column and first bad row."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        pass  # find the first offending cell for the message
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        text = v.strip() if isinstance(v, str) else v
        if text == "" or text is None:
            raise _err(name, f"column {column!r} has a missing value at row {i + row_offset}.")
        try:
            out[i] = float(text)
        except (TypeError, ValueError):
            raise _err(
                name,
                f"column {column!r} is not numeric (row {i + row_offset}: {str(v)[:40]!r}).",
            ) from None
    return out


def _parse_csv(name: str, data: bytes, spec: dict[str, Any]) -> tuple[list[str], dict[str, np.ndarray]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _err(name, f"the CSV file is not UTF-8 (byte {exc.start}).") from None
    rows = list(csv.reader(io.StringIO(text, newline="")))
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if not rows:
        raise _err(name, "the CSV file is empty.")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise _err(name, "the CSV header repeats a column name.")
    body = rows[1:]
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise _err(
                name,
                f"CSV row {i + 2} has {len(row)} fields, the header has {len(header)}.",
            )
    table = np.array(body, dtype=object).reshape(len(body), len(header))
    return header, {h: table[:, j] for j, h in enumerate(header)}


def _parse_parquet(name: str, data: bytes) -> tuple[list[str], dict[str, np.ndarray]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise _err(name, "reading Parquet needs pyarrow, which is not installed.") from None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:
        raise _err(name, f"the Parquet file cannot be read: {exc}.") from None
    cols: dict[str, np.ndarray] = {}
    for col_name in table.column_names:
        col = table.column(col_name)
        t = col.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            if col.null_count:
                raise _err(name, f"column {col_name!r} has {col.null_count} missing values.")
            cols[col_name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        else:
            cols[col_name] = np.asarray(col.to_pylist(), dtype=object)
    return list(table.column_names), cols


def _parse_npz(name: str, data: bytes, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    xkey = spec.get("features", "X")
    ykey = spec.get("label", "y")
    if not isinstance(xkey, str) or not isinstance(ykey, str):
        raise _err(name, "for npz, 'features' and 'label' name arrays in the file (default X, y).")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = list(npz.files)
            missing = [k for k in (xkey, ykey) if k not in names]
            if missing:
                raise _err(
                    name,
                    f"the npz file has no array {missing[0]!r} (arrays: {', '.join(names) or 'none'}).",
                )
            X = npz[xkey]
            y = npz[ykey]
    except DatasetError:
        raise
    except ValueError as exc:
        # allow_pickle=False refuses object arrays: never unpickle outside data.
        raise _err(name, f"the npz file cannot be read without pickle: {exc}.") from None
    except Exception as exc:
        raise _err(name, f"the npz file cannot be read: {exc}.") from None
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.ndim not in (2, 3, 4):
        raise _err(
            name,
            f"array {xkey!r} must be rows × features, [n, h, w] or [n, c, h, w], not {X.shape}.",
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise _err(name, f"array {ykey!r} must be 1-dimensional, not {y.shape}.")
    if len(X) != len(y):
        raise _err(name, f"array {xkey!r} has {len(X)} rows but {ykey!r} has {len(y)}.")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise _err(name, f"array {xkey!r} is not numeric (dtype {X.dtype}).")
    return X.astype(np.float64), y


def _row_shape(name: str, X: np.ndarray, spec: dict[str, Any]) -> list[int] | None:
    """The per-row shape a CNN sees: declared ``input_shape``, else [1, h, w] / [c, h, w] from the array."""
    declared = spec.get("input_shape")
    if declared is not None:
        ok = isinstance(declared, list) and len(declared) in (2, 3) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in declared
        )
        if not ok or int(np.prod(declared)) != int(np.prod(X.shape[1:])):
            raise _err(
                name,
                f"input_shape must be [c, length] or [c, h, w] with {int(np.prod(X.shape[1:]))} values "
                f"per row, not {declared!r}.",
            )
        return [int(d) for d in declared]
    if X.ndim == 3:
        return [1, int(X.shape[1]), int(X.shape[2])]
    if X.ndim == 4:
        return [int(d) for d in X.shape[1:]]
    return None


def _string_columns(cols: dict[str, np.ndarray], features: list[str]) -> list[str]:
    out = []
    for f in features:
        col = cols[f]
        if col.dtype != object:
            continue
        for v in col:
            try:
                float(v)
            except (TypeError, ValueError):
                if not (isinstance(v, str) and v.strip() == ""):
                    out.append(f)
                    break
    return out


def _table_arrays(
    name: str, header: list[str], cols: dict[str, np.ndarray], spec: dict[str, Any], *, csv_rows: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    label = spec.get("label")
    if not isinstance(label, str) or not label:
        raise _err(name, "a csv/parquet dataset needs 'label', the name of its label column.")
    if label not in cols:
        raise _err(
            name,
            f"label column {label!r} is not in the file (columns: {', '.join(header)[:300]}).",
        )
    features = spec.get("features")
    if features is None:
        features = [h for h in header if h != label]
    elif not (isinstance(features, list) and all(isinstance(f, str) for f in features)):
        raise _err(name, "'features' must be a list of column names.")
    if not features:
        raise _err(name, "there are no feature columns besides the label.")
    unknown = [f for f in features if f not in cols]
    if unknown:
        raise _err(name, f"feature column {unknown[0]!r} is not in the file.")
    if label in features:
        raise _err(name, f"the label column {label!r} cannot also be a feature.")
    n = len(cols[label])
    X = np.empty((n, len(features)), dtype=np.float64)
    offset = 2 if csv_rows else 0  # CSV rows are numbered as in the file (header = row 1)
    declared = spec.get("categories")
    categories: dict[str, Any] = declared if isinstance(declared, dict) else {}
    for j, f in enumerate(features):
        col = cols[f]
        if f in categories:  # declared values -> codes (-1: undeclared); preprocessing one-hots them
            X[:, j] = preprocessing.encode_column(
                {"categories": list(categories[f])}, list(col)
            )
            continue
        if col.dtype == object:
            col = _to_float_column(name, f, col, row_offset=offset)
        X[:, j] = col
    return X, cols[label], list(features)


def _check_features(name: str, X: np.ndarray, columns: list[str] | None, row_offset: int) -> None:
    if X.shape[0] == 0:
        raise _err(name, "the file has no data rows.")
    if X.shape[1] == 0:
        raise _err(name, "the file has no feature columns.")
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        what = "NaN" if np.isnan(X[r, c]) else "an infinite value"
        col = repr(columns[c]) if columns else f"{c}"
        raise _err(
            name, f"feature {col} has {what} at row {r + row_offset} (features must be finite numbers)."
        )


def _declared_labels(
    name: str, y: np.ndarray, declared: list[Any], row_offset: int
) -> tuple[np.ndarray, list[Any]]:
    """Codes in the declared order; a label outside it is the earner's registration error."""
    if not isinstance(declared, list) or len(declared) < 2 or len(declared) > MAX_CLASSES:
        raise _err(name, f"classes must be a list of 2 to {MAX_CLASSES} label values, not {declared!r}.")
    keys = [preprocessing.value_key(c) for c in declared]
    if len(set(keys)) != len(keys):
        raise _err(name, "classes repeats a value.")
    index = {k: i for i, k in enumerate(keys)}
    codes = np.empty(len(y), dtype=np.int64)
    for i, v in enumerate(y):
        code = index.get(preprocessing.value_key(v.item() if hasattr(v, "item") else v))
        if code is None:
            raise _err(
                name,
                f"the label at row {i + row_offset} is not one of the declared classes "
                f"(classes = {keys[:10]}).",
            )
        codes[i] = code
    return codes, list(declared)


def _labels(
    name: str, y: np.ndarray, task: str, row_offset: int = 0, declared: list[Any] | None = None
) -> tuple[np.ndarray, list[Any] | None]:
    """Classification: (codes 0..k-1 int64, classes). Regression: (float64, None).

    With `declared` classes (public), codes follow that order and the data's
    own set of labels is never published.
    """
    if task == "classification" and declared is not None:
        return _declared_labels(name, y, declared, row_offset)
    if task == "regression":
        if y.dtype == object:
            y = _to_float_column(name, "label", y, row_offset=row_offset)
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
            raise _err(name, f"a regression label must be numeric, not {y.dtype}.")
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            r = int(np.argwhere(~np.isfinite(y))[0][0])
            raise _err(name, f"the label has NaN or an infinite value at row {r + row_offset}.")
        return y, None
    if y.dtype == object:
        # CSV/parquet text labels: numbers if every value is one, else strings.
        texts = [v.strip() if isinstance(v, str) else v for v in y]
        if any(v is None or v == "" for v in texts):
            raise _err(name, "the label column has missing values.")
        try:
            nums = np.array([float(v) for v in texts], dtype=np.float64)
        except (TypeError, ValueError):
            y = np.array([str(v) for v in texts], dtype=object)
        else:
            y = nums
    if y.dtype != object:
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
            raise _err(name, f"the label has an unsupported type {y.dtype}.")
        yf = y.astype(np.float64)
        if not np.all(np.isfinite(yf)):
            r = int(np.argwhere(~np.isfinite(yf))[0][0])
            raise _err(name, f"the label has NaN or an infinite value at row {r + row_offset}.")
        if np.all(yf == np.round(yf)):
            y = yf.astype(np.int64)
        else:
            raise _err(
                name,
                "a classification label must be integers or strings, not fractional numbers "
                "(is the task regression?).",
            )
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise _err(name, f"a classification label needs at least 2 classes, found {len(classes)}.")
    if len(classes) > MAX_CLASSES:
        raise _err(name, f"the label has {len(classes)} classes, more than {MAX_CLASSES}.")
    return codes.astype(np.int64).reshape(-1), [c.item() if hasattr(c, "item") else c for c in classes]


def _parse_file(
    name: str,
    kind: str,
    data: bytes,
    spec: dict[str, Any],
    task: str,
    extras: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Any] | None, list[str] | None]:
    """(X float64 rows × raw features, y, classes, columns); `extras` gets input_shape."""
    columns: list[str] | None
    extras = {} if extras is None else extras
    if kind == "npz":
        X, y_raw = _parse_npz(name, data, spec)
        extras["input_shape"] = _row_shape(name, X, spec)
        X = X.reshape(len(X), -1)
        columns = None
    elif kind == "csv":
        header, cols = _parse_csv(name, data, spec)
        _refuse_text(name, spec, header, cols)
        X, y_raw, columns = _table_arrays(name, header, cols, spec, csv_rows=True)
    else:
        header, cols = _parse_parquet(name, data)
        _refuse_text(name, spec, header, cols)
        X, y_raw, columns = _table_arrays(name, header, cols, spec, csv_rows=False)
    _check_features(name, X, columns, 2 if kind == "csv" else 0)
    y, classes = _labels(name, y_raw, task, 2 if kind == "csv" else 0, spec.get("classes"))
    return X, y, classes, columns


def _refuse_text(name: str, spec: dict[str, Any], header: list[str], cols: dict[str, np.ndarray]) -> None:
    # A text column without declared categories: the earner's registration error, naming it.
    label = spec.get("label")
    feats = spec.get("features") or [h for h in header if h != label]
    declared = spec.get("categories")
    cats: dict[str, Any] = declared if isinstance(declared, dict) else {}
    undeclared = [f for f in feats if isinstance(f, str) and f in cols and f not in cats]
    text = _string_columns(cols, undeclared) if preprocessing.declared(spec) else []
    if text:
        raise _err(
            name,
            f"column {text[0]!r} holds text; declare its values (public) as categories = "
            f"{{ {text[0]!r} = [\"a\", \"b\", …] }} in [datasets.{name}], or leave it out of 'features'.",
        )


def _file_task(name: str, spec: dict[str, Any]) -> str:
    task = spec.get("task")
    if task not in _TASKS:
        raise _err(name, f"'task' must be 'classification' or 'regression', not {task!r}.")
    return str(task)


# --------------------------------------------------------------------------- describe / load


def describe(name: str, spec: dict[str, Any], base_dir: Path | str) -> DatasetInfo:
    """Public metadata of a registered dataset: counts and content digest, no training.

    Raises DatasetError (a ValueError and a JobRejected) naming the problem.
    """
    if not isinstance(spec, dict):
        raise _err(name, "its spec must be a table of settings.")
    kind = spec.get("kind")
    if kind == "synthetic":
        source: dict[str, Any] = _synthetic_source(name, spec)
        fraction = _holdout(name, spec)
        _check_split(name, source["rows"], fraction)
        return DatasetInfo(
            name=name,
            task="classification",
            n_rows=source["rows"],
            n_features=source["features"],
            n_classes=2,
            digest=_synthetic_digest(source),
            source={**source, "classes": [0, 1]},
            holdout_fraction=fraction,
            public=True,  # generated from a public spec: nothing in it is private
            declared_rows=source["rows"],
        )
    if kind not in _FILE_KINDS:
        raise _err(name, f"unknown kind {kind!r} (expected synthetic, csv, npz or parquet).")
    task = _file_task(name, spec)
    fraction = _holdout(name, spec, _public(name, spec, False))
    path = _resolve(name, spec, base_dir)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _err(name, f"file {str(path)!r} does not exist.") from None
    except OSError as exc:
        raise _err(name, f"file {str(path)!r} cannot be read: {exc.strerror or exc}.") from None
    key = (name, kind, str(path.resolve()), st.st_size, st.st_mtime_ns, _canonical(spec))
    cached = _DESCRIBE_CACHE.get(key)
    if cached is not None:
        return cached
    data, fst = _read_bytes(name, path)
    extras: dict[str, Any] = {}
    X, y, classes, columns = _parse_file(name, kind, data, spec, task, extras)
    n_rows, n_features = X.shape
    _check_split(name, n_rows, fraction)
    # The transform comes from the spec alone (public declarations, used verbatim).
    try:
        pre = preprocessing.from_spec(
            name, spec, columns, int(n_features), input_shape=extras.get("input_shape")
        )
    except preprocessing.PreprocessingError as exc:
        raise _err(name, str(exc).split(": ", 1)[-1]) from None
    source = {"kind": kind, "path": spec["path"], "bytes": len(data)}
    if extras.get("input_shape") is not None:
        source["input_shape"] = extras["input_shape"]
    if pre is not None:
        if "extractor" in spec:
            from pandacead import extractors

            try:
                pre["extractor"] = extractors.describe(
                    name, spec["extractor"], base_dir, preprocessing.output_dim(pre)
                )
            except extractors.ExtractorError as exc:
                raise _err(name, str(exc)) from None
            n_features = pre["extractor"]["output_dim"]
        else:
            n_features = preprocessing.output_dim(pre)
        source["preprocessing"] = pre
        if "categories" in spec:
            source["categories"] = {k: list(v) for k, v in spec["categories"].items()}
        if "classes" in spec:
            source["declared_classes"] = True
        elif task == "classification":
            source["notice"] = preprocessing.undeclared_classes_notice(name)
    else:
        source["unbounded"] = preprocessing.unbounded_notice(name, columns)
    if kind == "npz":
        source["features"] = spec.get("features", "X")
        source["label"] = spec.get("label", "y")
    else:
        source["label"] = spec["label"]
        source["features"] = columns
    if classes is not None:
        source["classes"] = classes
    info = DatasetInfo(
        name=name,
        task=task,
        n_rows=int(n_rows),
        n_features=int(n_features),
        n_classes=len(classes) if classes is not None else None,
        digest=_file_digest(data),
        source=source,
        holdout_fraction=fraction,
        public=_public(name, spec, False),
        declared_rows=_declared_rows(name, spec),
    )
    # Keyed by what was actually read (fstat of the open file).
    key = (name, kind, str(path.resolve()), fst.st_size, fst.st_mtime_ns, _canonical(spec))
    _DESCRIBE_CACHE[key] = info
    return info


def commitment(key: bytes, name: str, digest: str) -> str:
    """The dataset's public identity: HMAC-SHA256(host key, name, digest), never the digest itself."""
    mac = hmac.new(key, f"pandacead-dataset\0{name}\0{digest}".encode(), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{mac}"


def split_seed(key: bytes, name: str) -> int:
    """The held-out split's seed: HMAC(host key, dataset name) — secret, and independent of the data."""
    mac = hmac.new(key, f"pandacead-split\0{name}".encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") >> 1


def keyed(info: DatasetInfo, key: bytes) -> DatasetInfo:
    """`info` with its commitment and split seed from the host secret `key`.

    Without a key (a tool that cannot read the host secret) the commitment is
    random and the split seed is None (OS entropy): secret, not reproducible.
    """
    import dataclasses
    import secrets

    if not key:
        return dataclasses.replace(info, commitment=f"random:{secrets.token_hex(16)}", split_seed=None)
    return dataclasses.replace(
        info, commitment=commitment(key, info.name, info.digest), split_seed=split_seed(key, info.name)
    )


def split_indices(n_rows: int, holdout_fraction: float, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), a permutation seeded by the secret `seed` (None: OS entropy); n_test = round(n·f)."""
    n_test = int(round(n_rows * holdout_fraction))
    perm = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def load(
    info: DatasetInfo, base_dir: Path | str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, y_train, X_test, y_test): float32 features; int64 classes or float32 targets.

    Raises JobFailed if the data no longer matches `info` (digest or shape).
    """
    name = info.name
    src = dict(info.source)
    kind = src.get("kind")
    key = None
    if kind == "synthetic":  # generated, public and deterministic: the same arrays every job (copies)
        key = (info.digest, repr(sorted(src.items())), info.n_rows, info.n_features, info.task,
               info.holdout_fraction, info.split_seed, info.public)
        hit = _SYNTHETIC_LOADS.get(key)
        if hit is not None:
            return hit[0].copy(), hit[1].copy(), hit[2].copy(), hit[3].copy()
    if kind == "synthetic":
        digest = _synthetic_digest(src)
        if digest != info.digest:
            raise JobFailed(
                f"Dataset {name!r}: the generator spec does not match its digest.",
                ["digest: the generator spec differs from the registered one"],
            )
        X, y = synthetic_arrays(src["rows"], src["features"], src["seed"])
    elif kind in _FILE_KINDS:
        path = _resolve(name, src, base_dir)
        try:
            data, _ = _read_bytes(name, path)
        except DatasetError as exc:
            raise JobFailed(exc.message, exc.details) from None
        digest = _file_digest(data)
        if digest != info.digest:
            raise JobFailed(
                f"Dataset {name!r} changed since it was registered (its digest differs); "
                "restart or reload the daemon to describe it again.",
                ["digest: the file's content differs from the registered one"],
            )
        spec = {"label": src.get("label"), "features": src.get("features")}
        if kind == "npz":
            spec = {"label": src.get("label", "y"), "features": src.get("features", "X")}
            if src.get("input_shape") is not None:
                spec["input_shape"] = src["input_shape"]
        if "categories" in src:
            spec["categories"] = src["categories"]
        if src.get("declared_classes"):
            spec["classes"] = src["classes"]
        try:
            X64, y, classes, _ = _parse_file(name, kind, data, spec, info.task)
        except DatasetError as exc:
            raise JobFailed(exc.message, exc.details) from None
        if info.task == "classification" and "classes" in src and classes != src["classes"]:
            raise JobFailed(f"Dataset {name!r}: its classes differ from the registered ones.")
        pre = src.get("preprocessing")
        if pre is not None:
            X64 = preprocessing.transform(pre, X64, codes=True).astype(np.float64)
            if pre.get("extractor"):
                from pandacead import extractors

                X64 = extractors.apply(pre["extractor"], X64, base_dir)
        X = X64.astype(np.float32)
    else:
        raise JobFailed(f"Dataset {name!r} has an unknown kind {kind!r}.")
    if X.shape != (info.n_rows, info.n_features):
        raise JobFailed(
            f"Dataset {name!r} has shape {X.shape}, registered as "
            f"({info.n_rows}, {info.n_features}).",
        )
    if info.task == "classification":
        y = np.asarray(y, dtype=np.int64)
    else:
        y = np.asarray(y, dtype=np.float32)
    seed = info.split_seed
    if seed is None and info.public:  # public data: a digest-seeded split reveals nothing
        seed = int.from_bytes(hashlib.sha256(info.digest.encode()).digest()[:8], "big") >> 1
    train_idx, test_idx = split_indices(info.n_rows, info.holdout_fraction, seed)
    if len(train_idx) != info.n_train:  # pragma: no cover - same formula as DatasetInfo
        raise JobFailed(f"Dataset {name!r}: split size {len(train_idx)} != n_train {info.n_train}.")
    out = (
        np.ascontiguousarray(X[train_idx]),
        np.ascontiguousarray(y[train_idx]),
        np.ascontiguousarray(X[test_idx]),
        np.ascontiguousarray(y[test_idx]),
    )
    if key is not None and seed is not None:  # (an OS-entropy split is never reused)
        if len(_SYNTHETIC_LOADS) >= 8:
            _SYNTHETIC_LOADS.clear()
        _SYNTHETIC_LOADS[key] = tuple(a.copy() for a in out)  # type: ignore[assignment]
    return out


#: `load` of a synthetic dataset, by its description (it regenerates the same arrays each time).
_SYNTHETIC_LOADS: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
