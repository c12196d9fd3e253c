"""The #17 check as a buyer and an earner would run it: through the daemon, not in-process.

For each seed: the benchmark's split of scikit-learn's breast_cancer (20 % kept
away from the host, as in bench/utility.py), the other rows written as a raw
CSV with the published bounds of scikit-learn's ``DESCR`` declared in a fresh
``pandacead init`` home (private, ``rows`` = the host's row count), one ε = 1
opacus job with the family defaults dropped into inbox/ and ``pandacead run
--once`` (the daemon's default accountant, prv), then the released artifact
loaded with ``load_model`` and ``predict`` on the raw unseen rows; the
non-private ceiling is scikit-learn's LogisticRegression on the host's rows
scaled by the same bounds, scored on the same unseen rows.

    .venv/bin/python bench/utility_daemon.py [--seeds 5] [--eps 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import utility as U  # noqa: E402

BIN = Path(sys.executable).parent
BEGIN, END = "<!-- utility_daemon: begin -->", "<!-- utility_daemon: end -->"


def one(seed: int, eps: float, name: str = "breast_cancer") -> dict[str, float]:
    from pandacead_opacus import models
    from sklearn.linear_model import LogisticRegression

    from pandacead import preprocessing

    data = U.LOADERS[name]()
    n = len(data["y"])
    perm = np.random.default_rng(seed).permutation(n)
    n_unseen = int(round(n * U.UNSEEN_FRACTION))
    unseen, host = np.sort(perm[:n_unseen]), np.sort(perm[n_unseen:])
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        subprocess.run([str(BIN / "pandacead"), "init", "--home", str(home)], check=True, capture_output=True)
        info = U.register(home, name, data, host)  # writes the raw CSV (and checks the spec)
        src = info.source
        bounds = ", ".join(f'"{c}" = [{lo!r}, {hi!r}]' for c, (lo, hi) in zip(
            [c.replace(",", " ") for c in data["columns"]], [data["bounds"][c] for c in data["columns"]]))
        classes = ", ".join(json.dumps(c) for c in data["classes"])
        cfg = home / "pandacead.toml"  # δ = 1/n^1.1 is above init's default δ budget of 1e-3
        cfg.write_text(cfg.read_text().replace("default_delta = 1e-3", "default_delta = 0.05")
                       .replace("dataset_delta = 1e-3", "dataset_delta = 0.05"))
        with open(cfg, "a") as f:
            f.write(f'\n[datasets.{name}]\nkind = "csv"\npath = "{name}.csv"\nlabel = "label"\n'
                    f'task = "classification"\nrows = {len(host)}\nclasses = [{classes}]\nbounds = {{ {bounds} }}\n')
        job = {"job_id": f"bc{seed}", "user_id": "buyer", "dataset": name, "backend": "opacus",
               "dp": {"epsilon": eps, "delta": 1 / len(host) ** 1.1}}
        (home / "inbox" / f".bc{seed}.json").write_text(json.dumps(job))
        (home / "inbox" / f".bc{seed}.json").rename(home / "inbox" / f"bc{seed}.json")
        t0 = time.monotonic()
        r = subprocess.run([str(BIN / "pandacead"), "run", "--once", "--home", str(home)], capture_output=True, timeout=900)
        seconds = time.monotonic() - t0
        out = home / "outbox" / f"bc{seed}.json"
        if r.returncode != 0 or not out.exists():
            errs = [p.read_text()[:300] for p in (home / "outbox").glob("*.error.json")]
            raise SystemExit(f"seed {seed}: no artifact ({r.returncode}): {errs} {r.stderr.decode()[-800:]}")
        art = json.loads(out.read_text())
        model, arch = models.load_model(base64.b64decode(art["model"]))
        raw = U.raw_rows(data, unseen)
        acc = float(np.mean(models.predict(model, arch, raw) == data["y"][unseen]))
        pre = src["preprocessing"]
        Xh = preprocessing.transform(pre, U.raw_rows(data, host))
        ceiling = float(LogisticRegression(max_iter=5000).fit(Xh, data["y"][host]).score(
            preprocessing.transform(pre, raw), data["y"][unseen]))
        return {"seed": seed, "accuracy": acc, "nonprivate_logreg": ceiling, "epsilon_charged": float(art["epsilon"]),
                "accountant": art.get("training_params", {}).get("accountant") or art["dp"].get("accountant"), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="breast_cancer at ε through the daemon against non-private LR.")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--eps", type=float, default=1.0)
    p.add_argument("--json", help="write the per-seed results here")
    p.add_argument("--out", default=str(U.REPO / "docs" / "utility.md"), help="the section is (re)written here")
    a = p.parse_args(argv)
    rows = []
    for s in range(a.seeds):
        rows.append(one(s, a.eps))
        print(json.dumps(rows[-1]), flush=True)
    acc = np.array([r["accuracy"] for r in rows])
    ceil = np.array([r["nonprivate_logreg"] for r in rows])
    gap = ceil - acc
    summary = (f"ε = {a.eps:g}: daemon {acc.mean():.3f} ± {acc.std():.3f}, non-private LR {ceil.mean():.3f} ± "
               f"{ceil.std():.3f}, gap {gap.mean() * 100:.1f} ± {gap.std() * 100:.1f} points over {a.seeds} seeds")
    print(summary)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [BEGIN, "## breast_cancer through the daemon (the #17 check)", "",
             f"`bench/utility_daemon.py` ({when}, {a.seeds} seeds): for each seed the split of the table above, "
             "the host's rows as a raw CSV with the `DESCR` bounds declared in a fresh `pandacead init` home "
             "(private, `rows` declared), one opacus job at the given ε with the family defaults dropped into "
             "inbox/ and `pandacead run --once` (the daemon's default prv accountant), the released artifact's "
             "`predict` on the raw unseen rows, against scikit-learn's LogisticRegression on the same rows.", "",
             f"| seed | daemon, ε = {a.eps:g} | non-private LR | gap (points) | ε charged |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['accuracy']:.3f} | {r['nonprivate_logreg']:.3f} | "
                     f"{(r['nonprivate_logreg'] - r['accuracy']) * 100:.1f} | {r['epsilon_charged']:.4f} |")
    lines += ["", f"Mean: {summary}.", END]
    U.write_section(Path(a.out), BEGIN, END, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
