"""Useful models from real data: declared-bounds preprocessing, CNNs on images, public extractors."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import drop, job, ledger, make_home, outcomes, run_once

from pandacead import datasets, preprocessing

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from pandacead_opacus import models  # noqa: E402
from pandacead_opacus.trainer import OpacusTrainer  # noqa: E402

from pandacead.errors import JobRejected  # noqa: E402
from pandacead.jobs import DPParams, Job, ModelSpec  # noqa: E402
from pandacead.trainers import TrainerContext  # noqa: E402

torch.set_num_threads(1)
TRAINER = OpacusTrainer()


def write_csv(path: Path, X: np.ndarray, colours: list[str], labels: list[str]) -> None:
    lines = ["a,b,colour,label"] + [f"{x[0]:.6g},{x[1]:.6g},{c},{t}" for x, c, t in zip(X, colours, labels)]
    path.write_text("\n".join(lines) + "\n")


def table(n: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 100, (n, 2)) * scale
    colours = [["red", "green", "blue"][i] for i in rng.integers(0, 3, n)]
    labels = ["yes" if x[0] + (30 if c == "red" else 0) > 60 else "no" for x, c in zip(X, colours)]
    return X, colours, labels


SPEC = {
    "kind": "csv", "path": "t.csv", "label": "label", "task": "classification",
    "bounds": {"a": [0, 100], "b": [0, 100]},
    "categories": {"colour": ["red", "green", "blue"]},
    "classes": ["no", "yes"],
    "rows": 80,  # the public row count a private dataset plans with (issue 12)
}


def ctx_for(info: Any, home: Path, noise_seed: int = 1) -> TrainerContext:
    return TrainerContext(datasets={info.name: info}, state_dir=str(home),
                          options={"home": str(home), "noise_seed": noise_seed})


# ----------------------------------------------------------------------------- preprocessing


def test_declared_bounds_are_used_verbatim_and_nothing_depends_on_the_data(tmp_path: Path) -> None:
    # Attack: two datasets whose values differ wildly (one far outside the bounds)
    # must get the identical published transform; it is a function of the spec only.
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    write_csv(tmp_path / "one" / "t.csv", *table(50, 0))
    write_csv(tmp_path / "two" / "t.csv", *table(80, 1, scale=7.0))
    i1 = datasets.describe("t", SPEC, tmp_path / "one")
    i2 = dataclasses.replace(datasets.describe("t", SPEC, tmp_path / "two"), split_seed=1234)
    assert i1.source["preprocessing"] == i2.source["preprocessing"]
    cols = i1.source["preprocessing"]["columns"]
    assert cols[0] == {"name": "a", "kind": "numeric", "low": 0.0, "high": 100.0}
    assert cols[2] == {"name": "colour", "kind": "categorical", "categories": ["red", "green", "blue"]}
    assert i1.source["classes"] == ["no", "yes"] and i1.n_features == 2 + 3
    # Loaded features: clipped to the declared bounds and scaled by them, nothing else.
    X, colours, labels = table(80, 1, scale=7.0)
    Xtr, ytr, Xte, yte = datasets.load(i2, tmp_path / "two")
    tr, te = datasets.split_indices(80, i2.holdout_fraction, i2.split_seed)
    expect = 2 * np.clip(X[tr], 0, 100) / 100 - 1
    assert np.allclose(Xtr[:, :2], expect, atol=1e-5)
    onehot = np.array([[c == k for k in ("red", "green", "blue")] for c in np.array(colours)[tr]], float)
    assert np.array_equal(Xtr[:, 2:], onehot)
    assert np.array_equal(ytr, [["no", "yes"].index(t) for t in np.array(labels)[tr]])


def test_plan_price_includes_preprocessing_and_reads_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_csv(tmp_path / "t.csv", *table(200, 0))
    info = datasets.describe("t", SPEC, tmp_path)
    monkeypatch.setattr(datasets, "load", lambda *a, **k: pytest.fail("plan loaded data"))
    j = Job(job_id="p", user_id="u", dataset="t", epochs=2, batch_size=32, dp=DPParams(epsilon=1.0, delta=1e-4))
    plan = TRAINER.plan(j, ctx_for(info, tmp_path))
    # Declared bounds are free: the plan's ε is DP-SGD's alone and says so.
    assert plan.details["preprocessing_epsilon"] == 0.0
    assert plan.details["preprocessing"]["columns"] == info.source["preprocessing"]["columns"]
    assert plan.epsilon <= 1.0


def test_unbounded_dataset_plan_says_how_to_declare_bounds(tmp_path: Path) -> None:
    X, _, labels = table(100, 0)
    (tmp_path / "u.csv").write_text("a,b,label\n" + "\n".join(f"{x[0]},{x[1]},{t}" for x, t in zip(X, labels)))
    info = datasets.describe("u", {"kind": "csv", "path": "u.csv", "label": "label", "task": "classification",
                                   "rows": 100}, tmp_path)
    j = Job(job_id="p", user_id="u", dataset="u", dp=DPParams(epsilon=1.0, delta=1e-4))
    notice = TRAINER.plan(j, ctx_for(info, tmp_path)).details["notice"]
    assert "declares no feature bounds" in notice and "bounds = {" in notice and "[datasets.u]" in notice


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bounds": {"a": [0, 100]}}, r"no declared bounds for 'b'.*bounds = \{ 'b' = \[low, high\]"),
        ({"categories": {}}, r"column 'colour' holds text; declare its values"),
        ({"classes": ["no", "maybe"]}, r"not one of the declared classes"),
        ({"bounds": {"a": [5, 1], "b": [0, 1]}}, r"bounds for column 'a' must be \[low, high\]"),
    ],
)
def test_incomplete_declarations_are_refused_at_registration(tmp_path: Path, change: dict, message: str) -> None:
    write_csv(tmp_path / "t.csv", *table(40, 0))
    with pytest.raises(datasets.DatasetError, match=message):
        datasets.describe("t", {**SPEC, **change}, tmp_path)


def test_raw_values_predict_through_the_released_model(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", *table(400, 0))
    info = datasets.describe("t", SPEC, tmp_path)
    ctx = ctx_for(info, tmp_path)
    j = Job(job_id="r", user_id="u", dataset="t", epochs=3, batch_size=64, learning_rate=1.0,
            dp=DPParams(epsilon=8.0, delta=1e-4, accountant="rdp"))
    result = TRAINER.train(j, TRAINER.plan(j, ctx), ctx, lambda e: None)
    model, arch = models.load_model(result.model)
    assert arch["preprocessing"]["classes"] == ["no", "yes"]
    raw = [[250.0, 3.5, "red"], [1.0, 99.0, "purple"], ["70", "0", "blue"]]
    by_hand = preprocessing.transform(arch["preprocessing"], raw)
    assert by_hand[1, 2:].tolist() == [0, 0, 0]  # an undeclared category is all zeros
    assert by_hand[0, 0] == 1.0  # clipped to the declared high
    head = {k: v for k, v in arch.items() if k != "preprocessing"}
    assert models.predict(model, arch, raw).tolist() == models.predict(model, head, by_hand).tolist()
    X, colours, labels = table(300, 5)
    rows = [[x[0], x[1], c] for x, c in zip(X, colours)]
    acc = np.mean(models.predict(model, arch, rows) == np.array([["no", "yes"].index(t) for t in labels]))
    assert acc > 0.75


# ----------------------------------------------------------------------------- images and extractors


def digits_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Toy 8×8 images: class = which quadrant is bright, values 0..16."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    X = rng.uniform(0, 4, (n, 8, 8))
    for i, c in enumerate(y):
        r, k = divmod(int(c), 2)
        X[i, 4 * r : 4 * r + 4, 4 * k : 4 * k + 4] += 10
    return X.astype(np.float32), y


def image_home(tmp_path: Path, extra: str = "") -> Path:
    home = make_home(tmp_path / "h", backend="opacus", timeout=300, extra=extra)
    X, y = digits_like(240, 0)
    np.savez(home / "img.npz", X=X, y=y)
    return home


IMG = '\n[datasets.img]\nkind = "npz"\npath = "img.npz"\ntask = "classification"\nbounds = [0, 16]\nclasses = [0, 1, 2, 3]\nrows = 240\n'


def extractor_file(path: Path) -> str:
    arch = models.architecture(model_type="mlp", hidden=[12], n_features=64, task="classification", n_classes=4)
    torch.manual_seed(0)
    data = models.save_model(models.build_model(arch), arch)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_cnn_and_public_features_jobs_train_through_the_daemon(tmp_path: Path) -> None:
    sha = extractor_file(tmp_path / "ext.safetensors")
    feat = (f'\n[datasets.feat]\nkind = "npz"\npath = "img.npz"\ntask = "classification"\nbounds = [0, 16]\n'
            f'rows = 240\nclasses = [0, 1, 2, 3]\nextractor = {{ path = "{tmp_path / "ext.safetensors"}", sha256 = "{sha}" }}\n')
    home = image_home(tmp_path, IMG + feat)
    dp = {"enabled": True, "epsilon": 4.0, "delta": 1e-4, "clip": 1.0}
    drop(home, "c.json", job("c", dataset="img", dp=dp, epochs=3, batch_size=48, learning_rate=0.5,
                             model={"type": "cnn", "channels": [4, 8], "hidden": [16]}))
    drop(home, "f.json", job("f", dataset="feat", dp=dp, epochs=4, batch_size=48, learning_rate=2.0))
    r = run_once(home, timeout=400)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert outcomes(home) == {"c": "artifact", "f": "artifact"}, [p.read_text()[:400] for p in (home / "outbox").glob("*.error.json")]
    X, y = digits_like(300, 9)  # rows the host never saw
    for jid, need in (("c", 0.6), ("f", 0.5)):
        art = json.loads((home / "outbox" / f"{jid}.json").read_text())
        model, arch = models.load_model(base64.b64decode(art["model"]))
        acc = float(np.mean(models.predict(model, arch, X.reshape(len(X), -1)) == y))
        assert acc > need, (jid, acc)  # chance is 0.25
    c = json.loads((home / "outbox" / "c.json").read_text())
    assert c["training_params"]["architecture"]["format"] == "pandacead.cnn.v1"
    f = json.loads((home / "outbox" / "f.json").read_text())
    assert f["training_params"]["preprocessing"]["extractor"]["sha256"] == sha
    assert "path" not in f["training_params"]["preprocessing"]["extractor"]


def test_extractor_mismatch_refuses_the_job_before_data_and_charges_nothing(tmp_path: Path) -> None:
    ext = tmp_path / "ext.safetensors"
    sha = extractor_file(ext)
    X, y = digits_like(120, 0)
    np.savez(tmp_path / "img.npz", X=X, y=y)
    spec = {"kind": "npz", "path": "img.npz", "task": "classification", "bounds": [0, 16],
            "classes": [0, 1, 2, 3], "extractor": {"path": str(ext), "sha256": "0" * 64}}
    with pytest.raises(datasets.DatasetError, match="not the pinned"):
        datasets.describe("feat", spec, tmp_path)
    info = datasets.describe("feat", {**spec, "extractor": {"path": str(ext), "sha256": sha}}, tmp_path)
    assert info.n_features == 12
    ext.write_bytes(ext.read_bytes()[:-4] + b"\0\0\0\0")  # swapped after registration
    j = Job(job_id="m", user_id="u", dataset="feat", dp=DPParams(epsilon=1.0, delta=1e-4))
    with pytest.raises(JobRejected, match="feature extractor is not the pinned file"):
        TRAINER.plan(j, ctx_for(info, tmp_path))


def test_extractor_mismatch_through_the_daemon_is_rejected_and_not_charged(tmp_path: Path) -> None:
    ext = tmp_path / "ext.safetensors"
    extractor_file(ext)
    feat = (f'\n[datasets.feat]\nkind = "npz"\npath = "img.npz"\ntask = "classification"\nbounds = [0, 16]\n'
            f'rows = 240\nclasses = [0, 1, 2, 3]\nextractor = {{ path = "{ext}", sha256 = "{"1" * 64}" }}\n')
    home = image_home(tmp_path, feat)
    drop(home, "x.json", job("x", dataset="feat"))
    assert run_once(home, timeout=300).returncode == 0
    rep = json.loads((home / "outbox" / "x.error.json").read_text())
    assert rep["status"] == "rejected"
    assert ledger(home).budget("alice").epsilon_spent == 0


def test_cnn_needs_image_rows(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", *table(60, 0))
    info = datasets.describe("t", SPEC, tmp_path)
    j = Job(job_id="c", user_id="u", dataset="t", model=ModelSpec(type="cnn"), dp=DPParams(epsilon=1.0, delta=1e-4))
    with pytest.raises(JobRejected, match="a cnn needs image or signal rows"):
        TRAINER.plan(j, ctx_for(info, tmp_path))


def test_family_defaults_fill_only_what_the_job_left_out(tmp_path: Path) -> None:
    from pandacead.jobs import parse_job

    write_csv(tmp_path / "t.csv", *table(300, 0))
    info = datasets.describe("t", {**SPEC, "rows": 600}, tmp_path)  # batch = public training rows / 3
    ctx = ctx_for(info, tmp_path)
    omitted = parse_job(json.dumps({"job_id": "d", "user_id": "u", "dataset": "t",
                                    "dp": {"epsilon": 1.0, "delta": 1e-4}}).encode())
    plan = TRAINER.plan(omitted, ctx)
    assert plan.details["family_defaults"] == {"epochs": 30, "batch_size": 200, "learning_rate": 2.0}
    given = parse_job(json.dumps({"job_id": "g", "user_id": "u", "dataset": "t", "epochs": 3,
                                  "dp": {"epsilon": 1.0, "delta": 1e-4}}).encode())
    assert TRAINER.plan(given, ctx).details["family_defaults"] == {"batch_size": 200, "learning_rate": 2.0}
    # A small dataset (public n < 384) trains full-batch with fewer steps: max(10, 90·(n/384)²).
    small = datasets.describe("t", {**SPEC, "rows": 142}, tmp_path)
    plan = TRAINER.plan(omitted, ctx_for(small, tmp_path))
    assert plan.details["family_defaults"] == {"epochs": 12, "batch_size": 142, "learning_rate": 2.0}
    assert plan.sample_rate == 1.0 and plan.steps == 12


def test_numeric_labels_match_declared_classes_by_value(tmp_path: Path) -> None:
    rows = "a,label\n" + "\n".join(f"{i},{'1.0' if i % 2 else '0'}" for i in range(40))
    (tmp_path / "n.csv").write_text(rows + "\n")
    info = datasets.describe("n", {"kind": "csv", "path": "n.csv", "label": "label", "task": "classification",
                                   "bounds": [0, 40], "classes": [0, 1]}, tmp_path)
    _, y, _, _ = datasets.load(info, tmp_path)
    assert info.source["classes"] == [0, 1] and set(y.tolist()) == {0, 1}
