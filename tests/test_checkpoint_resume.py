"""Resumable DP-SGD: a run interrupted after any epoch and resumed from its checkpoint is the uninterrupted run.

The interruption is real (an exception out of the progress callback, as a
killed worker stops mid-run); the check is exact: same model bytes, same ε,
same accountant record. Checkpoints are safetensors, never pickles, and are
gone once the run completes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from pandacead_opacus import checkpoint  # noqa: E402
from pandacead_opacus.trainer import OpacusTrainer  # noqa: E402
from pandacead_opacus.training import train_arrays  # noqa: E402

from pandacead import datasets  # noqa: E402
from pandacead.jobs import DPParams, Job, ModelSpec  # noqa: E402
from pandacead.trainers import TrainerContext  # noqa: E402

pytestmark = pytest.mark.opacus
torch.set_num_threads(1)


class Interrupted(Exception):
    pass


def _setup(accountant: str, mode: str = "hooks") -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    info = datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], ".")
    arrays = dict(zip(("X_train", "y_train", "X_test", "y_test"), datasets.load(info, ".")))
    job = Job(job_id="resume-1", user_id="alice", epochs=5, batch_size=64, learning_rate=0.1,
              dp=DPParams(epsilon=3.0, delta=1e-5, accountant=accountant), model=ModelSpec(type="mlp", hidden=(8,)))
    ctx = TrainerContext(datasets={info.name: info}, state_dir=".", grad_sample_mode=mode, options={"home": "."})
    plan = OpacusTrainer().plan(job, ctx).to_dict()
    return job.to_dict(), plan, arrays


def _stop_after(epoch: int, events: list[dict[str, Any]]) -> Any:
    def progress(p: dict[str, Any]) -> None:
        events.append(p)
        if p.get("epoch") == epoch:
            raise Interrupted

    return progress


@pytest.mark.parametrize("accountant,mode", [("prv", "hooks"), ("rdp", "ghost")])
def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path: Path, accountant: str, mode: str) -> None:
    job, plan, arrays = _setup(accountant, mode)
    kw = {"noise_seed": 4242, "grad_sample_mode": plan["details"]["grad_sample_mode"]}
    reference = train_arrays(job, plan, arrays, 1, **kw)

    state = tmp_path / "state"
    events: list[dict[str, Any]] = []
    for stop in (1, 2, 4):  # handed back three times, each after a later epoch
        with pytest.raises(Interrupted):
            train_arrays(job, plan, arrays, 1, _stop_after(stop, events), checkpoint_dir=str(state), **kw)
        ckpt = checkpoint.job_dir(state, job["job_id"]) / checkpoint.FILE_NAME
        assert ckpt.is_file() and ckpt.stat().st_mode & 0o077 == 0
        assert ckpt.read_bytes()[:1] != b"\x80"  # not a pickle
    events.clear()
    resumed = train_arrays(job, plan, arrays, 1, events.append, checkpoint_dir=str(state), **kw)

    assert resumed["model"] == reference["model"]
    assert resumed["epsilon"] == reference["epsilon"]
    assert resumed["training_params"]["steps"] == reference["training_params"]["steps"]
    # It resumed after epoch 4 (the last checkpoint), it did not retrain from epoch 1.
    assert [e["epoch"] for e in events if e.get("epoch")] == [5]
    assert any(e.get("resumed_epoch") == 4 for e in events)
    assert not checkpoint.job_dir(state, job["job_id"]).exists()  # removed when the run completed


def test_a_checkpoint_of_another_seed_or_plan_is_ignored(tmp_path: Path) -> None:
    job, plan, arrays = _setup("rdp")
    state = tmp_path / "state"
    with pytest.raises(Interrupted):
        train_arrays(job, plan, arrays, 1, _stop_after(2, []), noise_seed=1, checkpoint_dir=str(state))
    other = train_arrays(job, plan, arrays, 1, noise_seed=2)
    events: list[dict[str, Any]] = []
    resumed = train_arrays(job, plan, arrays, 1, events.append, noise_seed=2, checkpoint_dir=str(state))
    assert resumed["model"] == other["model"]
    assert [e["epoch"] for e in events if e.get("epoch")] == [1, 2, 3, 4, 5]
