"""Device check for a GPU machine: a few minutes, one summary line per check.

    .venv/bin/python bench/gpu_check.py [--json OUT.json] [--quick]

Checks, in order:

1. ``cuda_job``: an opacus job with ``[trainer] device = "cuda"`` end to end
   through the daemon (`pandacead run --once`): artifact published, trained
   on CUDA, charged once, the worker under the resident-memory watch (not
   RLIMIT_AS, under which CUDA cannot initialise).
2. ``cuda_generators``: the secret noise generator on the GPU is seeded from
   the per-job secret: the same secret gives the same noise, another secret
   other noise.
3. ``ddp_2gpu``: one job on 2 GPUs (Opacus DPDDP over NCCL) against the same
   plan on one GPU: the same ε, a model as accurate. Skipped with fewer than
   2 GPUs.
4. ``throughput_mlp`` / ``throughput_cnn``: DP-SGD (Opacus, hooks) against the
   same non-private training on the GPU, samples per second and the ratio.

On a machine without CUDA it says so and exits 0. Exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clean_env, drop, job, make_home  # noqa: E402

RESULTS: list[dict[str, Any]] = []
#: "cuda" normally; "cpu" with --dry-run-cpu (tries the script itself on a machine without a GPU).
DEV = "cuda"


def line(check: str, ok: bool | None, **fields: Any) -> None:
    status = "skipped" if ok is None else ("ok" if ok else "FAIL")
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    print(f"{check}: {status} {text}".rstrip(), flush=True)
    RESULTS.append({"check": check, "status": status, **fields})


def check_cuda_job(root: Path) -> None:
    home = make_home(root / "cuda-home", backend="opacus",
                     trainer_extra=f'device = "{DEV}"\nmemory_limit_mb = 16384')
    drop(home / "inbox", "g1.json", job("g1", epsilon=2.0, epochs=3, batch_size=64, learning_rate=0.5))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pandacead.cli", "run", "--once", "--home", str(home)],
                       capture_output=True, env=clean_env(PANDACEAD_HOME=str(home)), timeout=600)
    wall = time.monotonic() - t0
    art_path = home / "outbox" / "g1.json"
    if r.returncode != 0 or not art_path.exists():
        err = (home / "outbox" / "g1.error.json")
        why = json.loads(err.read_text())["error"] if err.exists() else r.stderr.decode()[-300:]
        line("cuda_job", False, error=json.dumps(why))
        return
    art = json.loads(art_path.read_bytes())
    from pandacead.config import load_settings
    from pandacead.devices import memory_limit
    from pandacead.ledger import Ledger

    spend = Ledger.from_settings(load_settings(home, environ={}), actor="gpu_check").spend("g1")
    limit = memory_limit(load_settings(home, environ={}).trainer)["kind"]
    device = art["training_params"].get("device", "?")
    ok = device.startswith(DEV) and spend["state"] == "committed" and limit == ("rss_watch" if DEV == "cuda" else "rlimit_as")
    line("cuda_job", ok, device=device, epsilon=float(art["epsilon"]), accuracy=art.get("accuracy"),
         charged=spend["state"], worker_limit=limit, wall_s=round(wall, 1))


def check_generators() -> None:
    import torch
    from pandacead_opacus.training import secret_generators

    dev = "cuda:0" if DEV == "cuda" else "cpu"
    a = secret_generators(99, dev)[1]
    b = secret_generators(99, dev)[1]
    c = secret_generators(100, dev)[1]
    x, y, z = (torch.randn(1000, device=dev, generator=g) for g in (a, b, c))
    ok = a.device.type == DEV and torch.equal(x, y) and not torch.equal(x, z)
    line("cuda_generators", ok, device=str(a.device))


def _plan_and_arrays(epochs: int = 3, batch_size: int = 64) -> tuple[dict, dict, dict]:
    from pandacead_opacus.trainer import OpacusTrainer

    from pandacead import datasets
    from pandacead.jobs import DPParams, Job, ModelSpec
    from pandacead.trainers import TrainerContext

    info = datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], ".")
    arrays = dict(zip(("X_train", "y_train", "X_test", "y_test"), datasets.load(info, ".")))
    j = Job(job_id="ddp", user_id="alice", dp=DPParams(epsilon=2.0, delta=1e-5), model=ModelSpec(type="mlp", hidden=(8,)),
            epochs=epochs, batch_size=batch_size, learning_rate=0.5)
    ctx = TrainerContext(datasets={"synthetic": info}, state_dir=".", options={"home": "."}, grad_sample_mode="hooks",
                         device=DEV)
    return j.to_dict(), OpacusTrainer().plan(Job.from_dict(j.to_dict()), ctx).to_dict(), arrays


def check_ddp() -> None:
    import torch
    from pandacead_opacus.training import train_arrays

    if DEV == "cuda" and torch.cuda.device_count() < 2:
        line("ddp_2gpu", None, reason=f"{torch.cuda.device_count()} GPU")
        return
    j, plan, arrays = _plan_and_arrays()
    one = train_arrays(j, plan, arrays, 1, noise_seed=5, device="cuda:0" if DEV == "cuda" else "cpu")
    t0 = time.monotonic()
    two = train_arrays(j, plan, arrays, 1, noise_seed=5, device=DEV, world_size=2)
    wall = time.monotonic() - t0
    ok = two["epsilon"] == one["epsilon"] == plan["epsilon"] and two["accuracy"] >= one["accuracy"] - 0.05
    line("ddp_2gpu", ok, epsilon_1=one["epsilon"], epsilon_2=two["epsilon"], accuracy_1=one["accuracy"],
         accuracy_2=two["accuracy"], wall_s=round(wall, 1))


def _throughput(kind: str, batch: int, steps: int) -> None:
    import torch
    from opacus import PrivacyEngine
    from torch import nn

    dev = torch.device("cuda:0" if DEV == "cuda" else "cpu")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()
    if kind == "mlp":
        def build() -> nn.Module:
            return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        shape: tuple[int, ...] = (784,)
    else:
        def build() -> nn.Module:
            return nn.Sequential(
                nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
            )
        shape = (1, 28, 28)
    n = batch * steps
    g = torch.Generator().manual_seed(0)
    X = torch.randn((n, *shape), generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=batch)

    def run(private: bool) -> float:
        torch.manual_seed(0)
        model = build().to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        crit = nn.CrossEntropyLoss()
        data = loader
        if private:
            engine = PrivacyEngine(accountant="rdp")
            model, opt, data = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                                   noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True)
        seen = 0
        for i, (xb, yb) in enumerate(data):  # one warm-up pass over 3 batches first
            if i == 3:
                sync()
                t0, seen = time.perf_counter(), 0
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            crit(model(xb), yb).backward()
            opt.step()
            seen += len(xb)
        sync()
        return seen / (time.perf_counter() - t0)

    nonpriv = run(False)
    dp = run(True)
    line(f"throughput_{kind}", True, batch=batch, dp_samples_s=round(dp), nonprivate_samples_s=round(nonpriv),
         dp_cost=round(nonpriv / dp, 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="fewer throughput steps")
    parser.add_argument("--dry-run-cpu", action="store_true", help="run every check on the CPU (tests the script)")
    args = parser.parse_args()
    global DEV
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed; nothing to check", flush=True)
        return 0
    if args.dry_run_cpu:
        DEV = "cpu"
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
              "nothing to check", flush=True)
        return 0
    if DEV == "cuda":
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU "
              f"({names})", flush=True)
    else:
        print("gpu_check: dry run on the CPU (no GPU figures)", flush=True)
    steps = 20 if args.quick or DEV == "cpu" else 60
    with tempfile.TemporaryDirectory(prefix="pandacead-gpu-") as tmp:
        for name, fn in (("cuda_job", lambda: check_cuda_job(Path(tmp))), ("cuda_generators", check_generators),
                         ("ddp_2gpu", check_ddp), ("throughput_mlp", lambda: _throughput("mlp", 256, steps)),
                         ("throughput_cnn", lambda: _throughput("cnn", 256, steps))):
            try:
                fn()
            except Exception as exc:
                line(name, False, error=json.dumps(f"{type(exc).__name__}: {exc}"[:300]))
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=2) + "\n")
    return 1 if any(r["status"] == "FAIL" for r in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
