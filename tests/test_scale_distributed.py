"""One job on two processes (Opacus DPDDP over gloo): same ε as one process, a model as good."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from conftest import drop, job, ledger, make_home, outcomes, run_once

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from pandacead_opacus import models  # noqa: E402
from pandacead_opacus.distributed import rank_seed  # noqa: E402
from pandacead_opacus.trainer import OpacusTrainer  # noqa: E402
from pandacead_opacus.training import _derived_seed, secret_generators, train_arrays  # noqa: E402

from pandacead import datasets  # noqa: E402
from pandacead.jobs import DPParams, Job, ModelSpec  # noqa: E402
from pandacead.trainers import DatasetInfo, TrainerContext  # noqa: E402

pytestmark = pytest.mark.opacus
TRAINER = OpacusTrainer()


@pytest.fixture(scope="module")
def synthetic() -> DatasetInfo:
    return datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], ".")


@pytest.fixture(scope="module")
def arrays(synthetic: DatasetInfo) -> dict[str, np.ndarray]:
    return dict(zip(("X_train", "y_train", "X_test", "y_test"), datasets.load(synthetic, ".")))


def _job(**kw: Any) -> Job:
    return Job(job_id="ddp1", user_id="alice", dp=DPParams(epsilon=2.0, delta=1e-5),
               model=ModelSpec(type="mlp", hidden=(8,)), epochs=3, batch_size=64, learning_rate=0.5, **kw)


def _ctx(info: DatasetInfo, **kw: Any) -> TrainerContext:
    return TrainerContext(datasets={info.name: info}, state_dir=".", options={"home": "."}, **kw)


def test_rank_seeds_are_secret_distinct_and_not_the_buyers() -> None:
    seeds = {rank_seed(7, purpose, r) for purpose in ("poisson", "noise", "global") for r in range(4)}
    assert len(seeds) == 12  # no two ranks (or purposes) share a stream
    assert rank_seed(7, "poisson", 0) != _derived_seed(7, "poisson")
    assert rank_seed(8, "poisson", 1) != rank_seed(7, "poisson", 1)  # a different job secret, other streams


def test_noise_generator_is_on_the_training_device() -> None:
    sampling, noise, source = secret_generators(5, "cpu")
    assert noise.device == torch.device("cpu") and sampling.device == torch.device("cpu")
    again = secret_generators(5, "cpu")[1]
    assert torch.equal(torch.randn(4, generator=noise), torch.randn(4, generator=again))


@pytest.mark.slow
def test_two_process_dpddp_spends_the_planned_epsilon_and_trains_as_well(
    synthetic: DatasetInfo, arrays: dict[str, np.ndarray]
) -> None:
    job = _job()
    plan = TRAINER.plan(job, _ctx(synthetic, grad_sample_mode="hooks")).to_dict()
    one = train_arrays(job.to_dict(), plan, arrays, 1, noise_seed=11)
    events: list[dict[str, Any]] = []
    two = train_arrays(job.to_dict(), plan, arrays, 1, events.append, noise_seed=11, world_size=2)
    # The same mechanism, so the same accountant history and the same ε, on rank 0.
    assert two["epsilon"] == one["epsilon"] == plan["epsilon"]
    tp = two["training_params"]
    assert (tp["noise_multiplier"], tp["sample_rate"], tp["steps"]) == (
        plan["noise_multiplier"], plan["sample_rate"], plan["steps"])
    assert tp["world_size"] == 2 and tp["expected_batch_size"] == one["training_params"]["expected_batch_size"]
    assert one["accuracy"] >= 0.75 and two["accuracy"] >= one["accuracy"] - 0.05
    assert [e["epoch"] for e in events] == [1, 2, 3] and events[-1]["epsilon_exact"]
    assert two["n"] == one["n"] == plan["n_train"]
    model, arch = models.load_model(two["model"])  # a CPU safetensors model, as from one process
    assert float(np.mean(models.predict(model, arch, arrays["X_test"]) == arrays["y_test"])) == two["accuracy"]
    json.dumps({k: v for k, v in two.items() if k != "model"})
    # Secret: another job secret gives another model (sampling and noise move with it).
    three = train_arrays(job.to_dict(), plan, arrays, 1, noise_seed=12, world_size=2)
    assert three["model"] != two["model"]


@pytest.mark.slow
def test_two_processes_add_the_noise_once_with_the_global_scale(tmp_path: Any) -> None:
    """Attack: zero features make every gradient 0, so one step moves the weights by noise alone.

    One noise draw N(0, (σC)²) divided by the global expected batch B gives
    weights of std lr·σC/B. Noise added on both ranks would give √2 times
    that; dividing by the per-rank batch, twice that.
    """
    n, d = 125, 400  # 100 training rows, q = 1, one step
    y = np.arange(n) % 2
    np.savez(tmp_path / "z.npz", X=np.zeros((n, d)), y=y)
    info = datasets.describe("zeros", {"kind": "npz", "path": "z.npz", "task": "classification", "rows": n,
                                           "holdout_fraction": 0.2}, tmp_path)
    sigma, clip, lr = 2.0, 0.5, 1.0
    job = Job(job_id="ddp0", user_id="alice", dataset="zeros", epochs=1, batch_size=100, learning_rate=lr,
              dp=DPParams(epsilon=100.0, delta=1e-3, clip=clip, noise_multiplier=sigma, accountant="rdp"),
              model=ModelSpec())
    plan = TRAINER.plan(job, _ctx(info)).to_dict()
    assert (plan["sample_rate"], plan["steps"]) == (1.0, 1)
    arrs = dict(zip(("X_train", "y_train", "X_test", "y_test"), datasets.load(info, tmp_path)))
    result = train_arrays(job.to_dict(), plan, arrs, 1, noise_seed=2**62 + 5, world_size=2)
    model, _ = models.load_model(result["model"])
    w = model[0].weight.detach().numpy().ravel()
    assert w.std() == pytest.approx(lr * sigma * clip / 100, rel=0.15)


def test_batch_memory_manager_splits_batches_without_changing_the_privacy(
    synthetic: DatasetInfo, arrays: dict[str, np.ndarray]
) -> None:
    job = Job(job_id="bmm", user_id="alice", dp=DPParams(epsilon=2.0, delta=1e-5, accountant="rdp"),
              model=ModelSpec(), epochs=1, batch_size=200, learning_rate=0.5)
    plan = TRAINER.plan(job, _ctx(synthetic, grad_sample_mode="hooks")).to_dict()
    split = train_arrays(job.to_dict(), plan, arrays, 1, noise_seed=3, max_physical_batch_size=16)
    whole = train_arrays(job.to_dict(), plan, arrays, 1, noise_seed=3)
    assert split["training_params"]["steps"] == whole["training_params"]["steps"] == plan["steps"]
    assert split["epsilon"] == whole["epsilon"] == plan["epsilon"]
    assert split["training_params"]["max_physical_batch_size"] == 16
    # Same Poisson batches and the same noise, summed in pieces: the same model up to float rounding.
    a, _ = models.load_model(split["model"])
    b, _ = models.load_model(whole["model"])
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(va, vb, atol=1e-4), ka


@pytest.mark.slow
def test_a_daemon_with_world_size_2_publishes_a_job_charged_once(tmp_path: Any) -> None:
    home = make_home(tmp_path / "h", backend="opacus")
    cfg = home / "pandacead.toml"
    cfg.write_text(cfg.read_text().replace("torch_threads = 1", "torch_threads = 1\nworld_size = 2", 1))
    drop(home, "d.json", job("d", epochs=2, batch_size=64, learning_rate=0.5,
                              dp={"enabled": True, "epsilon": 2.0, "delta": 1e-5, "clip": 1.0, "accountant": "rdp"}))
    r = run_once(home, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert outcomes(home) == {"d": "artifact"}
    art = json.loads((home / "outbox" / "d.json").read_bytes())
    assert art["training_params"]["world_size"] == 2
    spend = ledger(home).spend("d")
    assert spend["state"] == "committed" and spend["epsilon"] == pytest.approx(art["epsilon"])
