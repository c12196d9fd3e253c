"""Audit data: a small public synthetic dataset, canaries, and how a model scores a canary.

The audit never touches an earner's data or ledger: it writes its own
datasets (npz files in a scratch directory) and registers them only in the
audit's own `TrainerContext`, declared public.

Canary design (docs/audit.md): the base rows are the `synthetic` task
(standard-normal features, label 1[x0 + x1 > 0]) plus *canary columns* that
are 0 in every base row. A canary is an outlier on its own canary column —
x = M·e_j with M = `norm` (10 × the job's clip by default), every other
feature 0 — with a label its features do not predict. Its gradient is as
large as clipping allows and no other row's gradient touches weight j, so for
a linear model it is also a Dirac gradient canary (Nasr et al. 2023): the
weight on column j sees only the canary and the noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pandacead.trainers import DatasetInfo

#: The row every audit dataset holds out (the loader needs ≥ 1 held-out row).
HOLDOUT = "last row"


def _info_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(DatasetInfo)}


def base_rows(rows: int, features: int, canary_columns: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` rows of the synthetic task with `canary_columns` zero columns appended."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    return np.hstack([X, np.zeros((rows, canary_columns))]).astype(np.float32), y


def canary_rows(columns: list[int], labels: list[int], width: int, norm: float) -> tuple[np.ndarray, np.ndarray]:
    X = np.zeros((len(columns), width), dtype=np.float32)
    for i, j in enumerate(columns):
        X[i, j] = norm
    return X, np.asarray(labels, dtype=np.int64)


def _npz_bytes(X: np.ndarray, y: np.ndarray, nonce: int) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, X=X, y=y, nonce=np.array([nonce], dtype=np.int64))
    return buf.getvalue()


def _split_arg(info: DatasetInfo) -> Any:
    # pandacead's loader seeds the held-out split from the digest, or (once
    # datasets carry a secret split seed) from `info.split_seed`.
    return info.split_seed if "split_seed" in _info_fields() else info.digest  # type: ignore[attr-defined]


def _holds_out_last(info: DatasetInfo) -> bool:
    from pandacead import datasets

    _, test = datasets.split_indices(info.n_rows, info.holdout_fraction, _split_arg(info))
    return len(test) == 1 and int(test[0]) == info.n_rows - 1


def write_dataset(name: str, X: np.ndarray, y: np.ndarray, directory: Path) -> DatasetInfo:
    """Register (X, y) plus one held-out row as a public npz dataset whose training rows are exactly X.

    The loader holds out round(n·f) rows chosen by a seeded permutation; with
    f = 1/n that is one row, and the seed (or the file's nonce, which moves
    the digest) is searched until the held-out row is the appended last one.
    """
    from pandacead import datasets

    rng = np.random.default_rng(0)
    extra = rng.standard_normal((1, X.shape[1])).astype(np.float32)
    extra[:, 2:] = 0.0
    Xa = np.vstack([X, extra]).astype(np.float32)
    ya = np.concatenate([y, [0]]).astype(np.int64)
    n = len(Xa)
    fraction = 1.0 / n
    fields = _info_fields()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.npz"
    spec = {"kind": "npz", "path": str(path), "task": "classification", "holdout_fraction": fraction, "public": True}
    if "split_seed" in fields:
        data = _npz_bytes(Xa, ya, 0)
        path.write_bytes(data)
        info = datasets.describe(name, spec, directory)
        for seed in range(100 * n):
            cand = dataclasses.replace(info, split_seed=seed)  # type: ignore[call-arg]
            if _holds_out_last(cand):
                return _declare_public(cand)
        raise RuntimeError(f"no split seed holds out the last row of audit dataset {name!r}")
    for nonce in range(100 * n):
        data = _npz_bytes(Xa, ya, nonce)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        probe = DatasetInfo(name=name, task="classification", n_rows=n, n_features=Xa.shape[1],
                            n_classes=2, digest=digest, holdout_fraction=fraction)
        if _holds_out_last(probe):
            path.write_bytes(data)
            return _declare_public(datasets.describe(name, spec, directory))
    raise RuntimeError(f"no nonce holds out the last row of audit dataset {name!r}")


def _declare_public(info: DatasetInfo) -> DatasetInfo:
    """Audit data is synthetic and public; say so in whatever fields this pandacead has."""
    fields = _info_fields()
    changes: dict[str, Any] = {}
    if "public" in fields:
        changes["public"] = True
    if "declared_rows" in fields:
        changes["declared_rows"] = info.n_rows
    if "commitment" in fields:
        changes["commitment"] = f"audit:{info.digest}"
    return dataclasses.replace(info, **changes) if changes else info


# --------------------------------------------------------------------------- scoring


def _header_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__") or {})


def model_logits(model: bytes, X: np.ndarray) -> np.ndarray:
    """The logits (rows × outputs) of a pandacead model on X, in numpy.

    Knows the opacus/syft MLP format (``pandacead.architecture``) and the
    linear ``weight``/``bias`` models of mock and nss (with nss's input row clip).
    """
    from safetensors.numpy import load

    tensors = load(bytes(model))
    meta = _header_metadata(bytes(model))
    x = np.asarray(X, dtype=np.float64)
    if "pandacead.architecture" in meta:
        arch = json.loads(meta["pandacead.architecture"])
        layers = len(arch["hidden"]) + 1
        for i in range(layers):
            W = tensors[f"{2 * i}.weight"].astype(np.float64)
            b = tensors[f"{2 * i}.bias"].astype(np.float64)
            x = x @ W.T + b
            if i < layers - 1:
                x = np.maximum(x, 0.0)
        return x
    if "weight" in tensors and "bias" in tensors:
        arch = json.loads(meta.get("architecture", "{}"))
        clip = arch.get("input_row_clip")
        if clip:
            norms = np.linalg.norm(x, axis=1)
            x = x * ((clip * (1 - 1e-12)) / np.maximum(norms, clip))[:, None]
        return x @ tensors["weight"].astype(np.float64).T + tensors["bias"].astype(np.float64)
    raise ValueError("the audit cannot read this model: pass a `score` function for this trainer")


def first_layer(model: bytes) -> np.ndarray:
    """The input layer's weight matrix (outputs × features) of a pandacead model."""
    from safetensors.numpy import load

    tensors = load(bytes(model))
    for key in ("0.weight", "weight"):
        if key in tensors:
            return tensors[key].astype(np.float64)
    raise ValueError("the model has no input layer the white-box audit knows")


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row: how strongly the model predicts the row's own label (−loss, up to a monotone map).

    One logit (binary): the signed logit, a monotone function of the logistic
    loss. Several: logit of the label minus the largest other logit.
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if z.ndim == 1 or z.shape[1] == 1:
        z = z.reshape(-1)
        return np.where(labels == 1, z, -z)
    own = z[np.arange(len(z)), labels]
    other = z.copy()
    other[np.arange(len(z)), labels] = -np.inf
    return own - other.max(axis=1)


def white_box_scores(model: bytes, columns: list[int], labels: np.ndarray) -> np.ndarray:
    """The Dirac-canary statistic: each canary's own input weight, signed by its label."""
    W = first_layer(model)
    if W.shape[0] != 1:
        raise ValueError("the white-box statistic needs a model with one output (binary linear)")
    w = W[0, columns]
    return np.where(np.asarray(labels) == 1, w, -w)
