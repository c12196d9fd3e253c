"""The opacus trainer backend: pre-flight ε, refusals before data, real DP-SGD, safetensors models."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: E402
from pandacead_opacus import models, privacy  # noqa: E402
from pandacead_opacus.trainer import RDP_ORDERS, OpacusTrainer  # noqa: E402
from pandacead_opacus.training import train_arrays, train_nonprivate_arrays  # noqa: E402

from pandacead import datasets  # noqa: E402
from pandacead.errors import JobFailed, JobRejected  # noqa: E402
from pandacead.jobs import DPParams, Job, ModelSpec  # noqa: E402
from pandacead.trainers import DatasetInfo, TrainerContext, TrainResult  # noqa: E402

pytestmark = pytest.mark.opacus
torch.set_num_threads(1)

TRAINER = OpacusTrainer()


def ctx_for(*infos: DatasetInfo, home: Path | str = ".", noise_seed: int | None = None, **kw: Any) -> TrainerContext:
    options: dict[str, Any] = {"home": str(home)}
    if noise_seed is not None:
        options["noise_seed"] = noise_seed
    return TrainerContext(datasets={i.name: i for i in infos}, state_dir=str(home), options=options, **kw)


@pytest.fixture(scope="module")
def synthetic() -> DatasetInfo:
    return datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], ".")


@pytest.fixture(scope="module")
def arrays(synthetic: DatasetInfo) -> dict[str, np.ndarray]:
    return dict(zip(("X_train", "y_train", "X_test", "y_test"), datasets.load(synthetic, ".")))


def make_job(**kw: Any) -> Job:
    dp = kw.pop("dp", {})
    model = kw.pop("model", None)
    return Job(
        job_id=kw.pop("job_id", "j1"), user_id="alice", dp=DPParams(**dp),
        model=model or ModelSpec(), **kw,
    )


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if anything loads data."""
    calls: list[str] = []

    def boom(*a: Any, **k: Any) -> Any:
        calls.append("load")
        raise AssertionError("data was loaded")

    monkeypatch.setattr(datasets, "load", boom)
    return calls


# ----------------------------------------------------------------------------- plan


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_plan_epsilon_matches_independent_accountant(synthetic: DatasetInfo, accountant: str, no_data: list[str]) -> None:
    job = make_job(dp={"epsilon": 5.0, "delta": 1e-5, "noise_multiplier": 1.3, "accountant": accountant})
    plan = TRAINER.plan(job, ctx_for(synthetic))
    # Schedule: 800 training rows, batch 32 -> q = 1/25 = 32/800, 10 epochs x 25 steps.
    assert (plan.sample_rate, plan.steps, plan.n_train) == (0.04, 250, 800)
    assert plan.noise_multiplier == 1.3 and plan.accountant == accountant and plan.delta == 1e-5
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(1.3, 0.04, 250)]
    assert plan.epsilon == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-12)
    assert 0 < plan.epsilon <= 5.0
    assert list(plan.rdp) == [str(a) for a in RDP_ORDERS]
    assert not no_data


def test_rdp_orders_are_the_ledgers() -> None:
    from pandacead import accounting

    assert RDP_ORDERS == [float(a) for a in accounting.RDP_ORDERS]
    assert all(isinstance(a, float) for a in RDP_ORDERS)


def test_calibrated_sigma_meets_the_request(synthetic: DatasetInfo, no_data: list[str]) -> None:
    plan = TRAINER.plan(make_job(dp={"epsilon": 1.0, "delta": 1e-5}), ctx_for(synthetic))
    assert plan.accountant == "prv" and plan.details["calibrated"] is True
    assert 0.98 <= plan.epsilon <= 1.0
    assert 1.5 < plan.noise_multiplier < 4.0
    acc = PRVAccountant()
    acc.history = [(plan.noise_multiplier, plan.sample_rate, plan.steps)]
    assert acc.get_epsilon(delta=1e-5) == pytest.approx(plan.epsilon, rel=1e-12)
    rdp = TRAINER.plan(make_job(dp={"epsilon": 1.0, "delta": 1e-5, "accountant": "rdp"}), ctx_for(synthetic))
    # PRV is the tighter accountant: less noise for the same ε.
    assert rdp.noise_multiplier > plan.noise_multiplier
    assert 0.98 <= rdp.epsilon <= 1.0
    assert not no_data


def test_sigma_too_small_is_refused_before_any_data(synthetic: DatasetInfo, no_data: list[str]) -> None:
    job = make_job(dp={"epsilon": 1.0, "delta": 1e-5, "noise_multiplier": 0.5})
    with pytest.raises(JobRejected) as exc:
        TRAINER.plan(job, ctx_for(synthetic))
    msg = exc.value.message
    assert "σ = 0.5" in msg and "requested ε = 1" in msg
    eps = float(msg.split("gives ε = ")[1].split()[0])
    assert eps > 10  # both numbers are in the sentence
    assert not no_data


def test_other_refusals(synthetic: DatasetInfo, tmp_path: Path, no_data: list[str]) -> None:
    small = datasets.describe("small", {"kind": "synthetic", "rows": 100}, ".")  # n_train = 80
    ctx = ctx_for(synthetic, small)
    with pytest.raises(JobRejected, match=r"δ = 0.0125 is not below 1/n"):
        TRAINER.plan(make_job(dataset="small", dp={"delta": 1 / 80}), ctx)
    TRAINER.plan(make_job(dataset="small", dp={"delta": 0.012, "noise_multiplier": 5.0, "epsilon": 50}), ctx)
    with pytest.raises(JobRejected, match="more than this host's limit of 100"):
        TRAINER.plan(make_job(epochs=5), replace(ctx, max_steps=100))
    with pytest.raises(JobRejected, match="not supported"):
        TRAINER.plan(make_job(dp={"accountant": "gdp"}), ctx)
    with pytest.raises(JobRejected, match="not offered"):
        TRAINER.plan(make_job(dataset="nope"), ctx)
    with pytest.raises(JobRejected, match="for classification, but the job asks for regression"):
        TRAINER.plan(make_job(task="regression"), ctx)
    with pytest.raises(JobRejected, match="linear model has no hidden layers"):
        TRAINER.plan(make_job(model=ModelSpec(type="linear", hidden=(4,))), ctx)
    with pytest.raises(JobRejected, match="hidden sizes"):
        TRAINER.plan(make_job(model=ModelSpec(type="mlp", hidden=(0,))), ctx)
    with pytest.raises(JobRejected, match="budget is too low|cannot be computed"):
        TRAINER.plan(make_job(dp={"epsilon": 1e-9}), ctx)
    assert not no_data


def test_grad_sample_mode_setting(synthetic: DatasetInfo, no_data: list[str]) -> None:
    auto = ctx_for(synthetic, grad_sample_mode="auto")
    job = make_job(dp={"epsilon": 10.0, "noise_multiplier": 5.0, "accountant": "rdp"})
    assert TRAINER.plan(job, auto).details["grad_sample_mode"] == "hooks"  # expected batch 32
    big = replace(job, batch_size=200)
    assert TRAINER.plan(big, auto).details["grad_sample_mode"] == "ghost"
    assert TRAINER.plan(big, ctx_for(synthetic, grad_sample_mode="hooks")).details["grad_sample_mode"] == "hooks"
    with pytest.raises(JobRejected, match="'ew' is not supported"):
        TRAINER.plan(job, ctx_for(synthetic, grad_sample_mode="ew"))
    assert not no_data


def test_secure_mode_without_torchcsprng_is_refused(synthetic: DatasetInfo, no_data: list[str]) -> None:
    try:
        import torchcsprng  # noqa: F401
    except Exception:
        pass
    else:  # pragma: no cover
        pytest.skip("torchcsprng is installed")
    with pytest.raises(JobRejected, match="torchcsprng"):
        TRAINER.plan(make_job(), ctx_for(synthetic, secure_mode=True))
    assert not no_data


# ----------------------------------------------------------------------------- train


def test_default_job_at_epsilon_1(synthetic: DatasetInfo) -> None:
    """The acceptance job: synthetic, ε = 1, epochs 10, batch 32, lr 0.01, linear."""
    ctx = ctx_for(synthetic)
    job = make_job(dp={"epsilon": 1.0, "delta": 1e-5})
    plan = TRAINER.plan(job, ctx)
    events: list[dict[str, Any]] = []
    result = TRAINER.train(job, plan, ctx, events.append)
    assert 0 < result.epsilon <= 1.0 and result.epsilon == plan.epsilon
    assert result.accuracy is not None and result.accuracy >= 0.75
    assert result.n == 800 and result.metrics["n_test"] == 200
    tp = result.training_params
    assert tp["noise_multiplier"] == plan.noise_multiplier and 1.5 < tp["noise_multiplier"] < 4
    assert (tp["sample_rate"], tp["steps"], tp["accountant"], tp["clip"]) == (0.04, 250, "prv", 1.0)
    assert tp["architecture"]["hidden"] == [] and tp["grad_sample_mode"] == "hooks"
    assert result.provenance["dataset_version"] == synthetic.commitment and "dataset_digest" not in result.provenance
    assert result.provenance["opacus_version"] and result.provenance["torch_version"]
    assert events[0] == {"stage": "data_loaded"}, "the trainer announces its first data access"
    events = events[1:]
    assert [e["epoch"] for e in events] == list(range(1, 11))
    assert events[-1]["epsilon"] == result.epsilon and events[-1]["epsilon_exact"]
    eps = [e["epsilon"] for e in events]
    assert eps == sorted(eps) and 0 < eps[0] and all(e <= plan.epsilon for e in eps)
    assert all(e["loss"] > 0 for e in events)
    json.dumps(result.to_dict())  # crosses the worker boundary as JSON
    model, arch = models.load_model(result.model)
    _, _, X_test, y_test = datasets.load(synthetic, ".")
    assert float(np.mean(models.predict(model, arch, X_test) == y_test)) == result.accuracy
    artifact = {"model": base64.b64encode(result.model).decode()}
    assert models.predict_from_artifact(artifact, [[3, 3] + [0] * 8, [-3, -3] + [0] * 8]).tolist() == [1, 0]


def _plan_dict(info: DatasetInfo, job: Job, **ctx_kw: Any) -> dict[str, Any]:
    return TRAINER.plan(job, ctx_for(info, **ctx_kw)).to_dict()


def test_noise_is_applied_secret_and_seeded(synthetic: DatasetInfo, arrays: dict[str, np.ndarray]) -> None:
    job = make_job(epochs=2, batch_size=64, dp={"epsilon": 2.0, "delta": 1e-5, "accountant": "rdp"},
                   model=ModelSpec(type="mlp", hidden=(8,)))
    plan = _plan_dict(synthetic, job)
    a = train_arrays(job.to_dict(), plan, arrays, 1, noise_seed=123)
    b = train_arrays(job.to_dict(), plan, arrays, 1, noise_seed=123)
    assert a["model"] == b["model"]  # reproducible on the host, given its secret seed
    assert a["training_params"]["noise_source"] == "secret per-job seed"
    # The buyer's job.seed does not determine the noise or the batches.
    c = train_arrays(job.to_dict(), plan, arrays, 1, noise_seed=124)
    assert c["model"] != a["model"]
    d = train_arrays(job.to_dict(), plan, arrays, 1)
    assert d["model"] != a["model"] and d["training_params"]["noise_source"] == "os entropy"
    # Noise (and clipping) move the weights away from the non-private run of the same job.
    ref = train_nonprivate_arrays(job.to_dict(), plan, arrays, 1)
    wa = models.load_model(a["model"])[0].state_dict()
    wr = models.load_model(ref["model"])[0].state_dict()
    assert max(float((wa[k] - wr[k]).abs().max()) for k in wa) > 1e-3


def test_noise_has_the_planned_scale(tmp_path: Path) -> None:
    """All-zero features: weight gradients are 0, so one step moves the weights by noise alone.

    Opacus adds N(0, (σ·C)²) to the summed clipped gradients and divides by the
    expected batch size, so after one step from zero init each weight is
    -lr·N(0, (σC)²)/B.
    """
    n, d = 125, 400  # 100 training rows
    y = np.arange(n) % 2
    np.savez(tmp_path / "z.npz", X=np.zeros((n, d)), y=y)
    info = datasets.describe("zeros", {"kind": "npz", "path": "z.npz", "task": "classification", "rows": 125,
                                           "holdout_fraction": 0.2}, tmp_path)
    sigma, clip, lr = 2.0, 0.5, 1.0
    job = make_job(dataset="zeros", epochs=1, batch_size=100, learning_rate=lr,
                   dp={"epsilon": 100.0, "delta": 1e-3, "clip": clip, "noise_multiplier": sigma, "accountant": "rdp"})
    ctx = ctx_for(info, home=tmp_path, noise_seed=2**62 + 5)
    plan = TRAINER.plan(job, ctx)
    assert (plan.sample_rate, plan.steps) == (1.0, 1)
    result = TRAINER.train(job, plan, ctx, lambda e: None)
    assert result.training_params["noise_source"] == "secret per-job seed"
    model, _ = models.load_model(result.model)
    w = model[0].weight.detach().numpy().ravel()
    expected = lr * sigma * clip / 100
    assert abs(w.mean()) < 4 * expected / np.sqrt(d)
    assert w.std() == pytest.approx(expected, rel=0.15)


def test_csv_dataset_multiclass_mlp(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 600
    X = rng.standard_normal((n, 4))
    names = np.array(["setosa", "versicolor", "virginica"])
    y = names[np.argmax(X[:, :3] + 0.2 * rng.standard_normal((n, 3)), axis=1)]
    lines = ["f1,f2,f3,f4,species"] + [",".join(f"{v:.5f}" for v in x) + f",{t}" for x, t in zip(X, y)]
    (tmp_path / "iris.csv").write_text("\n".join(lines) + "\n")
    info = datasets.describe(
        "iris", {"kind": "csv", "path": "iris.csv", "label": "species", "task": "classification", "public": True}, tmp_path
    )
    assert info.n_classes == 3
    ctx = ctx_for(info, home=tmp_path)
    job = make_job(dataset="iris", epochs=8, batch_size=40, learning_rate=0.2,
                   dp={"epsilon": 8.0, "delta": 1e-4, "accountant": "rdp"},
                   model=ModelSpec(type="mlp", hidden=(16, 8)))
    plan = TRAINER.plan(job, ctx)
    result = TRAINER.train(job, plan, ctx, lambda e: None)
    assert result.accuracy is not None and result.accuracy > 0.6  # chance is 1/3
    assert 0 < result.epsilon <= plan.epsilon <= 8.0
    model, arch = models.load_model(result.model)
    assert arch["hidden"] == [16, 8] and arch["output_dim"] == 3 and arch["head"] == "softmax_logits"
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    assert set(models.predict(model, arch, X[:50]).tolist()) <= {0, 1, 2}


def test_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 1000
    X = rng.standard_normal((n, 3))
    y = X @ np.array([0.8, -0.5, 0.3]) + 0.1 * rng.standard_normal(n)
    np.savez(tmp_path / "r.npz", X=X, y=y)
    info = datasets.describe("r", {"kind": "npz", "path": "r.npz", "task": "regression", "public": True}, tmp_path)
    ctx = ctx_for(info, home=tmp_path)
    job = make_job(dataset="r", task="regression", epochs=10, batch_size=50, learning_rate=0.1,
                   dp={"epsilon": 4.0, "delta": 1e-5, "accountant": "rdp"})
    result = TRAINER.train(job, TRAINER.plan(job, ctx), ctx, lambda e: None)
    assert result.accuracy is None
    assert result.metrics["r2"] > 0.8 and result.metrics["mse"] < 0.2
    assert result.training_params["loss"] == "MSELoss"


@pytest.fixture(scope="module")
def small_mlp_run(synthetic: DatasetInfo, arrays: dict[str, np.ndarray]) -> tuple[Job, dict[str, Any], dict[str, Any]]:
    job = make_job(epochs=1, batch_size=100, dp={"epsilon": 10.0, "noise_multiplier": 1.0, "accountant": "rdp"},
                   model=ModelSpec(type="mlp", hidden=(8,)))
    plan = _plan_dict(synthetic, job)
    return job, plan, train_arrays(job.to_dict(), plan, arrays, 1, noise_seed=7)


@pytest.mark.parametrize("mode", ["ghost", "functorch"])
def test_grad_sample_modes_agree_with_hooks(small_mlp_run: Any, arrays: dict[str, np.ndarray], mode: str) -> None:
    job, plan, hooks_run = small_mlp_run
    hooks = models.load_model(hooks_run["model"])[0].state_dict()
    other = train_arrays(job.to_dict(), plan, arrays, 1, grad_sample_mode=mode, noise_seed=7)
    assert other["training_params"]["grad_sample_mode"] == mode
    assert other["epsilon"] == hooks_run["epsilon"]
    w = models.load_model(other["model"])[0].state_dict()
    for k in hooks:
        torch.testing.assert_close(w[k], hooks[k], atol=1e-5, rtol=1e-4)


def test_train_refuses_a_run_that_does_not_match_its_plan(synthetic: DatasetInfo, arrays: dict[str, np.ndarray]) -> None:
    job = make_job(epochs=1, dp={"accountant": "rdp"})
    plan = _plan_dict(synthetic, job)
    # The true row count is private (add/remove neighbours): a run on 700 rows keeps the
    # schedule, sample rate and normaliser of the plan's public count (800), it is not refused.
    fewer = train_arrays(job.to_dict(), plan, {**arrays, "X_train": arrays["X_train"][:700], "y_train": arrays["y_train"][:700]}, 1)
    assert (fewer["training_params"]["steps"], fewer["training_params"]["expected_batch_size"]) == (
        plan["steps"], plan["details"]["expected_batch_size"])
    assert fewer["n"] == 800, "n is the public count the run was planned with"
    with pytest.raises(JobFailed, match="more than the planned"):
        train_arrays(job.to_dict(), {**plan, "epsilon": plan["epsilon"] * 0.9}, arrays, 1)
    with pytest.raises(JobFailed, match="schedule does not match"):
        train_arrays({**job.to_dict(), "batch_size": 16}, plan, arrays, 1)


def test_train_result_shape_for_other_backends(small_mlp_run: Any) -> None:
    out = small_mlp_run[2]
    assert isinstance(out["model"], bytes)
    TrainResult(**out)  # exactly the TrainResult fields
    json.dumps({k: v for k, v in out.items() if k != "model"})


def test_load_model_checks_the_file() -> None:
    arch = models.architecture(model_type="mlp", hidden=[4], n_features=3, task="regression", n_classes=None)
    good = models.save_model(models.build_model(arch), arch)
    model, back = models.load_model(good)
    assert back == arch
    wrong = models.save_model(models.build_model({**arch, "hidden": [5]}), arch)
    with pytest.raises(ValueError, match="shape"):
        models.load_model(wrong)
    with pytest.raises(ValueError):
        models.load_model(b"not a safetensors file")


# ----------------------------------------------------------------------------- plugin


def test_plugin_import_is_light_and_registers() -> None:
    code = (
        "import sys, pandacead_opacus as p; got = []; p.pandacead_register_trainers(got.append); "
        "assert [t.name for t in got] == ['opacus'] and got[0].isolated; "
        "heavy = [m for m in ('torch', 'opacus') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_schedule_formula() -> None:
    s = privacy.poisson_schedule(800, 32, 10)
    assert (s["steps_per_epoch"], s["sample_rate"], s["steps"]) == (25, 0.04, 250)
    s = privacy.poisson_schedule(1000, 30, 2)  # ceil(1000/30) = 34 batches
    assert (s["steps_per_epoch"], s["sample_rate"], s["steps"]) == (34, 1 / 34, 68)
    # Opacus's len(DPDataLoader) = int(1/(1/93)) = 92: the plan follows Opacus exactly.
    s = privacy.poisson_schedule(93, 1, 1)
    assert (s["steps_per_epoch"], s["sample_rate"]) == (92, 1 / 92)
    assert round(1 / s["sample_rate"]) == s["steps_per_epoch"]
