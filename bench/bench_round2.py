"""(r) Performance, round two (#20): every figure against a baseline of the same run, side by side with today's release.

    .venv/bin/python bench/bench_round2.py [--quick] [--base REV] [--only startup,dpsgd,jobs,backlog,schema]

"Today's release" is the tree of commit `--base` (default `RELEASE_BASE`, the
commit this round started from), extracted with `git archive` into a scratch
directory, byte-compiled like this tree, and run with ``PYTHONPATH`` pointing
at it (the deps are the same venv's). Both take turns, so the machine's load
hits both alike.

* **startup**: `pandacead --help` and `budget show` against ``python -c pass``,
  median of runs, each tree as it is installed: this tree's command is the
  wheel script ``scripts/pandacead`` (run as ``python scripts/pandacead``);
  the release's is a console-script entry point (``pandacead.cli:main``),
  run through the wrapper today's pip (>= 25, what `make install` upgrades
  to) generates, which no longer imports ``re``. As context: this tree's
  entry point through the wrapper of older pips (``import re, sys`` first),
  and ``python -c "import re"``.
* **dpsgd**: training throughput per model shape (linear … 4×1024, batch 256,
  synthetic data, one thread, σ = 1, C = 1) in CPU seconds per epoch,
  round-robin: the fastest honest non-private loop (direct tensor indexing,
  shuffled fixed-size batches: the baseline), the non-private DataLoader loop
  (the old baseline), this tree's DP-SGD (the book-keeping fast path where
  it applies), Opacus with Poisson batches by direct indexing (this tree's
  path for other models, grad-sample mode as "auto" picks), and Opacus with
  its DataLoader (today's release's training loop).
* **jobs**: the same opacus job shape, repeated, through two daemons (this
  tree, the release), drop → artifact; the first job of each daemon is a
  warm-up (worker start, cold memos).
* **backlog**: `pandacead run --once` draining N mock jobs dropped at once,
  per-job seconds at a small and a large N (start-up subtracted: the same
  command on an empty inbox), for this tree and the release.
* **schema**: validating a valid job: the fast check (fastjsonschema) vs
  jsonschema, in process.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BIN,
    REPO,
    Daemon,
    OutboxWatch,
    bench_root,
    clean_env,
    drop,
    job,
    make_home,
    rm_tree,
)

#: Today's release: the commit round two started from (main before #20 and its siblings merged).
RELEASE_BASE = "55015c1a580c3c765e6119bfe7235ef7aba18586"
PY = str(BIN / "python")
#: The console-script wrapper of pip >= 25 (PipScriptMaker: no `import re`), for an entry point.
WRAP = "import sys; sys.argv[0] = 'pandacead'; from {mod} import main; sys.exit(main())"
#: The wrapper of older pips and distlib: `import re` before the entry point (context only).
WRAP_RE = "import re, sys; sys.argv[0] = 'pandacead'; from {mod} import main; sys.exit(main())"


def median(v: list[float]) -> float:
    return float(statistics.median(v))


class Tree:
    """A code tree to run: this checkout or the release's copy."""

    def __init__(self, name: str, root: Path, entry: str, script: Path | None = None):
        self.name, self.root, self.entry, self.script = name, root, entry, script

    def env(self, **extra: str) -> dict[str, str]:
        path = os.pathsep.join([str(self.root), str(self.root / "plugins")])
        return clean_env(PYTHONPATH=path, COLUMNS="80", **extra)

    def cli(self) -> list[str]:
        """The command as installed: the wheel script where the tree has one, else pip's wrapper."""
        if self.script is not None and self.script.exists():
            return [PY, str(self.script)]
        return [PY, "-c", WRAP.format(mod=self.entry)]


def trees(root: Path, base: str) -> tuple[Tree, Tree]:
    rel = root / "release"
    rel.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", base], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(rel)], input=archive, check=True)
    # The click-free --help needs its cache current (make install writes it), then everything byte-compiled.
    subprocess.run([PY, "-c", "from pandacead import entry; entry._cached_answer(['--help']) or entry.write_cache()"],
                   cwd=REPO, check=True, env=clean_env(COLUMNS="80", PYTHONPATH=str(REPO)))
    for t in (rel, REPO):
        subprocess.run([PY, "-m", "compileall", "-q", "pandacead", "plugins"], cwd=t, check=True,
                       env=clean_env(PYTHONDONTWRITEBYTECODE="0"))
    return (Tree("this", REPO, "pandacead.entry", REPO / "scripts" / "pandacead"),
            Tree("release", rel, "pandacead.cli"))


# --------------------------------------------------------------------------- startup


def startup(this: Tree, rel: Tree, root: Path, runs: int) -> dict[str, Any]:
    homes = {}
    for t in (this, rel):
        h = make_home(root / f"startup-{t.name}")
        for u, e in (("alice", "5"), ("bob", "3"), ("carol", "1")):
            r = subprocess.run([*t.cli(), "budget", "set", u, e, "--create"], env=t.env(PANDACEAD_HOME=str(h)),
                               capture_output=True)
            if r.returncode != 0:  # a tree from before accounts needed --create
                subprocess.run([*t.cli(), "budget", "set", u, e], env=t.env(PANDACEAD_HOME=str(h)), check=True,
                               capture_output=True)
        homes[t.name] = h
    cmds: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c pass": ([PY, "-c", "pass"], clean_env()),
        # pip's console script imports re before the entry point: context for the --help figure.
        "python -c 'import re'": ([PY, "-c", "import re"], clean_env()),
    }
    for t in (this, rel):
        env = t.env(PANDACEAD_HOME=str(homes[t.name]))
        cmds[f"{t.name}: --help"] = ([*t.cli(), "--help"], env)
        cmds[f"{t.name}: budget show"] = ([*t.cli(), "budget", "show"], env)
    env = this.env(PANDACEAD_HOME=str(homes["this"]))
    cmds["this: --help (old pip wrapper, import re)"] = ([PY, "-c", WRAP_RE.format(mod=this.entry), "--help"], env)
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    for i in range(runs + 1):
        for k, (cmd, env) in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
            if i:  # the first round warms the page cache
                samples[k].append(time.perf_counter() - t0)
    med = {k: median(v) for k, v in samples.items()}
    base = med["python -c pass"]
    same = subprocess.run([*this.cli(), "--help"], capture_output=True, text=True, env=this.env()).stdout == \
        subprocess.run([*this.cli(), "--help"], capture_output=True, text=True,
                       env=this.env(PANDACEAD_CLI_FAST="0")).stdout
    return {"runs": runs, "median_s": med, "ratios": {k: v / base for k, v in med.items() if k != "python -c pass"},
            "help_equals_click": same}


# --------------------------------------------------------------------------- dpsgd (child process)

DPSGD_MODES = ("nonprivate", "nonprivate_dataloader", "dp_this", "opacus_direct", "opacus_dataloader")


def _dpsgd_setup(mode: str, hidden: list[int], rows: int, batch: int) -> Any:
    import warnings

    import numpy as np
    import torch
    from pandacead_opacus import fastpath, models, privacy, sampling
    from pandacead_opacus.trainer import AUTO_GHOST_MIN_BATCH
    from torch.utils.data import DataLoader, TensorDataset

    from pandacead.datasets import synthetic_arrays

    warnings.simplefilter("ignore")
    X, y = synthetic_arrays(rows, 10, 0)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    arch = models.architecture(model_type="mlp" if hidden else "linear", hidden=hidden, n_features=10,
                               task="classification", n_classes=2)
    torch.manual_seed(0)
    model = models.build_model(arch)
    crit = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = privacy.poisson_schedule(rows, batch, 1)
    gen = torch.Generator().manual_seed(1)
    noise = torch.Generator().manual_seed(2)
    gsm = "ghost" if sched["expected_batch_size"] >= AUTO_GHOST_MIN_BATCH else "hooks"

    def step(m: Any, o: Any, c: Any, xb: Any, yb: Any) -> None:
        o.zero_grad(set_to_none=True)
        c(m(xb).reshape(-1), yb).backward()
        o.step()

    if mode == "nonprivate":
        def epoch() -> int:
            perm = torch.randperm(rows, generator=gen)
            for i in range(0, rows, batch):
                idx = perm[i:i + batch]
                step(model, opt, crit, Xt[idx], yt[idx])
            return rows
        return epoch
    if mode == "nonprivate_dataloader":
        loader = DataLoader(TensorDataset(Xt, yt), batch_size=batch, shuffle=True)

        def epoch() -> int:
            for xb, yb in loader:
                step(model, opt, crit, xb, yb)
            return rows
        return epoch
    if mode == "dp_this" and fastpath.applies(model):
        fp = fastpath.BookkeepingDPSGD(model, arch["head"], max_grad_norm=1.0, noise_multiplier=1.0,
                                       expected_batch_size=sched["expected_batch_size"], learning_rate=0.05,
                                       noise_generator=noise)

        def epoch() -> int:
            seen = 0
            for idx in sampling.poisson_batches(rows, sched["poisson_rate"], sched["steps_per_epoch"], gen):
                fp.step(Xt[idx], yt[idx])
                seen += len(idx)
            return seen
        return epoch
    from opacus import PrivacyEngine

    out = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=opt, criterion=crit, data_loader=DataLoader(TensorDataset(Xt, yt), batch_size=batch,
                                                                            generator=gen),
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True, grad_sample_mode=gsm, noise_generator=noise)
    m, o, c, d = out if gsm == "ghost" else (out[0], out[1], crit, out[2])
    if mode == "opacus_dataloader":
        def epoch() -> int:
            seen = 0
            for xb, yb in d:
                step(m, o, c, xb, yb)
                seen += len(xb)
            return seen
        return epoch

    def epoch() -> int:  # opacus_direct (and dp_this where the fast path does not apply)
        seen = 0
        for idx in sampling.poisson_batches(rows, sched["poisson_rate"], sched["steps_per_epoch"], gen):
            step(m, o, c, Xt[idx], yt[idx])
            seen += len(idx)
        return seen
    return epoch


def dpsgd_child(hidden: list[int], rows: int, batch: int, rounds: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    epochs = {mode: _dpsgd_setup(mode, hidden, rows, batch) for mode in DPSGD_MODES}
    for fn in epochs.values():
        fn()  # warm-up
    cpu: dict[str, list[float]] = {m: [] for m in DPSGD_MODES}
    for _ in range(rounds):
        for mode, fn in epochs.items():
            c0 = time.process_time()
            seen = fn()
            cpu[mode].append((time.process_time() - c0) / max(1, seen))
    per_sample = {m: median(v) for m, v in cpu.items()}
    base = per_sample["nonprivate"]
    return {"hidden": hidden, "rows": rows, "batch": batch, "rounds": rounds,
            "us_per_sample": {m: v * 1e6 for m, v in per_sample.items()},
            "vs_nonprivate": {m: v / base for m, v in per_sample.items()}}


def dpsgd(quick: bool) -> dict[str, Any]:
    shapes = [([], 10000), ([64, 64], 10000), ([256, 256], 10000), ([1024] * 4, 2560)]
    out = []
    for hidden, rows in shapes:
        cmd = [PY, __file__, "--_dpsgd", json.dumps({"hidden": hidden, "rows": rows, "batch": 256,
                                                      "rounds": 2 if quick else 3})]
        r = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), cwd=REPO, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"dpsgd child failed: {r.stderr[-1500:]}")
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return {"shapes": out}


# --------------------------------------------------------------------------- jobs through daemons


def jobs(this: Tree, rel: Tree, root: Path, n: int) -> dict[str, Any]:
    shapes = {
        "linear (README example)": {"epochs": 10, "batch_size": 32, "learning_rate": 0.1, "seed": 42},
        "mlp 64x64": {"epochs": 5, "batch_size": 64, "learning_rate": 0.1, "seed": 42,
                      "model": {"type": "mlp", "hidden": [64, 64]}},
    }
    daemons = {}
    try:
        for t in (this, rel):
            home = make_home(root / f"jobs-{t.name}", backend="opacus")
            d = Daemon(home, cmd=t.cli(), **{k: v for k, v in t.env().items() if k == "PYTHONPATH"})
            d.wait_ready(timeout=180)
            daemons[t.name] = (home, d, OutboxWatch(home / "outbox"))
        res: dict[str, Any] = {}
        for si, (shape, kw) in enumerate(shapes.items()):
            times: dict[str, list[float]] = {t: [] for t in daemons}
            for i in range(n + 1):
                for name, (home, _d, watch) in daemons.items():
                    jid = f"{name}-{si}-{i}"
                    t0 = drop(home / "inbox", f"{jid}.json", job(jid, epsilon=1.0, **kw))
                    got, t1 = watch.wait_any([f"{jid}.json", f"{jid}.error.json"], timeout=600)
                    if got.endswith(".error.json"):
                        raise RuntimeError(f"{name} job failed: {(home / 'outbox' / got).read_text()[:500]}")
                    if i:
                        times[name].append(t1 - t0)
                    else:
                        res.setdefault("first_s", {}).setdefault(shape, {})[name] = t1 - t0
            med = {k: median(v) for k, v in times.items()}
            res[shape] = {"median_s": med, "all_s": times, "this_vs_release": med["this"] / med["release"]}
        return res
    finally:
        for _home, d, watch in daemons.values():
            d.stop()
            watch.close()


# --------------------------------------------------------------------------- backlog


def _drain(t: Tree, root: Path, n: int) -> float:
    home = make_home(root / f"backlog-{t.name}-{n}")
    for i in range(n):
        (home / "inbox" / f"b-{i:05d}.json").write_text(json.dumps(job(f"b-{i:05d}", epsilon=0.001)))
    old = time.time() - 5  # settled files: no settle wait
    for p in (home / "inbox").iterdir():
        os.utime(p, (old, old))
    t0 = time.perf_counter()
    subprocess.run([*t.cli(), "run", "--once", "--home", str(home)], env=t.env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    dt = time.perf_counter() - t0
    done = len(list((home / "outbox").glob("b-*.dsse.json")))
    if done != n:
        raise RuntimeError(f"{t.name}: {done} of {n} backlog jobs ended as artifacts")
    rm_tree(home)
    return dt


def backlog(this: Tree, rel: Tree, root: Path, quick: bool) -> dict[str, Any]:
    # The 500 vs 10 000 files take ~10 minutes on a loaded 2-core machine; a tenfold range shows the same.
    sizes = {"this": (100, 1000) if quick else (300, 3000), "release": (100, 500) if quick else (300, 1000)}
    res: dict[str, Any] = {}
    for t in (this, rel):
        empty = _drain(t, root, 0)
        small, large = sizes[t.name]
        per = {n: (_drain(t, root, n) - empty) / n for n in (small, large)}
        res[t.name] = {"startup_s": empty, "per_job_ms": {str(k): v * 1e3 for k, v in per.items()},
                       "large_vs_small": per[large] / per[small], "sizes": [small, large]}
    return res


# --------------------------------------------------------------------------- schema


def schema() -> dict[str, Any]:
    code = r"""
import json, sys, timeit
sys.path.insert(0, 'bench')
from common import job
from pandacead import jobs
raw = job('schema-1'); raw['user_id'] = 'alice'
assert jobs.schema_violations(raw) == []
v = jobs._validator()
n = 3000
fast = min(timeit.repeat(lambda: jobs.schema_violations(raw), number=n, repeat=3)) / n
slow = min(timeit.repeat(lambda: list(v.iter_errors(raw)), number=n, repeat=3)) / n
print(json.dumps({"fast_us": fast * 1e6, "jsonschema_us": slow * 1e6, "fast_vs_jsonschema": fast / slow}))
"""
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO, env=clean_env(), check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool = False, base: str = RELEASE_BASE, only: str = "startup,dpsgd,jobs,backlog,schema") -> dict[str, Any]:
    root = bench_root()
    res: dict[str, Any] = {"base": base, "loadavg_start": os.getloadavg()[0]}
    try:
        this, rel = trees(root, base)
        steps = {
            "startup": lambda: startup(this, rel, root, 5 if quick else 15),
            "schema": schema,
            "dpsgd": lambda: dpsgd(quick),
            "jobs": lambda: jobs(this, rel, root, 2 if quick else 4),
            "backlog": lambda: backlog(this, rel, root, quick),
        }
        for name in only.split(","):
            t0 = time.monotonic()
            try:
                res[name] = steps[name]()
            except Exception as exc:
                res[name] = {"error": f"{type(exc).__name__}: {exc}"}
            res[name]["seconds"] = round(time.monotonic() - t0, 1)
            print(f"[bench r] {name} done in {res[name]['seconds']} s", file=sys.stderr, flush=True)
    finally:
        rm_tree(root)
    res["loadavg_end"] = os.getloadavg()[0]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--base", default=RELEASE_BASE)
    ap.add_argument("--only", default="startup,dpsgd,jobs,backlog,schema")
    ap.add_argument("--_dpsgd", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._dpsgd:
        spec = json.loads(a._dpsgd)
        print(json.dumps(dpsgd_child(spec["hidden"], spec["rows"], spec["batch"], spec["rounds"])))
        return
    print(json.dumps(run(a.quick, a.base, a.only), indent=2))


if __name__ == "__main__":
    main()
