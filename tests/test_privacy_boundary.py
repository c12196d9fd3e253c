"""Issue 12's attacks on the privacy boundary, each run against a real daemon (`run --once`).

Every test performs the attack that worked before and shows that it fails now:
nothing a buyer receives is un-private (docs/privacy.md). Kept as regression tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import cli, drop, job, ledger, make_home, outcomes, run_once

PRIVACY_PLUGINS = Path(__file__).resolve().parent / "plugins_privacy"
ROWS = 500  # the CSV's rows; declared public as `rows`, so the public n_train is 500 (private data holds no rows out)

DATASET_TOML = """
[datasets.patients]
kind = "csv"
path = "patients.csv"
label = "y"
task = "classification"
rows = 500
"""


def write_csv(path: Path, rows: int = ROWS, seed: int = 3, change_row: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, 3))
    if change_row is not None:
        X[change_row, 0] += 1.0
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    lines = ["a,b,c,y"] + [f"{a:.6f},{b:.6f},{c:.6f},{t}" for (a, b, c), t in zip(X, y)]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    return data


def private_home(tmp_path: Path, *, backend: str = "mock", extra: str = "", timeout: float = 120,
                 deny: list[str] | None = None) -> tuple[Path, str]:
    """A home with the private CSV dataset `patients`; returns (home, the file's SHA-256 hex)."""
    home = make_home(tmp_path / "h", backend=backend, timeout=timeout, plugin_dirs=(PRIVACY_PLUGINS,),
                     extra=DATASET_TOML + extra)
    if deny:
        cfg = home / "pandacead.toml"
        cfg.write_text(cfg.read_text().replace("[plugins]\n", f"[plugins]\ndeny = {json.dumps(deny)}\n", 1))
    data = write_csv(home / "patients.csv")
    return home, hashlib.sha256(data).hexdigest()


def pjob(job_id: str, **kw: Any) -> dict[str, Any]:
    return job(job_id, dataset="patients", **kw)


def report(home: Path, job_id: str) -> dict[str, Any]:
    return json.loads((home / "outbox" / f"{job_id}.error.json").read_text())


def artifact(home: Path, job_id: str) -> dict[str, Any]:
    return json.loads((home / "outbox" / f"{job_id}.json").read_text())


def released_bytes(home: Path) -> list[tuple[str, bytes]]:
    """Every byte in outbox/, plus the decoded models and envelope payloads inside them."""
    out = []
    for p in sorted((home / "outbox").iterdir()):
        if not p.is_file():
            continue
        data = p.read_bytes()
        out.append((p.name, data))
        doc = json.loads(data)
        if isinstance(doc.get("model"), str):
            out.append((f"{p.name}:model", base64.b64decode(doc["model"])))
        if isinstance(doc.get("payload"), str):
            out.append((f"{p.name}:payload", base64.b64decode(doc["payload"])))
    return out


def assert_no_digest(home: Path, digest_hex: str) -> None:
    raw = bytes.fromhex(digest_hex)
    for name, data in released_bytes(home):
        assert digest_hex.encode() not in data and digest_hex.upper().encode() not in data, name
        assert raw not in data, name


def assert_uncharged(home: Path, *job_ids: str, user: str = "alice") -> None:
    led = ledger(home)
    try:
        for jid in job_ids:
            spend = led.spend(jid)
            assert spend is None or spend["state"] == "released", (jid, spend)
        b = led.budget(user)
        assert b.epsilon_reserved == 0
    finally:
        led.close()


def one_sentence(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text and text.count(". ") == 0 and text.endswith(".")


# --------------------------------------------------------------------------- channel 1: mock on private data


def test_mock_on_private_data_is_refused_whatever_asks_for_it_and_charges_nothing(tmp_path):
    home, _ = private_home(tmp_path, backend="mock")
    drop(home, "m1.json", pjob("m1", backend="mock", dp={"epsilon": 1e-9, "delta": 1e-5, "clip": 1.0}))
    drop(home, "m2.json", pjob("m2"))  # the config's default backend is mock
    drop(home, "pub.json", job("pub"))  # mock on the public synthetic data still works
    assert run_once(home).returncode == 0
    drop(home, "m3.json", pjob("m3", backend="opacus"))
    assert run_once(home, MOCK_DP="1").returncode == 0  # MOCK_DP forces mock: still refused
    assert outcomes(home) == {"m1": "error", "m2": "error", "m3": "error", "pub": "artifact"}
    for jid in ("m1", "m2", "m3"):
        rep = report(home, jid)
        assert rep["status"] == "rejected" and "not differentially private" in rep["error"], rep
    led = ledger(home)
    try:
        assert all(led.spend(j) is None for j in ("m1", "m2", "m3")), "a refused mock job was reserved"
        assert led.budget("alice").epsilon_spent == pytest.approx(1.0)  # the public job alone
    finally:
        led.close()


def test_auto_on_a_host_without_a_dp_trainer_is_refused_never_mock(tmp_path):
    home, _ = private_home(tmp_path, backend="auto", deny=["opacus", "syft", "nss"])
    drop(home, "a1.json", pjob("a1"))
    drop(home, "a2.json", job("a2"))
    assert run_once(home).returncode == 0
    assert outcomes(home) == {"a1": "error", "a2": "error"}
    for jid in ("a1", "a2"):
        rep = report(home, jid)
        assert rep["status"] == "rejected" and "No differentially private" in rep["error"], rep
    assert_uncharged(home, "a1", "a2")
    assert ledger(home).budget("alice").epsilon_spent == 0


# --------------------------------------------------------------------------- channels 2, 4, 6: nss noise, digest, n


def test_same_seed_nss_jobs_get_different_noise_and_release_only_dp_fields(tmp_path):
    pytest.importorskip("pandacead_nss")
    home, digest = private_home(tmp_path)
    for jid in ("n1", "n2"):  # the attack: same buyer seed, so (before) the same noise draw
        drop(home, f"{jid}.json", pjob(jid, backend="nss", seed=7))
    assert run_once(home).returncode == 0
    assert outcomes(home) == {"n1": "artifact", "n2": "artifact"}
    a, b = artifact(home, "n1"), artifact(home, "n2")
    assert a["model"] != b["model"], "two same-seed jobs shared their noise"
    for art in (a, b):
        assert art["dp"]["neighbouring"] == "add_remove"
        assert art["accuracy"] is None and art["metrics"] == {}, "exact held-out metrics of private data"
        assert art["n"] == 500 and art["n_source"] == "declared"  # the public count, not the true one
        assert "n_test" not in json.dumps(art)
        assert cli(home, "verify", str(home / "outbox" / f"{art['job_id']}.json")).returncode == 0
    assert_no_digest(home, digest)


@pytest.mark.slow
def test_same_seed_opacus_jobs_differ_and_no_released_byte_holds_the_data_digest(tmp_path):
    pytest.importorskip("opacus")
    home, digest = private_home(tmp_path, backend="opacus")
    for jid in ("o1", "o2"):
        drop(home, f"{jid}.json", pjob(jid, epochs=1, seed=7))
    assert run_once(home, timeout=600).returncode == 0
    assert outcomes(home) == {"o1": "artifact", "o2": "artifact"}
    a, b = artifact(home, "o1"), artifact(home, "o2")
    assert a["model"] != b["model"]
    for art in (a, b):
        assert art["dp"]["neighbouring"] == "add_remove" and art["accuracy"] is None
        assert set(art["metrics"]) <= {"diverged"} and art["n"] == 500
        # q and the normaliser come from the public count: 500 rows / batch 64 -> 8 batches
        assert art["training_params"]["sample_rate"] == pytest.approx(1 / 8)
        assert art["training_params"]["expected_batch_size"] == int(500 / 8)
        assert "train_seconds" not in json.dumps(art)
    meta = json.loads(base64.b64decode(a["model"])[8:8 + int.from_bytes(base64.b64decode(a["model"])[:8], "little")])
    assert meta["__metadata__"]["pandacead.dataset_version"].startswith("hmac-sha256:")
    assert_no_digest(home, digest)
    led = ledger(home)
    try:
        assert led.budget("alice").epsilon_spent == pytest.approx(a["epsilon"] + b["epsilon"])
    finally:
        led.close()


# --------------------------------------------------------------------------- channel 3: data-seeded split


def test_the_held_out_split_does_not_move_when_one_row_changes(tmp_path):
    from pandacead import datasets

    spec = {"kind": "csv", "path": "d.csv", "label": "y", "task": "classification", "rows": ROWS,
            "holdout_fraction": 0.2}  # private data holds none out by default; a declared split must not leak
    write_csv(tmp_path / "d.csv")
    before = datasets.keyed(datasets.describe("d", spec, tmp_path), b"host-secret")
    write_csv(tmp_path / "d.csv", change_row=17)
    datasets._DESCRIBE_CACHE.clear()
    after = datasets.keyed(datasets.describe("d", spec, tmp_path), b"host-secret")
    assert before.digest != after.digest and before.commitment != after.commitment
    # The attack rebuilt the split per hypothesis from the data; now the seed is the host's secret.
    assert before.split_seed == after.split_seed
    i1 = datasets.split_indices(before.n_rows, before.holdout_fraction, before.split_seed)
    i2 = datasets.split_indices(after.n_rows, after.holdout_fraction, after.split_seed)
    assert all(np.array_equal(x, y) for x, y in zip(i1, i2))
    # ... and without the secret the attacker cannot rebuild it.
    guess = datasets.split_indices(after.n_rows, after.holdout_fraction, datasets.split_seed(b"guess", "d"))
    assert not np.array_equal(guess[1], i2[1])


# --------------------------------------------------------------------------- channel 5: failures after touching data


def test_a_job_that_fails_after_reading_private_data_is_charged_and_reports_one_sentence(tmp_path):
    home, digest = private_home(tmp_path)
    drop(home, "leak.json", pjob("leak", backend="leaky-fail", user_id="u1"))
    drop(home, "crash.json", pjob("crash", backend="touch-crash", user_id="u2"))
    drop(home, "early.json", pjob("early", backend="pre-refuse", user_id="u3"))
    assert run_once(home).returncode == 0
    assert outcomes(home) == {"leak": "error", "crash": "error", "early": "error"}
    X = np.loadtxt(home / "patients.csv", delimiter=",", skiprows=1)
    for jid in ("leak", "crash"):
        rep = report(home, jid)
        assert rep["status"] == "failed" and "charged" in rep["error"], rep
        assert one_sentence(rep["error"]), rep["error"]
        text = json.dumps(rep)
        assert "Traceback" not in text and "row 0" not in text and f"{X[0, 0]:.4f}"[:6] not in text
    led = ledger(home)
    try:
        for jid, user in (("leak", "u1"), ("crash", "u2")):
            assert led.spend(jid)["state"] == "committed", f"{jid} read the data and was not charged"
            assert led.budget(user).epsilon_spent == pytest.approx(1.0)
        # A trainer that failed before announcing any data access is released, not charged.
        assert led.spend("early")["state"] == "released" and led.budget("u3").epsilon_spent == 0
    finally:
        led.close()
    assert_no_digest(home, digest)


def test_an_inf_loss_does_not_crash_the_job(tmp_path):
    """Channel 5: a loss that overflowed to inf crashed the worker's JSON progress, uncharged."""
    pytest.importorskip("opacus")
    import torch  # noqa: F401
    from pandacead_opacus.training import train_arrays

    from pandacead import datasets
    from pandacead.errors import Diverged
    from pandacead.testing import make_job

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3)).astype(np.float32)
    X[::7, 0] = 1e30  # finite features whose squared error overflows float32
    y = X[:, 1].astype(np.float32)
    info = datasets.DatasetInfo(name="r", task="regression", n_rows=250, n_features=3, n_classes=None,
                                digest="sha256:" + "1" * 64, declared_rows=250)
    from pandacead_opacus.trainer import OpacusTrainer

    from pandacead.trainers import TrainerContext

    ctx = TrainerContext(datasets={"r": info}, state_dir=str(tmp_path), options={"timeout_seconds": 600})
    job = make_job(dataset="r", task="regression", epochs=2, batch_size=50, learning_rate=0.1,
                   dp={"epsilon": 2.0, "delta": 1e-4})
    plan = OpacusTrainer().plan(job, ctx).to_dict()
    arrays = {"X_train": X, "y_train": y, "X_test": X[:5], "y_test": y[:5]}
    events: list[dict[str, Any]] = []
    out = train_arrays(job.to_dict(), plan, arrays, 1, events.append, noise_seed=5)
    json.dumps(events, allow_nan=False)  # the progress protocol survives inf losses
    model = out["model"]
    from safetensors.numpy import load

    assert all(np.isfinite(t).all() for t in load(model).values()), "inf per-sample gradients leaked into the model"
    # A run whose DP model itself becomes non-finite stops as a divergence (a DP fact, charged).
    with pytest.raises(Diverged):
        jd = job.to_dict()
        # lr × (clipped sum + noise) / B overflows float32 at the first step: C = 1000, lr = 3e38.
        train_arrays({**jd, "learning_rate": 3e38, "dp": {**jd["dp"], "clip": 1000.0}}, plan, arrays, 1, noise_seed=5)


def test_a_divergence_reported_by_the_worker_is_charged_with_its_one_sentence(tmp_path):
    home, _ = private_home(tmp_path)
    drop(home, "div.json", pjob("div", backend="diverge"))
    assert run_once(home).returncode == 0
    rep = report(home, "div")
    assert rep["status"] == "failed" and "diverged" in rep["error"] and one_sentence(rep["error"]), rep
    led = ledger(home)
    try:
        assert led.spend("div")["state"] == "committed"
    finally:
        led.close()


# --------------------------------------------------------------------------- channels 7, 8 and no free work


def test_refusals_disclose_neither_budgets_nor_the_dataset_list(tmp_path):
    home, _ = private_home(tmp_path)
    assert cli(home, "budget", "set", "bob", "0.37", "--create").returncode == 0
    drop(home, "unknown.json", job("unknown", dataset="secret-ds"))
    drop(home, "broke.json", job("broke", user_id="bob", epsilon=1.0))  # alice's inbox names bob
    assert run_once(home).returncode == 0
    unknown = json.dumps(report(home, "unknown"))
    assert "patients" not in unknown and "synthetic" not in unknown, unknown
    broke = json.dumps(report(home, "broke"))
    assert "0.37" not in broke and "left" not in broke, broke
    assert_uncharged(home, "unknown", "broke", user="bob")


def test_a_job_without_dp_epsilon_is_refused_naming_the_field(tmp_path):
    home, _ = private_home(tmp_path)
    bare = pjob("bare", backend="nss")
    del bare["dp"]
    drop(home, "bare.json", bare)
    no_eps = pjob("noeps", backend="nss", dp={"delta": 1e-5})
    drop(home, "noeps.json", no_eps)
    assert run_once(home).returncode == 0
    for jid in ("bare", "noeps"):
        rep = report(home, jid)
        assert rep["status"] == "rejected" and "dp.epsilon" in rep["error"], rep
    assert_uncharged(home, "bare", "noeps")


@pytest.mark.slow
def test_a_job_that_cannot_finish_in_time_is_refused_before_planning(tmp_path):
    pytest.importorskip("opacus")
    home, _ = private_home(tmp_path, backend="opacus", timeout=10)
    # 240 epochs × 800 batches of 1 = 192,000 steps: calibrated for seconds, then held a worker.
    drop(home, "long.json", job("long", epochs=240, batch_size=1))
    assert run_once(home, timeout=300).returncode == 0
    rep = report(home, "long")
    assert rep["status"] == "rejected" and "timeout" in rep["error"] and "192000" in rep["error"], rep
    assert_uncharged(home, "long")


# --------------------------------------------------------------------------- the plugin contract


def test_the_contract_catches_noise_from_the_buyer_seed_and_unannounced_reads(tmp_path):
    """pandacead.testing makes the secret seed unavoidable for third-party trainers."""
    pytest.importorskip("pandacead_nss")
    from pandacead_nss.trainer import NSSTrainer

    from pandacead.testing import check_private_data_gate, check_trainer, make_context, make_job

    class SeedNoise(NSSTrainer):  # the bug nss had: noise from job.seed
        def _rng(self, job, ctx):
            return np.random.default_rng(job.seed)

    class Silent(NSSTrainer):  # reads data without telling the daemon
        def train(self, job, plan, ctx, progress):
            return super().train(job, plan, ctx, lambda e: None if e.get("stage") else progress(e))

    class Unmarked(NSSTrainer):
        private = None

    ctx = make_context(tmp_path, ["synthetic"])
    job = make_job(backend="nss", dp={"epsilon": 1.0, "delta": 1e-5})
    check_trainer(NSSTrainer(), job, ctx)  # the real one keeps the contract
    with pytest.raises(AssertionError, match="noise_seed"):
        check_trainer(SeedNoise(), job, ctx)
    with pytest.raises(AssertionError, match="data_loaded"):
        check_trainer(Silent(), job, ctx)
    with pytest.raises(AssertionError, match="not a bool"):
        check_private_data_gate(Unmarked(), ctx)
    from pandacead.default_mock import MockTrainer

    check_private_data_gate(MockTrainer(), ctx)  # non-private and refused on private data: passes


def test_two_buyers_with_the_same_job_id_and_seed_get_different_noise():
    """job_ids are scoped per account: the scope is part of the secret seed, so a sybil
    pair choosing one job_id and seed cannot make two releases share noise."""
    from pandacead.trainers import noise_seed

    key = b"k" * 32
    seeds = {noise_seed(key, "same", 7, scope) for scope in ("", "b1", "b2")}
    assert len(seeds) == 3
    assert noise_seed(key, "same", 7, "b1") == noise_seed(key, "same", 7, "b1")
