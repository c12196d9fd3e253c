"""Attacks, wave 3: the private hyperparameter search scored on its training rows, and
private datasets that train on every row (holdout_fraction 0 by default).

Each test performs one attack on the real planner/trainer and asserts that it fails.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pandacead import datasets, tuning
from pandacead.errors import Diverged, JobFailed
from pandacead.jobs import Job
from pandacead.pipeline import Pipeline
from pandacead.trainers import TrainerContext, TrainResult

pytestmark = pytest.mark.opacus

TRUE_ROWS, DECLARED_ROWS = 137, 200


def _private_csv(tmp_path: Path, task: str = "regression"):
    """A private csv of 137 rows whose earner declares 200 (the public count)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((TRUE_ROWS, 3))
    y = X @ np.array([1.0, 2.0, -1.0]) if task == "regression" else (X[:, 0] + X[:, 1] > 0).astype(int)
    lines = ["a,b,c,y"] + [",".join(f"{v:.4f}" for v in r) + f",{t}" for r, t in zip(X, y)]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    spec = {"kind": "csv", "path": str(tmp_path / "r.csv"), "label": "y", "task": task, "rows": DECLARED_ROWS}
    return datasets.describe("r", spec, str(tmp_path))


def _search_job(task: str, space: dict | None = None, **kw) -> Job:
    from conftest import job

    search = {"candidates": {"distribution": "geometric", "mean": 3},
              "space": space or {"learning_rate": {"low": 0.02, "high": 0.2, "log": True},
                                 "batch_size": [16, 64], "epochs": [1, 2]}}
    search.update(kw.pop("search_extra", {}))
    d = {**job("w3", user_id="u", epsilon=3.0, dataset="r", task=task, epochs=1, batch_size=32, search=search, **kw),
         "model": {"type": "linear", "hidden": []}, "backend": None}
    return Job.from_dict(d)


def _plan(tmp_path: Path, info, job: Job):
    pytest.importorskip("opacus")
    from pandacead_opacus.trainer import OpacusTrainer

    ctx = TrainerContext(datasets={info.name: info}, state_dir=str(tmp_path), options={"home": str(tmp_path)})
    return OpacusTrainer().plan(job, ctx)


def _one_model(job: Job, plan, arrays):
    """One real DP-SGD candidate (the first configuration), reused as every candidate's result."""
    from pandacead_opacus import search as search_mod
    from pandacead_opacus.training import train_arrays

    cfg = plan.details["search"]["configs"][0]
    cj = search_mod.candidate_job(job, cfg["config"], 0.05, 1.0, cfg["noise_multiplier"])
    cp = {"epsilon": plan.epsilon, "delta": plan.delta, "noise_multiplier": cfg["noise_multiplier"],
          "sample_rate": cfg["sample_rate"], "steps": cfg["steps"], "accountant": "rdp",
          "n_train": cfg["n_train"], "rdp": None, "details": cfg["details"]}
    return train_arrays(cj.to_dict(), cp, arrays, noise_seed=5)


def _run(job, plan, arrays, fixed, noise_seed, seeds=None, events=None):
    from pandacead_opacus import search as search_mod

    def train_candidate(cj, cp, fit, seed):
        if seeds is not None:
            seeds.append(seed)
        return copy.deepcopy(fixed)

    return search_mod.run_search(job, plan, arrays, noise_seed=noise_seed, train_candidate=train_candidate,
                                 progress=(events.append if events is not None else lambda e: None))


def _k(events) -> int:
    """K: the candidates that count (the admin's progress; with constant work all M are trained)."""
    return sum(1 for e in events if e.get("stage") == "search" and e.get("counted"))


# --------------------------------------------------------------------------- private data, no held-out rows


def _schedule(n, b, e):
    from pandacead_opacus import privacy

    return privacy.poisson_schedule(n, b, e)


def test_private_data_trains_on_every_row_and_releases_only_the_declared_count(tmp_path):
    """Attack: with holdout 0 the true row count (137) is the training count; look for it in
    the plan (q, steps, the score's divisor), in the configurations' schedules and in the
    released `n` and metrics of a search over the private rows."""
    info = _private_csv(tmp_path)
    assert (info.public, info.holdout_fraction, info.public_n_train) == (False, 0.0, DECLARED_ROWS)
    X, y, Xt, yt = datasets.load(info, str(tmp_path))
    assert len(X) == TRUE_ROWS and len(Xt) == 0  # every row trains; nothing held out
    job = _search_job("regression")
    plan = _plan(tmp_path, info, job)
    s = plan.details["search"]
    assert plan.n_train == DECLARED_ROWS and s["n_validation_public"] == DECLARED_ROWS
    for c in s["configs"]:  # each configuration priced with the public count, as it runs
        sched = _schedule(DECLARED_ROWS, c["config"]["batch_size"], c["config"]["epochs"])
        assert (c["sample_rate"], c["steps"], c["n_train"]) == (sched["sample_rate"], sched["steps"], DECLARED_ROWS)
    arrays = {"X_train": X, "y_train": y, "X_test": Xt, "y_test": yt}
    fixed = _one_model(job, plan, arrays)
    best = _run(job, plan, arrays, fixed, noise_seed=11)
    pipe = SimpleNamespace(ctx=SimpleNamespace(datasets={"r": info}), settings=SimpleNamespace(state=tmp_path))
    out, how = Pipeline.released(pipe, job, TrainResult(**best))
    assert out.n == DECLARED_ROWS and how == "declared"
    assert set(out.metrics) <= {"train_clipped_loss_dp", "diverged"} and "train_clipped_loss_dp" in out.metrics
    text = json.dumps({"m": out.metrics, "p": out.training_params, "v": out.provenance}, default=str)
    assert str(TRUE_ROWS) not in text


# --------------------------------------------------------------------------- the score's sensitivity


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_one_added_row_moves_the_search_score_by_at_most_one(tmp_path, task):
    """Attack: add one adversarial row (a huge target, a wrong label) to the scored rows and
    read the released noisy score with the same host secret; its count moves by at most 1
    (the sensitivity the score's σ_s is calibrated for)."""
    info = _private_csv(tmp_path, task)
    job = _search_job(task)
    plan = _plan(tmp_path, info, job)
    X, y, _, _ = datasets.load(info, str(tmp_path))
    arrays = {"X_train": X, "y_train": y, "X_test": X[:0], "y_test": y[:0]}
    fixed = _one_model(job, plan, arrays)
    n_pub = plan.details["search"]["n_validation_public"]
    evil_y = np.float32(1e30) if task == "regression" else (1 - y[:1]).astype(y.dtype)[0]
    X2 = np.concatenate([X, np.full((1, X.shape[1]), 1e6, dtype=X.dtype)])
    y2 = np.concatenate([y, np.asarray([evil_y], dtype=y.dtype)])
    arrays2 = {"X_train": X2, "y_train": y2, "X_test": X2[:0], "y_test": y2[:0]}
    name = "train_clipped_loss_dp" if task == "regression" else "train_accuracy_dp"
    checked = 0
    for secret in range(3):
        a = _run(job, plan, arrays, fixed, noise_seed=secret)["metrics"][name]
        b = _run(job, plan, arrays2, fixed, noise_seed=secret)["metrics"][name]
        if 0.0 < a < 1.0 and 0.0 < b < 1.0 or task == "regression" and a > 0 and b > 0:
            assert abs(a - b) * n_pub <= 1.0 + 1e-6, (secret, a, b)
            checked += 1
    assert checked >= 1  # the attack compared at least one pair of unclamped scores


# --------------------------------------------------------------------------- the noise and K


def test_score_noise_and_k_follow_the_host_secret_never_the_buyers_seed(tmp_path):
    """Attack: resubmit the search with the buyer's `seed` changed (or fixed) and hope the
    score noise, K or the candidates' seeds follow it; with the host secret fixed they are
    identical, with a new secret they change."""
    info = _private_csv(tmp_path, "classification")
    job = _search_job("classification")
    plan = _plan(tmp_path, info, job)
    X, y, _, _ = datasets.load(info, str(tmp_path))
    arrays = {"X_train": X, "y_train": y, "X_test": X[:0], "y_test": y[:0]}
    fixed = _one_model(job, plan, arrays)
    other = Job.from_dict({**job.to_dict(), "seed": 99991})
    runs = {}
    for j, secret in ((job, 1), (other, 1), (job, 2), (other, 2), (job, 3)):
        seeds: list[int] = []
        best = _run(j, plan, arrays, fixed, noise_seed=secret, seeds=seeds)
        runs[(j.seed, secret)] = (best["metrics"]["train_accuracy_dp"], tuple(seeds))
    assert runs[(job.seed, 1)] == runs[(99991, 1)] and runs[(job.seed, 2)] == runs[(99991, 2)]
    assert len({runs[(job.seed, s)] for s in (1, 2, 3)}) == 3  # a new secret: new noise and seeds
    assert not any(job.seed in v[1] or 99991 in v[1] for v in runs.values())


def test_released_search_result_carries_no_trace_of_k_or_the_other_candidates(tmp_path):
    """Attack: compare the released bytes of searches that ran different numbers of
    candidates; only the value of the noisy score may differ, never a key, a count, an
    index or a timing."""
    info = _private_csv(tmp_path, "classification")
    job = _search_job("classification", search_extra={"candidates": {"distribution": "geometric", "mean": 6}})
    plan = _plan(tmp_path, info, job)
    X, y, _, _ = datasets.load(info, str(tmp_path))
    arrays = {"X_train": X, "y_train": y, "X_test": X[:0], "y_test": y[:0]}
    fixed = _one_model(job, plan, arrays)
    pipe = SimpleNamespace(ctx=SimpleNamespace(datasets={"r": info}), settings=SimpleNamespace(state=tmp_path))
    by_k: dict[int, dict] = {}
    for secret in range(12):
        seeds: list[int] = []
        events: list = []
        best = _run(job, plan, arrays, fixed, noise_seed=secret, seeds=seeds, events=events)
        assert len(seeds) == plan.details["search"]["max"]  # constant work: the same M whatever K
        out, _ = Pipeline.released(pipe, job, TrainResult(**best))
        view = {"metrics": out.metrics, "training_params": out.training_params, "provenance": out.provenance,
                "n": out.n, "accuracy": out.accuracy, "epsilon": out.epsilon}
        by_k.setdefault(_k(events), view)
    assert len(by_k) >= 2, sorted(by_k)
    views = list(by_k.values())
    for v in views[1:]:
        assert set(v["metrics"]) == set(views[0]["metrics"])
        for key in ("training_params", "provenance", "n", "accuracy", "epsilon"):
            a, b = v[key], views[0][key]
            if key == "training_params":  # the released candidate's own hyperparameters may differ
                a = {k: x for k, x in a.items() if k not in ("search_choice", "learning_rate", "clip")}
                b = {k: x for k, x in b.items() if k not in ("search_choice", "learning_rate", "clip")}
            assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str), key
    for v in views:
        assert set(v["training_params"]["search_choice"]) == {"learning_rate", "clip", "noise_multiplier",
                                                              "batch_size", "epochs", "hidden"}


def test_a_search_whose_candidates_all_diverge_fails_with_the_same_words_whatever_k(tmp_path):
    """Attack: when every candidate diverges the error text must not count the candidates."""
    from pandacead_opacus import search as search_mod

    info = _private_csv(tmp_path, "classification")
    job = _search_job("classification")
    plan = _plan(tmp_path, info, job)
    X, y, _, _ = datasets.load(info, str(tmp_path))
    arrays = {"X_train": X, "y_train": y, "X_test": X[:0], "y_test": y[:0]}
    texts, ks = set(), set()
    for secret in range(8):
        n = [0]

        def diverge(cj, cp, fit, seed, n=n):
            n[0] += 1
            raise Diverged("Training diverged.", [f"diverged at step 3 of {cp['steps']}"])

        events: list = []
        with pytest.raises(JobFailed) as exc:
            search_mod.run_search(job, plan, arrays, noise_seed=secret, train_candidate=diverge,
                                  progress=events.append)
        texts.add((str(exc.value), tuple(getattr(exc.value, "details", []) or [])))
        assert n[0] == plan.details["search"]["max"]  # all M tried: failing does not end early
        ks.add(_k(events))
    assert len(ks) >= 2 and len(texts) == 1, (ks, texts)


# --------------------------------------------------------------------------- σ_c against the charge


def test_no_configuration_runs_above_the_charged_curve_at_any_order(tmp_path):
    """Attack: a heterogeneous space (batches 8..128, 1..3 epochs) gives each configuration its
    own σ_c; recompute every configuration's DP-SGD curve at the σ_c it trains with, plus the
    score, and put it through repeat-and-select: never above the charged curve at any order."""
    from pandacead_opacus import search as search_mod

    from pandacead import accounting

    info = _private_csv(tmp_path, "classification")
    space = {"learning_rate": {"low": 0.02, "high": 0.2, "log": True}, "batch_size": [8, 32, 128],
             "epochs": [1, 3]}
    job = _search_job("classification", space=space)
    plan = _plan(tmp_path, info, job)
    s = plan.details["search"]
    charged = dict(zip(accounting.RDP_ORDERS, accounting.curve_from_json(plan.rdp)))
    sigmas = {c["noise_multiplier"] for c in s["configs"]}
    assert len(sigmas) >= 2  # cheaper schedules do get less noise
    base: dict[float, float] = {}
    for c in s["configs"]:
        sched = _schedule(DECLARED_ROWS, c["config"]["batch_size"], c["config"]["epochs"])
        own = search_mod._config_curve(sched, c["noise_multiplier"])
        for a, v in own.items():
            base[a] = max(base.get(a, 0.0), v + tuning.gaussian_rdp(s["score_noise"], a))
    shape = tuning.distribution_shape(s["distribution"], None)
    worst = tuning.repeat_and_select({a: base[a] for a in accounting.RDP_ORDERS}, float(s["mean"]), shape)
    for a in accounting.RDP_ORDERS:
        assert worst[a] <= charged[a] * (1 + 1e-9) + 1e-12, (a, worst[a], charged[a])
    eps, _ = accounting.rdp_to_dp({a: worst[a] for a in accounting.RDP_ORDERS}, plan.delta)
    assert eps <= plan.epsilon * (1 + 1e-9) <= 3.0 * (1 + 1e-9)


# --------------------------------------------------------------------------- a search cut short


@pytest.mark.slow
def test_a_search_timed_out_after_reading_private_data_is_charged_and_its_error_counts_nothing(tmp_path):
    """Attack: make the search run past the host's timeout (a huge mean K) so that it stops
    after touching the private rows, hoping for a refund, or for an error text that says how
    many candidates ran."""
    pytest.importorskip("opacus")
    from conftest import drop, ledger, outcomes, run_once
    from test_privacy_boundary import pjob, private_home, report

    home, _ = private_home(tmp_path, backend="opacus", timeout=40)  # a candidate is 175k steps (the host limit is 200k): K ≥ 2 (99 %) outlasts it anywhere
    # Without constant work (which would refuse this search before it runs: 1000 candidates of at
    # least 17.5 s each cannot fit in 40 s), so that it really starts and is cut by the timeout.
    cfg = home / "pandacead.toml"
    cfg.write_text(cfg.read_text().replace("[trainer]\n", "[trainer]\nsearch_constant_work = false\n", 1))
    assert "search_constant_work = false" in cfg.read_text()
    search = {"candidates": {"distribution": "geometric", "mean": 100},
              "space": {"learning_rate": {"low": 0.02, "high": 0.2, "log": True}, "epochs": [350], "batch_size": [1]}}
    drop(home, "t.json", {**pjob("w3-timeout", epsilon=5.0, search=search), "backend": "opacus",
                          "model": {"type": "linear", "hidden": []}, "epochs": 350, "batch_size": 1})
    r = run_once(home)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert outcomes(home)["w3-timeout"] == "error"
    rep = report(home, "w3-timeout")
    led = ledger(home)
    try:
        spend = led.spend("w3-timeout")
    finally:
        led.close()
    assert spend is not None and spend["state"] == "committed", (spend, rep)  # charged in full
    assert spend["accountant"] == "rdp-repeat-and-select"
    text = json.dumps(rep)
    assert rep["status"] == "failed" and rep["details"] == ["charged: the trainer had read the data"], rep
    assert "candidate" not in text.lower() and "best_score" not in text and "search" not in text.lower(), rep


# --------------------------------------------------------------------------- the quote's estimate


def test_a_quote_estimate_for_a_plan_without_n_train_does_not_use_the_true_row_count(tmp_path):
    """Attack: a (third-party) trainer whose plan leaves `n_train` out; the quote's run-time and
    memory estimate fell back to the dataset's TRUE training count, and the quote reaches the
    buyer. Two private datasets with the same declared rows but 137 vs 181 true rows must
    quote the same figures (fixed: the fallback is the public count)."""
    from pandacead.quote import estimate
    from pandacead.trainers import PrivacyPlan

    info = _private_csv(tmp_path, "classification")
    import dataclasses

    bigger = dataclasses.replace(info, n_rows=181)
    assert bigger.n_train != info.n_train and bigger.public_n_train == info.public_n_train
    from conftest import job

    j = Job.from_dict({**job("q1", dataset="r"), "backend": None})
    plan = PrivacyPlan(epsilon=1.0, delta=1e-5, noise_multiplier=1.0, sample_rate=None, steps=None,
                       accountant="rdp", n_train=None)
    assert estimate(j, plan, info, "thirdparty") == estimate(j, plan, bigger, "thirdparty")
