"""[trainer] device: selection, the worker's memory limit (never RLIMIT_AS where CUDA may start), admission by memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import make_home

from pandacead import devices
from pandacead.config import DEFAULTS, load_settings
from pandacead.errors import ConfigError, JobFailed, JobRejected
from pandacead.worker import WorkerProcess


def _address_space_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return line.split()[3]
    raise AssertionError("no address-space line")


@pytest.mark.parametrize(
    ("device", "cuda_seen", "kind"),
    [("cpu", True, "rlimit_as"), ("cuda", False, "rss_watch"), ("cuda:1", False, "rss_watch"),
     ("auto", True, "rss_watch"), ("auto", False, "rlimit_as")],
)
def test_memory_limit_kind_follows_the_device(device: str, cuda_seen: bool, kind: str) -> None:
    limit = devices.memory_limit({"device": device, "memory_limit_mb": 2048}, cuda_seen=cuda_seen)
    assert limit == {"kind": kind, "bytes": 2048 * 2**20}
    assert devices.memory_limit({"device": device, "memory_limit_mb": 0}, cuda_seen)["kind"] == "none"


@pytest.mark.parametrize(("device", "expected"), [("cuda", "unlimited"), ("cpu", str(3072 * 2**20))])
def test_a_cuda_worker_runs_without_rlimit_as(tmp_path: Path, device: str, expected: str) -> None:
    """The real worker process: RLIMIT_AS on the CPU, none (a resident-memory watch) on CUDA."""
    home = make_home(tmp_path / "h")
    cfg = home / "pandacead.toml"
    cfg.write_text(cfg.read_text().replace(
        "torch_threads = 1", f'torch_threads = 1\ndevice = "{device}"\nmemory_limit_mb = 3072', 1))
    assert load_settings(home, environ={}).trainer["device"] == device
    w = WorkerProcess(home)
    w.start()
    try:
        assert w.proc is not None
        assert _address_space_limit(w.proc.pid) == expected
    finally:
        w.stop()


def test_the_resident_memory_watch_kills_a_worker_over_its_limit() -> None:
    code = (
        "import os, time\n"
        "from pandacead import devices\n"
        "devices.RSS_WATCH_INTERVAL = 0.05\n"
        "print(devices.apply_memory_limit({'device': 'cuda', 'memory_limit_mb': 150})['kind'], flush=True)\n"
        "hog = bytearray(400 * 2**20)\n"
        "for i in range(0, len(hog), 4096): hog[i] = 1\n"
        "time.sleep(20)\n"
        "print('survived', flush=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, start_new_session=True)
    assert r.stdout.decode().split() == ["rss_watch"]
    assert r.returncode == -9 and b"over the limit" in r.stderr


def test_device_selection_never_falls_back_silently() -> None:
    torch = pytest.importorskip("torch")
    assert devices.resolve_device("cpu") == "cpu"
    assert devices.resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(JobFailed, match=f"has {count} CUDA device"):
        devices.resolve_device(f"cuda:{count}")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("trainer", "device", "gpu"), ("trainer", "world_size", 0), ("trainer", "cuda_memory_fraction", 1.5),
     ("trainer", "max_physical_batch_size", -1), ("executor", "kind", "celery"), ("executor", "kind", "ray")],
)
def test_bad_device_and_executor_settings_are_refused_at_start(section: str, key: str, value: Any) -> None:
    name = f"PANDACEAD_{section.upper()}__{key.upper()}"
    with pytest.raises(ConfigError, match=f"{section}.(kind|address|{key})"):
        load_settings("/nonexistent-home", environ={name: str(value) if isinstance(value, str) else repr(value)})


def test_the_embedded_default_executor_is_local() -> None:
    assert DEFAULTS["executor"]["kind"] == "local" and DEFAULTS["trainer"]["device"] == "auto"
    assert load_settings("/nonexistent-home", environ={}).data["executor"]["kind"] == "local"


def test_memory_estimate_grows_with_the_physical_batch() -> None:
    small = devices.estimate_training_bytes(10_000, 300, 32)
    big = devices.estimate_training_bytes(10_000, 300, 1024)
    assert big > 20 * small
    assert devices.estimate_training_bytes(10_000, 300, 1024, "ghost") < big  # no per-sample gradients
    assert devices.physical_batch(1000, world_size=2) < devices.physical_batch(1000)
    assert devices.physical_batch(1000, max_physical_batch_size=64) == 64


# --------------------------------------------------------------------------- admission (opacus plan)

opacus = pytest.importorskip("opacus")

from pandacead_opacus.trainer import OpacusTrainer  # noqa: E402

from pandacead import datasets  # noqa: E402
from pandacead.jobs import DPParams, Job, ModelSpec  # noqa: E402
from pandacead.trainers import TrainerContext  # noqa: E402


def _big_job() -> Job:
    return Job(job_id="big", user_id="alice", dataset="wide", dp=DPParams(epsilon=5.0, delta=1e-6),
               model=ModelSpec(type="mlp", hidden=(1024, 1024, 1024)), epochs=1, batch_size=100_000)


def _ctx(info: Any, **kw: Any) -> TrainerContext:
    return TrainerContext(datasets={info.name: info}, state_dir=".", options={"home": "."}, **kw)


def test_a_job_that_does_not_fit_is_refused_before_training() -> None:
    info = datasets.describe("wide", {"kind": "synthetic", "rows": 200_000, "features": 10}, ".")
    trainer = OpacusTrainer()
    with pytest.raises(JobRejected, match=r"needs about \d+ MB on cpu.*more than the \d+ MB") as exc:
        trainer.plan(_big_job(), _ctx(info, grad_sample_mode="hooks", device="cpu",
                                      memory={"memory_limit_mb": 4096}))
    assert "max_physical_batch_size" in exc.value.message
    # Split into physical batches of 256, the same job fits (and its ε is unchanged).
    plan = trainer.plan(_big_job(), _ctx(info, grad_sample_mode="hooks", device="cpu", max_physical_batch_size=256,
                                         memory={"memory_limit_mb": 4096}))
    assert plan.details["memory"]["physical_batch"] == 256
    assert plan.details["memory"]["estimated_mb"] < plan.details["memory"]["available_mb"]


def test_a_cuda_job_is_priced_against_the_gpu_memory() -> None:
    info = datasets.describe("wide", {"kind": "synthetic", "rows": 200_000, "features": 10}, ".")
    trainer = OpacusTrainer()
    job = _big_job()
    ctx = _ctx(info, grad_sample_mode="hooks", device="cuda", max_physical_batch_size=256,
               memory={"device_memory_mb": 8192})
    assert trainer.plan(job, ctx).details["memory"]["device"] == "cuda"
    with pytest.raises(JobRejected, match="on cuda"):
        trainer.plan(job, _ctx(info, grad_sample_mode="hooks", device="cuda", max_physical_batch_size=4096,
                               memory={"device_memory_mb": 8192}))
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():  # no GPU here and none declared: refused, not run on the CPU
        with pytest.raises(JobRejected, match="CUDA device"):
            trainer.plan(job, _ctx(info, device="cuda"))
