"""pandacead.datasets: descriptions, digests, the held-out split, and clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pandacead import datasets
from pandacead.errors import JobFailed, JobRejected
from pandacead.trainers import DatasetInfo


def synthetic(**over: object) -> DatasetInfo:
    return datasets.describe("synthetic", {**datasets.builtin_specs()["synthetic"], **over}, ".")


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def small_csv(tmp_path: Path, n: int = 50, labels: tuple[str, str] = ("no", "yes")) -> Path:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n, 3))
    y = [labels[int(a + b > 0)] for a, b, _ in X]
    return write_csv(tmp_path / "d.csv", ["a", "b", "c", "label"], [[*map(float, x), t] for x, t in zip(X, y)])


# ----------------------------------------------------------------------------- synthetic


def test_builtin_synthetic_description() -> None:
    info = synthetic()
    assert (info.name, info.task, info.n_rows, info.n_features, info.n_classes) == (
        "synthetic", "classification", 1000, 10, 2,
    )
    assert info.n_train == 800
    canon = {"generator": datasets.SYNTHETIC_GENERATOR, "rows": 1000, "features": 10, "seed": 0}
    expected = hashlib.sha256(
        json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert info.digest == "sha256:" + expected
    assert synthetic(seed=1).digest != info.digest
    assert synthetic(rows=500).digest != info.digest


def test_synthetic_load_is_the_seed_task() -> None:
    info = synthetic()
    X_train, y_train, X_test, y_test = datasets.load(info, ".")
    assert X_train.shape == (800, 10) and X_test.shape == (200, 10)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    for X, y in ((X_train, y_train), (X_test, y_test)):
        np.testing.assert_array_equal(y, (X[:, 0].astype(np.float64) + X[:, 1] > 0).astype(np.int64))
    assert 0.4 < y_train.mean() < 0.6


def test_split_is_stable_and_partitions() -> None:
    info = synthetic()
    a = datasets.load(info, ".")
    b = datasets.load(DatasetInfo.from_dict(json.loads(json.dumps(info.to_dict()))), ".")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    key = b"host-secret"
    seed = datasets.split_seed(key, info.name)
    train, test = datasets.split_indices(info.n_rows, info.holdout_fraction, seed)
    assert len(train) == info.n_train and len(test) == info.n_rows - info.n_train
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(range(info.n_rows))
    # Private data: the split's seed comes from the host secret and the name, never the data.
    keyed = datasets.keyed(info, key)
    assert keyed.split_seed == seed and datasets.keyed(synthetic(seed=5), key).split_seed == seed
    assert datasets.split_seed(b"other-secret", info.name) != seed
    other_train, _ = datasets.split_indices(info.n_rows, 0.2, datasets.split_seed(key, "other"))
    assert not np.array_equal(other_train, train)
    # The public commitment names the version; it is not the digest and changes with it.
    assert keyed.commitment.startswith("hmac-sha256:") and info.digest.split(":")[1] not in keyed.commitment
    assert datasets.keyed(synthetic(seed=5), key).commitment != keyed.commitment


def test_synthetic_spec_errors() -> None:
    with pytest.raises(ValueError, match="features"):
        synthetic(features=1)
    with pytest.raises(JobRejected, match="holdout_fraction"):
        synthetic(holdout_fraction=1.0)
    with pytest.raises(ValueError, match="classification"):
        synthetic(task="regression")
    with pytest.raises(ValueError, match="unknown kind"):
        datasets.describe("x", {"kind": "excel"}, ".")


def test_tampered_synthetic_spec_fails_at_load() -> None:
    info = synthetic()
    bad = DatasetInfo.from_dict({**info.to_dict(), "source": {**info.source, "seed": 9}})
    with pytest.raises(JobFailed, match="digest"):
        datasets.load(bad, ".")


# ----------------------------------------------------------------------------- csv


def test_csv_description_digest_and_labels(tmp_path: Path) -> None:
    path = small_csv(tmp_path)
    spec = {"kind": "csv", "path": "d.csv", "label": "label", "task": "classification"}
    info = datasets.describe("mine", spec, tmp_path)
    assert (info.n_rows, info.n_features, info.n_classes) == (50, 3, 2)
    assert info.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.source["classes"] == ["no", "yes"]
    assert info.source["features"] == ["a", "b", "c"]
    X_train, y_train, X_test, y_test = datasets.load(info, tmp_path)
    # Private data (the default) trains on every row: its held-out metrics are never released.
    assert info.holdout_fraction == 0.0
    assert X_train.shape == (50, 3) and X_test.shape == (0, 3)
    assert set(np.unique(y_train)) == {0, 1}
    assert y_train.dtype == np.int64
    # Public data keeps the 20 % held-out split its exact metrics are measured on.
    pub = datasets.describe("mine", {**spec, "public": True}, tmp_path)
    assert pub.holdout_fraction == 0.2
    X_train, y_train, X_test, y_test = datasets.load(pub, tmp_path)
    assert X_train.shape == (40, 3) and X_test.shape == (10, 3)
    assert set(np.unique(np.concatenate([y_train, y_test]))) == {0, 1}
    # An explicit fraction is used as declared, 0 included.
    assert datasets.describe("mine", {**spec, "holdout_fraction": 0.3}, tmp_path).n_train == 35
    assert datasets.describe("mine", {**spec, "public": True, "holdout_fraction": 0}, tmp_path).n_train == 50
    # An absolute path works from any base_dir.
    info2 = datasets.describe("mine", {**spec, "path": str(path)}, "/")
    assert info2.digest == info.digest


def test_csv_regression_and_feature_subset(tmp_path: Path) -> None:
    write_csv(tmp_path / "r.csv", ["x1", "x2", "id", "y"], [[i, i * 2, 100 + i, i * 0.5] for i in range(20)])
    spec = {"kind": "csv", "path": "r.csv", "label": "y", "task": "regression", "features": ["x1", "x2"]}
    info = datasets.describe("reg", spec, tmp_path)
    assert (info.n_features, info.n_classes, info.task) == (2, None, "regression")
    X_train, y_train, _, _ = datasets.load(info, tmp_path)
    assert y_train.dtype == np.float32 and X_train.shape[1] == 2
    np.testing.assert_allclose(y_train, X_train[:, 0] * 0.5)


@pytest.mark.parametrize(
    ("rows", "spec", "message"),
    [
        ([[1, 2, 0], [3, 4, 1]], {"label": "missing"}, "label column 'missing' is not in the file"),
        ([[1, "abc", 0], [3, 4, 1]], {}, "column 'b' is not numeric .row 2"),
        ([[1, "nan", 0], [3, 4, 1]], {}, "feature 'b' has NaN at row 2"),
        ([[1, "inf", 0], [3, 4, 1]], {}, "infinite"),
        ([[1, "", 0], [3, 4, 1]], {}, "column 'b' has a missing value at row 2"),
        ([[1, 2, 0], [3, 4, 0]], {}, "at least 2 classes"),
        ([[1, 2, 0.5], [3, 4, 1]], {}, "fractional"),
    ],
)
def test_csv_errors_are_clear(tmp_path: Path, rows: list[list[object]], spec: dict, message: str) -> None:
    write_csv(tmp_path / "bad.csv", ["a", "b", "y"], rows * 5)
    full = {"kind": "csv", "path": "bad.csv", "label": "y", "task": "classification", **spec}
    with pytest.raises(datasets.DatasetError, match=message) as exc:
        datasets.describe("bad", full, tmp_path)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, JobRejected)
    assert str(exc.value).startswith("Dataset 'bad': ")


def test_registration_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        datasets.describe("x", {"kind": "csv", "path": "nope.csv", "label": "y", "task": "classification"}, tmp_path)
    small_csv(tmp_path)
    with pytest.raises(ValueError, match="'task' must be"):
        datasets.describe("x", {"kind": "csv", "path": "d.csv", "label": "label"}, tmp_path)
    with pytest.raises(ValueError, match="regression label must be numeric|not numeric"):
        datasets.describe("x", {"kind": "csv", "path": "d.csv", "label": "label", "task": "regression"}, tmp_path)
    with pytest.raises(ValueError, match="needs 'label'"):
        datasets.describe("x", {"kind": "csv", "path": "d.csv", "task": "classification"}, tmp_path)
    (tmp_path / "ragged.csv").write_text("a,b,y\n1,2,0\n1,2\n")
    with pytest.raises(ValueError, match="row 3 has 2 fields"):
        datasets.describe("x", {"kind": "csv", "path": "ragged.csv", "label": "y", "task": "classification"}, tmp_path)


def test_changed_file_fails_at_load_and_cache_follows_the_file(tmp_path: Path) -> None:
    path = small_csv(tmp_path)
    spec = {"kind": "csv", "path": "d.csv", "label": "label", "task": "classification"}
    info = datasets.describe("mine", spec, tmp_path)
    assert datasets.describe("mine", spec, tmp_path) is info  # cached by (path, size, mtime_ns)
    with open(path, "a") as fh:
        fh.write("0.1,0.2,0.3,yes\n")
    with pytest.raises(JobFailed, match="changed since it was registered"):
        datasets.load(info, tmp_path)
    fresh = datasets.describe("mine", spec, tmp_path)
    assert fresh is not info and fresh.n_rows == 51 and fresh.digest != info.digest
    os.remove(path)
    with pytest.raises(JobFailed, match="does not exist"):
        datasets.load(fresh, tmp_path)


# ----------------------------------------------------------------------------- npz / parquet


def test_npz_dataset_and_no_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    y = rng.integers(0, 3, 30) * 10  # classes 0, 10, 20 -> 0, 1, 2
    np.savez(tmp_path / "d.npz", X=X, y=y)
    info = datasets.describe("n", {"kind": "npz", "path": "d.npz", "task": "classification"}, tmp_path)
    assert (info.n_rows, info.n_features, info.n_classes) == (30, 4, 3)
    assert info.source["classes"] == [0, 10, 20]
    X_train, y_train, X_test, y_test = datasets.load(info, tmp_path)
    assert set(np.unique(np.concatenate([y_train, y_test]))) == {0, 1, 2}

    np.savez(tmp_path / "o.npz", X=np.array([object()] * 3, dtype=object), y=np.zeros(3))
    with pytest.raises(ValueError, match="without pickle"):
        datasets.describe("o", {"kind": "npz", "path": "o.npz", "task": "classification"}, tmp_path)
    with pytest.raises(ValueError, match="no array 'labels'"):
        datasets.describe("n", {"kind": "npz", "path": "d.npz", "label": "labels", "task": "classification"}, tmp_path)


def test_parquet_dataset(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(1)
    n = 40
    table = pa.table(
        {
            "f1": rng.standard_normal(n),
            "f2": rng.integers(0, 5, n),
            "flag": rng.integers(0, 2, n).astype(bool),
            "target": rng.standard_normal(n),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    info = datasets.describe(
        "p", {"kind": "parquet", "path": "d.parquet", "label": "target", "task": "regression"}, tmp_path
    )
    assert (info.n_rows, info.n_features, info.task) == (40, 3, "regression")
    X_train, y_train, X_test, y_test = datasets.load(info, tmp_path)
    assert X_train.dtype == np.float32 and y_train.dtype == np.float32 and len(y_test) == 0 and len(y_train) == 40

    bad = pa.table({"f1": ["a", "b"] * 5, "y": [0, 1] * 5})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="column 'f1' is not numeric"):
        datasets.describe("b", {"kind": "parquet", "path": "bad.parquet", "label": "y", "task": "classification"}, tmp_path)


def test_module_imports_no_heavy_libraries() -> None:
    code = (
        "import sys, pandacead.datasets as d; "
        "d.load(d.describe('s', d.builtin_specs()['synthetic'], '.'), '.'); "
        "bad = [m for m in ('torch', 'opacus', 'pandas', 'pyarrow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
