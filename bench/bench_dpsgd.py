"""DP-SGD vs non-private training throughput and peak memory, per Opacus grad-sample mode.

    .venv/bin/python bench/bench_dpsgd.py [--rows 10000] [--hidden 64,64] [--batch 64,256]
                                          [--rounds 5] [--threads 1] [--modes ...]

Same model (pandacead_opacus.models.build_model, an MLP 10 → 64 → 64 → 1 by
default), same data (the built-in synthetic generator, 10k rows), same SGD,
torch threads = 1; DP runs use Opacus's `make_private(poisson_sampling=True)`
with σ = 1, C = 1, exactly as pandacead_opacus.training does.

Throughput: all modes of one batch size are set up in one process and
timed one epoch at a time, round-robin for `--rounds` rounds, so background
load on a shared machine hits every mode alike. Each epoch is timed in CPU
seconds of the process (`time.process_time`, robust to other processes on
the machine) and in wall seconds; a mode's figure is its median epoch.
Ratios are DP / non-private from the same run. Peak RSS: each mode runs
once more alone in a fresh subprocess (ru_maxrss includes ≈300 MB of
torch itself). Correctness: each DP mode's weights after one epoch from the
same seed are compared with the `hooks` mode's (same Poisson batches, same
noise), which checks the per-sample clipping of the other modes.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("nonprivate", "hooks", "functorch", "ew", "ghost")


def _setup(mode: str, rows: int, hidden: list[int], batch: int, seed: int = 0):
    import warnings

    import numpy as np
    import torch
    from pandacead_opacus import models
    from torch.utils.data import DataLoader, TensorDataset

    from pandacead.datasets import synthetic_arrays

    warnings.simplefilter("ignore")
    X, y = synthetic_arrays(rows, 10, 0)
    arch = models.architecture(
        model_type="mlp" if hidden else "linear", hidden=hidden, n_features=10,
        task="classification", n_classes=2,
    )
    data = TensorDataset(torch.from_numpy(X), torch.from_numpy(y.astype(np.float32)))
    torch.manual_seed(seed)
    model = models.build_model(arch)
    crit = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    if mode == "nonprivate":
        return model, model, opt, crit, DataLoader(data, batch_size=batch, shuffle=True)
    from opacus import PrivacyEngine

    out = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=opt, criterion=crit, data_loader=DataLoader(data, batch_size=batch),
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True, grad_sample_mode=mode,
    )
    if mode == "ghost":
        m, o, c, d = out
    else:
        (m, o, d), c = out, crit
    return model, m, o, c, d


def _epoch(m, o, c, d) -> int:
    seen = 0
    for xb, yb in d:
        if not len(xb):  # Poisson sampling can draw an empty batch; not at these sizes
            continue
        o.zero_grad(set_to_none=True)
        loss = c(m(xb).reshape(-1), yb)
        loss.backward()
        o.step()
        seen += len(xb)
    return seen


def child_throughput(modes: list[str], rows: int, hidden: list[int], batch: int, rounds: int) -> dict:
    import torch

    runs = {mode: _setup(mode, rows, hidden, batch) for mode in modes}
    for mode in modes:  # warm-up epoch
        _epoch(*runs[mode][1:])
    times: dict[str, list[tuple[float, float, int]]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            w0, c0 = time.perf_counter(), time.process_time()
            seen = _epoch(*runs[mode][1:])
            times[mode].append((time.perf_counter() - w0, time.process_time() - c0, seen))
    out = {}
    for mode in modes:
        out[mode] = {
            "samples_per_cpu_s": statistics.median(s / c for _, c, s in times[mode]),
            "samples_per_wall_s": statistics.median(s / w for w, _, s in times[mode]),
        }
    # Correctness probe: one epoch from the same seed, weights out.
    for mode in modes:
        raw, *rest = _setup(mode, rows, hidden, batch, seed=1)
        _epoch(*rest)
        out[mode]["weights"] = [p.detach().reshape(-1).tolist() for p in raw.parameters()]
    del torch
    return out


def child_rss(mode: str, rows: int, hidden: list[int], batch: int) -> dict:
    _, *rest = _setup(mode, rows, hidden, batch)
    _epoch(*rest)
    _epoch(*rest)
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--hidden", default="64,64")
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    hidden = [int(h) for h in args.hidden.split(",") if h]
    modes = args.modes.split(",")
    if "nonprivate" not in modes:
        modes.insert(0, "nonprivate")

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, batch = args.child.split(":")
        if kind == "throughput":
            res = child_throughput(modes, args.rows, hidden, int(batch), args.rounds)
        else:
            res = child_rss(kind, args.rows, hidden, int(batch))
        print(json.dumps(res))
        return

    import numpy as np

    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), str(repo / "plugins"), env.get("PYTHONPATH", "")])

    def run_child(spec: str) -> dict:
        cmd = [sys.executable, __file__, "--child", spec, "--rows", str(args.rows), "--hidden", args.hidden,
               "--rounds", str(args.rounds), "--threads", str(args.threads), "--modes", ",".join(modes)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    summary: dict = {
        "config": {"rows": args.rows, "features": 10, "hidden": hidden, "rounds": args.rounds,
                   "torch_threads": args.threads, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                   "python": platform.python_version(), "cpus": os.cpu_count(),
                   "loadavg_start": os.getloadavg()[0]},
        "results": [],
    }
    try:
        import opacus
        import torch

        summary["config"]["torch"] = str(torch.__version__)
        summary["config"]["opacus"] = opacus.__version__
    except ImportError:
        pass
    for batch in [int(b) for b in args.batch.split(",")]:
        tp = run_child(f"throughput:{batch}")
        base = tp["nonprivate"]
        for mode in modes:
            r = tp[mode]
            rss = run_child(f"{mode}:{batch}")["peak_rss_mb"]
            row = {
                "mode": mode,
                "batch_size": batch,
                "samples_per_cpu_s": round(r["samples_per_cpu_s"]),
                "samples_per_wall_s": round(r["samples_per_wall_s"]),
                "peak_rss_mb": round(rss, 1),
            }
            if mode == "nonprivate":
                base_rss = rss
            else:
                row["throughput_vs_nonprivate"] = round(r["samples_per_cpu_s"] / base["samples_per_cpu_s"], 3)
                row["slowdown_x"] = round(base["samples_per_cpu_s"] / r["samples_per_cpu_s"], 2)
                row["rss_vs_nonprivate"] = round(rss / base_rss, 3)
                if mode != "hooks" and "hooks" in tp:
                    row["max_weight_diff_vs_hooks"] = max(
                        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                        for a, b in zip(r["weights"], tp["hooks"]["weights"])
                    )
            summary["results"].append(row)
    summary["config"]["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
