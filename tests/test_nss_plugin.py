"""The example third-party trainer `nss` (plugins/pandacead_nss): contract, accounting, accuracy.

The accounting is checked independently of the plugin's own accountant: the
sensitivities are re-derived here, δ(ε) of the Gaussian mechanism is computed
with scipy, and the closed form itself is checked against a direct numerical
integration of the two output densities.
"""

from __future__ import annotations

import dataclasses
import json
import math
from importlib.metadata import entry_points

import numpy as np
import pytest

from pandacead.errors import JobFailed, JobRejected
from pandacead.testing import (
    TrainerContract,
    check_trainer,
    make_context,
    make_job,
    no_data_access,
)
from pandacead.trainers import DatasetInfo, TrainerContext

try:
    from pandacead_nss import accounting
    from pandacead_nss.trainer import NSSTrainer, augment
except ImportError as exc:  # pragma: no cover - a setup problem, say how to fix it
    raise ImportError(f"{exc}: install the example plugin with `pip install -e plugins/pandacead_nss`") from exc

ORDERS = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0)


def nss_job(**kw):
    dp = kw.pop("dp", {})
    return make_job(job_id=kw.pop("job_id", "nss-test"), backend="nss", dp={"epsilon": 1.0, "delta": 1e-5, **dp}, **kw)


@pytest.fixture
def ctx(tmp_path) -> TrainerContext:
    return make_context(tmp_path, ["synthetic"])


def plan_only_ctx(tmp_path, **info_kw) -> TrainerContext:
    """A context whose dataset exists only as metadata: good for plan(), which must not read data."""
    fields = dict(name="meta", task="classification", n_rows=10_000, n_features=10, n_classes=2, digest="sha256:" + "0" * 64,
                  source={"kind": "synthetic"}, public=True)
    fields.update(info_kw)
    info = DatasetInfo(**fields)
    return TrainerContext(datasets={info.name: info}, state_dir=str(tmp_path))


def _norm():
    return pytest.importorskip("scipy.stats", reason="the independent accounting checks use scipy").norm


def reference_delta(eps: float, mu: float) -> float:
    """Balle & Wang (2018), Theorem 8, with scipy's normal CDF."""
    norm = _norm()
    return float(norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu))


def total_mu(plan, clip: float, label_bound: float) -> float:
    """μ of the combined release, from the plan's σ's and sensitivities derived here (not the plugin's)."""
    bx = math.sqrt(clip**2 + clip**2)  # ‖(clip_C(x), C)‖ ≤ √2·C
    sens_xtx = bx**2  # ‖x̃x̃ᵀ‖_F = ‖x̃‖²
    sens_xty = bx * label_bound  # ‖x̃tᵀ‖_F = ‖x̃‖‖t‖
    return math.hypot(sens_xtx / plan.details["sigma_xtx"], sens_xty / plan.details["sigma_xty"])


# --------------------------------------------------------------------------- packaging


def test_entry_point_is_installed():
    eps = {ep.name: ep for ep in entry_points(group="pandacead")}
    assert "nss" in eps, "pandacead-nss is not installed (pip install -e plugins/pandacead_nss)"
    assert eps["nss"].value == "pandacead_nss"
    assert eps["nss"].dist is not None and eps["nss"].dist.metadata["Name"] == "pandacead-nss"


def test_plugin_manager_loads_it():
    from pandacead.plugins import load_plugins

    plugins = load_plugins()
    info = plugins.infos["nss"]
    assert info.error is None, info.error
    assert info.dist == "pandacead-nss" and info.version
    assert info.hooks == ["pandacead_register_trainers"]
    assert info.trainers == ["nss"]
    trainer = plugins.trainers["nss"]
    assert trainer.name == "nss" and trainer.isolated is False


def test_deny_list_switches_it_off():
    from pandacead.plugins import Plugins

    plugins = Plugins(deny=["nss"])
    plugins.load_entry_points()
    assert "nss" not in plugins.trainers
    assert plugins.infos["nss"].enabled is False


# --------------------------------------------------------------------------- contract


class TestNSSContract(TrainerContract):
    @pytest.fixture
    def trainer(self):
        return NSSTrainer()

    @pytest.fixture
    def job(self):
        return nss_job(seed=3)


@pytest.mark.parametrize("accountant", [None, "rdp"])
@pytest.mark.parametrize("epsilon", [0.5, 3.0])
def test_check_trainer_passes(ctx, accountant, epsilon):
    check_trainer(NSSTrainer(), nss_job(dp={"epsilon": epsilon, "accountant": accountant}), ctx)


def regression_ctx(tmp_path, rows: int = 2000, label_bound: float = 2.0) -> TrainerContext:
    """A CSV regression dataset: y = x·w + noise, |y| mostly below `label_bound`."""
    from pandacead import datasets

    rng = np.random.default_rng(11)
    X = rng.standard_normal((rows, 5))
    w = np.array([0.8, -0.5, 0.3, 0.0, 0.2])
    y = X @ w + 0.3 + 0.05 * rng.standard_normal(rows)
    lines = ["a,b,c,d,e,y"] + [",".join(f"{v:.6f}" for v in (*x, t)) for x, t in zip(X, y)]
    (tmp_path / "reg.csv").write_text("\n".join(lines) + "\n")
    spec = {"kind": "csv", "path": "reg.csv", "label": "y", "task": "regression", "public": True}
    info = datasets.describe("reg", spec, tmp_path)
    assert info.task == "regression" and info.n_features == 5
    return TrainerContext(datasets={"reg": info}, state_dir=str(tmp_path),
                          options={"home": str(tmp_path), "nss": {"label_bound": label_bound}})


def test_regression_keeps_the_contract_and_learns(tmp_path):
    ctx = regression_ctx(tmp_path)
    job = nss_job(dataset="reg", task="regression", dp={"epsilon": 5.0, "clip": 3.0})
    check_trainer(NSSTrainer(), job, ctx)
    plan = NSSTrainer().plan(job, ctx)
    assert plan.details["label_bound"] == 2.0
    # the label bound enters the X̃ᵀy sensitivity: μ computed here with B_y = 2 matches the plan's
    assert total_mu(plan, clip=3.0, label_bound=2.0) == pytest.approx(plan.details["mu"], rel=1e-9)
    r2 = []
    for seed in range(3):
        result = NSSTrainer().train(dataclasses.replace(job, seed=seed), plan, ctx, lambda e: None)
        assert result.accuracy is None and {"mse", "r2"} <= set(result.metrics)
        r2.append(result.metrics["r2"])
    assert np.mean(r2) > 0.9, r2


# --------------------------------------------------------------------------- accounting


@pytest.mark.parametrize(
    "epsilon,delta",
    [(0.1, 1e-5), (0.5, 1e-6), (1.0, 1e-5), (2.0, 1e-8), (8.0, 1e-5), (50.0, 1e-7), (100.0, 1e-5)],
)
def test_calibrated_noise_meets_the_request_exactly(tmp_path, epsilon, delta):
    ctx = plan_only_ctx(tmp_path, n_rows=20_000)
    job = nss_job(dataset="meta", dp={"epsilon": epsilon, "delta": delta, "clip": 1.7})
    with no_data_access():
        plan = NSSTrainer().plan(job, ctx)
    assert plan.epsilon <= epsilon and plan.delta <= delta
    assert plan.epsilon >= epsilon * (1 - 1e-6), "the plan charges less than it could: the noise is not calibrated"
    mu = total_mu(plan, clip=1.7, label_bound=1.0)
    assert mu == pytest.approx(plan.details["mu"], rel=1e-9)
    # The release is (ε, δ)-DP for the requested pair and for the planned ε ...
    assert reference_delta(epsilon, mu) <= delta
    assert reference_delta(plan.epsilon, mu) <= delta * (1 + 1e-6)
    # ... and not wastefully noisy: 0.1% less noise would break the request.
    assert reference_delta(epsilon, mu * 1.001) > delta
    # The RDP curve is that of a Gaussian mechanism with this μ, at the agreed orders.
    assert set(plan.rdp) == {str(a) for a in ORDERS}
    for order, value in plan.rdp.items():
        assert value == pytest.approx(float(order) * mu**2 / 2, rel=1e-12)


@pytest.mark.parametrize("epsilon,delta", [(0.3, 1e-5), (1.0, 1e-5), (4.0, 1e-7)])
def test_rdp_accountant_is_sound_and_never_cheaper(tmp_path, epsilon, delta):
    ctx = plan_only_ctx(tmp_path, n_rows=20_000)
    exact = NSSTrainer().plan(nss_job(dataset="meta", dp={"epsilon": epsilon, "delta": delta}), ctx)
    rdp = NSSTrainer().plan(nss_job(dataset="meta", dp={"epsilon": epsilon, "delta": delta, "accountant": "rdp"}), ctx)
    assert rdp.accountant == "rdp" and exact.accountant == "analytic-gaussian"
    mu = total_mu(rdp, 1.0, 1.0)
    assert mu < total_mu(exact, 1.0, 1.0)  # the RDP conversion is looser: more noise
    assert reference_delta(epsilon, mu) <= delta
    # Conversion recomputed here (Balle et al. 2020) from the plan's own curve:
    conv = min(v + math.log((float(a) - 1) / float(a)) - (math.log(delta) + math.log(float(a))) / (float(a) - 1)
               for a, v in rdp.rdp.items())
    assert conv <= epsilon + 1e-9 and rdp.epsilon <= epsilon


@pytest.mark.parametrize("mu,eps", [(0.3, 0.5), (1.0, 1.0), (2.5, 4.0), (5.0, 10.0)])
def test_closed_form_matches_numerical_integration(mu, eps):
    """δ(ε) = ∫ max(0, p(x) − e^ε q(x)) dx for p = N(μ, 1), q = N(0, 1): checks the formula itself."""
    quad = pytest.importorskip("scipy.integrate").quad
    norm = _norm()

    def gap(x):
        return max(0.0, norm.pdf(x, loc=mu) - math.exp(eps) * norm.pdf(x))

    boundary = eps / mu + mu / 2  # p > e^ε q exactly for x beyond this point
    numeric, _ = quad(gap, boundary, boundary + 40, limit=200, epsabs=1e-14)
    assert accounting.gaussian_delta(eps, mu) == pytest.approx(numeric, rel=1e-6, abs=1e-13)
    assert reference_delta(eps, mu) == pytest.approx(numeric, rel=1e-6, abs=1e-13)


def test_preprocessing_respects_the_sensitivity_bounds():
    """Every row the trainer can produce (even from hostile input) stays within Δ₁ and Δ₂."""
    rng = np.random.default_rng(0)
    clip = 0.7
    X = rng.standard_normal((500, 6)) * rng.choice([1e-3, 1.0, 1e3, 1e12], size=(500, 1))
    X[0] = np.nan
    X[1, 2] = np.inf
    X[2] = 0.0
    y = rng.standard_normal(500) * 1e6
    y[3] = np.nan
    A = augment(X, clip)
    job = nss_job(task="regression")
    T = NSSTrainer._targets(job, y, 1, 2.5)
    delta1 = 2 * clip**2
    delta2 = math.sqrt(2) * clip * 2.5
    iu = np.triu_indices(A.shape[1])
    for a, t in zip(A, T):
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(t))
        assert np.linalg.norm(np.outer(a, a)[iu]) <= delta1
        assert np.linalg.norm(np.outer(a, t)) <= delta2
    one_hot = NSSTrainer._targets(nss_job(), np.array([0, 1, 2, 7, -1]), 3, 1.0)
    assert np.all(np.linalg.norm(one_hot, axis=1) <= 1.0)


def test_noise_multiplier_from_the_job(tmp_path):
    ctx = plan_only_ctx(tmp_path, n_rows=20_000)
    plan = NSSTrainer().plan(nss_job(dataset="meta", dp={"epsilon": 5.0, "noise_multiplier": 2.0}), ctx)
    mu = total_mu(plan, 1.0, 1.0)
    assert mu == pytest.approx(0.5, rel=1e-9)
    assert reference_delta(plan.epsilon, mu) <= 1e-5 * (1 + 1e-6)
    assert plan.epsilon < 5.0
    with pytest.raises(JobRejected, match="noise multiplier"):
        NSSTrainer().plan(nss_job(dataset="meta", dp={"epsilon": 0.5, "noise_multiplier": 0.5}), ctx)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "job_kw,info_kw,match",
    [
        ({"dp": {"delta": 5e-3}}, {"n_rows": 500}, "below 1/n"),
        ({"dp": {"epsilon": 1e-4}}, {}, "too small"),
        ({"model": dataclasses.replace(make_job().model, type="mlp", hidden=(8,))}, {}, "linear"),
        ({"dataset": "nope"}, {}, "not offered"),
        ({"task": "regression"}, {}, "is for classification"),
    ],
)
def test_refuses_before_reading_data(tmp_path, job_kw, info_kw, match):
    ctx = plan_only_ctx(tmp_path, **info_kw)
    job = nss_job(**{"dataset": "meta", **job_kw})
    with no_data_access() as calls, pytest.raises(JobRejected, match=match):
        NSSTrainer().plan(job, ctx)
    assert not calls


def test_train_refuses_a_plan_smaller_than_its_cost(ctx):
    job = nss_job()
    plan = NSSTrainer().plan(job, ctx)
    shrunk = dataclasses.replace(plan, epsilon=plan.epsilon / 2)
    with no_data_access() as calls, pytest.raises(JobFailed, match="changed"):
        NSSTrainer().train(job, shrunk, ctx, lambda e: None)
    assert not calls


# --------------------------------------------------------------------------- training


def test_accuracy_is_sane_on_synthetic(ctx):
    trainer = NSSTrainer()
    accs = {}
    for eps in (1.0, 10.0):
        runs = []
        for seed in range(5):
            job = nss_job(seed=seed, dp={"epsilon": eps})
            events = []
            result = trainer.train(job, trainer.plan(job, ctx), ctx, events.append)
            assert events and events[-1]["epoch"] == events[-1]["epochs"]
            assert result.metrics["accuracy"] == result.accuracy
            runs.append(result.accuracy)
        accs[eps] = float(np.mean(runs))
    assert accs[1.0] >= 0.8, accs
    assert accs[10.0] >= 0.92, accs
    assert accs[10.0] >= accs[1.0] - 0.02


def test_model_is_described_safetensors(ctx):
    from safetensors.numpy import load

    job = nss_job()
    result = NSSTrainer().train(job, NSSTrainer().plan(job, ctx), ctx, lambda e: None)
    tensors = load(result.model)
    assert tensors["weight"].shape == (1, 10) and tensors["bias"].shape == (1,)
    header_len = int.from_bytes(result.model[:8], "little")
    meta = json.loads(result.model[8 : 8 + header_len])["__metadata__"]
    arch = json.loads(meta["architecture"])
    assert meta["backend"] == "nss" and meta["mechanism"] == "gaussian-sufficient-statistics"
    assert arch["in_features"] == 10 and arch["task"] == "classification" and arch["input_row_clip"] == 1.0
    assert float(meta["epsilon"]) == result.epsilon
    json.dumps(result.to_dict(), allow_nan=False)


def test_noise_comes_from_the_secret_seed_never_from_job_seed(tmp_path):
    """Channel 2 of issue 12: noise from `job.seed` let a buyer regenerate and subtract it."""
    from pandacead.testing import with_noise_seed

    trainer = NSSTrainer()
    ctx = make_context(tmp_path, ["synthetic"])

    def run(job, c):
        return trainer.train(job, trainer.plan(job, c), c, lambda e: None).model

    j1, j1_other = nss_job(job_id="a", seed=1), nss_job(job_id="b", seed=1)
    # Same secret seed: reproducible (crash recovery retrains identically).
    assert run(j1, with_noise_seed(ctx, j1)) == run(j1, with_noise_seed(ctx, j1))
    # Same buyer seed, different job ids: different noise.
    assert run(j1, with_noise_seed(ctx, j1)) != run(j1_other, with_noise_seed(ctx, j1_other))
    # The buyer's seed alone does not fix the noise: a fixed secret seed with another job.seed...
    fixed = dataclasses.replace(ctx, options={**ctx.options, "noise_seed": 12345})
    assert run(nss_job(seed=1), fixed) == run(nss_job(seed=2), fixed)
    # ... and no secret seed (outside the pipeline) or secure mode: OS entropy, never job.seed.
    assert run(j1, ctx) != run(j1, ctx)
    secure = dataclasses.replace(with_noise_seed(ctx, j1), secure_mode=True)
    assert run(j1, secure) != run(j1, secure)
