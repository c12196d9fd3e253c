"""(a′) How close the mock pipeline can come to its floor: a lower bound, measured.

    .venv/bin/python bench/bench_bound.py [--n 300] [--rounds 3]

The floor (bench/floor.py) is the I/O and signature a durable, signed, accounted publish
cannot avoid. A daemon running a mock job also does, per job, work the floor leaves out but
the contract asks for. This benchmark measures, in one run and alternating with the floor:

* **the floor** (`floor.measure`);
* **the floor plus the job's own I/O** (`io_floor`): the same calls, plus what the job's
  bookkeeping adds on the disk, done with plain os/sqlite3 calls: the claim (a rename out of
  the inbox), reading the job file, the reservation as a durable SQLite transaction before
  training (spend, job row, account, audit entry), the job's history file (created, four lines),
  the success commit as a second, non-durable transaction, and removing the claimed file;
* **each piece of Python the job runs**, with pandacead's own functions, warm, each in a tight
  loop on the same inputs (the most favourable figure a piece can have; in the pipeline each
  runs once between the others, with colder caches): reading and validating the job, choosing
  the trainer and planning, the budget hooks, the ledger's reservation and commit (CPU only:
  both run non-durable here, their fsync is in the I/O floor), the mock training (numpy,
  safetensors, its four progress reports), the artifact and its RFC 8785 hash, the in-toto
  statement, DSSE envelope and signature, and the daemon's log lines for a job.

The **bound** is the I/O floor plus the sum of the pieces: no implementation of this contract in
CPython that runs these pieces can be faster per job, short of overlapping them (two CPUs,
one GIL). Its ratio to the floor is what the ≤ 2× target of #20 asks of the whole daemon.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import floor  # noqa: E402
from common import bench_root, drop, in_process_pipeline, job, make_home, median, rm_tree  # noqa: E402


def io_floor(work: Path, n: int, artifact_bytes: int, envelope_bytes: int, job_bytes: int = 320) -> dict[str, Any]:
    """The floor plus the I/O of a job's own bookkeeping (see the module docstring); per job, seconds."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    inbox, spool, out, hist = (work / d for d in ("inbox", "spool", "out", "history"))
    for d in (inbox, spool, out, hist):
        d.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(work / "ledger.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE spends (job_id TEXT PRIMARY KEY, user_id TEXT, epsilon REAL, state TEXT, at REAL,"
               " detail TEXT)")
    db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, job_id TEXT, status TEXT, progress TEXT, at REAL)")
    db.execute("CREATE TABLE users (user_id TEXT PRIMARY KEY, spent REAL, reserved REAL)")
    db.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, at REAL, event TEXT, job_id TEXT, before TEXT, after TEXT)")
    for u in range(50):
        db.execute("INSERT INTO users VALUES (?, 0, 0)", (f"u{u}",))
    key = Ed25519PrivateKey.generate()
    art = os.urandom(artifact_bytes).hex().encode()[:artifact_bytes]
    env = os.urandom(envelope_bytes).hex().encode()[:envelope_bytes]
    payload = os.urandom(max(64, envelope_bytes * 3 // 4))
    body = b"x" * job_bytes
    for i in range(n):  # the jobs are there before the clock starts, as a burst's are
        (inbox / f"j{i}.json").write_bytes(body)
    per_job: list[float] = []
    to_artifact: list[float] = []
    pc = time.perf_counter
    t_all = pc()
    for i in range(n):
        t0 = pc()
        jid, uid = f"j{i}", f"u{i % 50}"
        os.rename(inbox / f"{jid}.json", spool / jid)  # the claim
        with open(spool / jid, "rb") as fh:
            fh.read()
        db.execute("BEGIN IMMEDIATE")  # the reservation, durable, before training
        db.execute("INSERT INTO spends VALUES (?, ?, 0.01, 'reserved', ?, '{}')", (jid, uid, time.time()))
        row = db.execute("INSERT INTO jobs (job_id, status, at) VALUES (?, 'running', ?)", (jid, time.time())).lastrowid
        db.execute("UPDATE users SET reserved = reserved + 0.01 WHERE user_id = ?", (uid,))
        db.execute("INSERT INTO audit (at, event, job_id, before, after) VALUES (?, 'reserved', ?, '{}', '{}')",
                   (time.time(), jid))
        db.execute("COMMIT")
        with open(hist / f"{row}.jsonl", "a") as h:  # the history: created, four lines written through
            for _ in range(4):
                h.write('{"type": "progress", "epoch": 1}\n')
                h.flush()
        key.sign(payload)
        floor._write_fsync_rename(out, f"{jid}.dsse.json", env)
        floor._write_fsync_rename(out, f"{jid}.json", art)
        to_artifact.append(pc() - t0)  # what a buyer's drop-to-artifact latency can see
        floor._fsync_dir(out)
        db.execute("PRAGMA synchronous = NORMAL")  # the success commit, not fsynced
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE spends SET state = 'committed' WHERE job_id = ?", (jid,))
        db.execute("UPDATE jobs SET status = 'succeeded', progress = '{}' WHERE id = ?", (row,))
        db.execute("UPDATE users SET reserved = reserved - 0.01, spent = spent + 0.01 WHERE user_id = ?", (uid,))
        db.execute("INSERT INTO audit (at, event, job_id, before, after) VALUES (?, 'committed', ?, '{}', '{}')",
                   (time.time(), jid))
        db.execute("COMMIT")
        db.execute("PRAGMA synchronous = FULL")
        os.unlink(spool / jid)  # the claimed file goes once the job is settled
        per_job.append(pc() - t0)
    total = pc() - t_all
    db.close()
    return {"n": n, "total_s": total, "per_job": per_job, "to_artifact": to_artifact}


def _warm(f: Any, reps: int) -> float:
    """Median seconds of one call of `f`, after a warm-up, over `reps` calls."""
    for _ in range(max(3, reps // 10)):
        f()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return median(out)


def pieces(reps: int = 300) -> dict[str, float]:
    """Warm medians (seconds) of the Python a mock job runs, with pandacead's own functions."""
    import io

    from pandacead import artifacts, signing
    from pandacead.logs import setup_logging
    from pandacead.spool import read_job_file

    root = bench_root()
    home = make_home(root / "home")
    try:
        s, spool, pl, led = in_process_pipeline(home)
        drop(s.inbox, "p.json", job("p", user_id="u1", epsilon=0.01))
        spooled = spool.claim(s.inbox, "p.json")
        assert spooled is not None
        data = read_job_file(spooled, 1 << 20)
        j = pl.parse(data)
        tr = pl.select(j)
        plan = pl.plan(j, tr)
        out: dict[str, float] = {}
        out["read + parse + validate"] = _warm(lambda: pl.parse(read_job_file(spooled, 1 << 20)), reps)
        out["select + plan"] = _warm(lambda: pl.plan(j, pl.select(j)), reps)
        out["budget hooks"] = _warm(lambda: pl.check_budget(j, plan), reps)
        orig_tx = led.transaction

        def no_sync_tx(durable: bool = True) -> Any:  # CPU only: the reservation's fsync is in the I/O floor
            return orig_tx(durable=False)

        led.transaction = no_sync_tx  # type: ignore[method-assign]
        # One job after another, as a daemon with `workers = 1` does (reservations left open would
        # lengthen the kept state's tail that every settlement folds).
        res_t: list[float] = []
        com_t: list[float] = []
        for i in range(reps + max(3, reps // 10)):
            jid = f"b{i}"
            t0 = time.perf_counter()
            row = led.reserve(jid, f"u{i % 50}", plan, tr.name, owner=jid, file=jid, dataset=j.dataset, public=True)
            t1 = time.perf_counter()
            led.commit(jid, plan.epsilon, plan.delta, row_id=row, progress={"epoch": 2, "epochs": 2}, durable=False)
            t2 = time.perf_counter()
            if i >= max(3, reps // 10):
                res_t.append(t1 - t0)
                com_t.append(t2 - t1)
        out["ledger: reservation (CPU)"] = median(res_t)
        out["ledger: commit (CPU) †"] = median(com_t)
        led.transaction = orig_tx  # type: ignore[method-assign]
        reports: list[dict[str, Any]] = []
        out["mock training (numpy, safetensors)"] = _warm(
            lambda: tr.train(j, plan, pl.ctx, reports.append), reps)
        res = tr.train(j, plan, pl.ctx, reports.append)
        rel, n_source = pl.released(j, res)
        art = artifacts.build_artifact(j, tr.name, rel, plan, n_source=n_source)
        body = artifacts.artifact_bytes(art)
        out["artifact + RFC 8785 hash"] = _warm(
            lambda: artifacts.artifact_bytes(artifacts.build_artifact(j, tr.name, rel, plan, n_source=n_source)), reps)
        started = artifacts.utcnow()

        def sign() -> None:
            pred = artifacts.provenance(j, tr.name, rel, plan, started, art["created_at"], pl.versions)
            pl.sign(signing.statement(f"{j.job_id}.json", body, pred))

        out["statement + DSSE envelope + signature"] = _warm(sign, reps)
        buf = io.StringIO()
        setup_logging("INFO", "text", stream=buf)
        lg = logging.getLogger("pandacead.job")
        extra = {"job_id": j.job_id, "user_id": j.user_id}

        def lines(k: int) -> Any:
            def f() -> None:
                for _ in range(k):
                    lg.info("job %s reserved ε=%.6g δ=%.3g on %s (σ=%s, q=%s, steps=%s)", j.job_id, 0.01, 1e-5,
                            "mock", None, 0.08, None, extra=extra)
                buf.seek(0)
                buf.truncate()
            return f

        # A mock job's nine INFO lines: seven before its artifact is out (claimed, validated, reserved,
        # reads the data, two epochs, trained), two after (published, committed).
        out["7 log lines"] = _warm(lines(7), reps)
        out["2 log lines †"] = _warm(lines(2), reps)
        logging.getLogger().handlers.clear()
        spool.release()
        return out
    finally:
        rm_tree(root)


def run(n: int = 300, rounds: int = 3, reps: int = 300) -> dict[str, Any]:
    root = bench_root()
    sizes = {"artifact": 1393, "envelope": 1747}  # bench_pipeline's output sizes
    fl: list[float] = []
    fio: list[float] = []
    fio_art: list[float] = []
    fl_tp = fio_tp = 0.0
    try:
        for r in range(rounds):
            a = floor.measure(root / f"floor-{r}", n, sizes["artifact"], sizes["envelope"])
            b = io_floor(root / f"io-{r}", n, sizes["artifact"], sizes["envelope"])
            fl += a["per_job"]
            fio += b["per_job"]
            fio_art += b["to_artifact"]
            fl_tp += a["total_s"] / a["n"]
            fio_tp += b["total_s"] / b["n"]
            rm_tree(root / f"floor-{r}")
            rm_tree(root / f"io-{r}")
    finally:
        rm_tree(root)
    py = pieces(reps)
    floor_ms = fl_tp / rounds * 1e3
    io_ms = fio_tp / rounds * 1e3
    py_ms = sum(py.values()) * 1e3
    py_before_ms = sum(v for k, v in py.items() if not k.endswith("†")) * 1e3
    io_art_p50 = median(fio_art) * 1e3
    return {
        "config": {"n": n, "rounds": rounds, "reps": reps},
        "floor_ms_per_job": floor_ms,
        "floor_p50_ms": median(fl) * 1e3,
        "io_floor_ms_per_job": io_ms,
        "io_floor_p50_ms": median(fio) * 1e3,
        "io_floor_to_artifact_p50_ms": io_art_p50,
        "python_pieces_ms": {k: v * 1e3 for k, v in py.items()},
        "python_ms": py_ms,
        "python_before_artifact_ms": py_before_ms,
        # One job after another (what `workers = 1` does): its I/O and its Python add up.
        "bound_ms_per_job": io_ms + py_ms,
        # Latency from the claim to the artifact: the I/O and the Python before it (no wake-up, no loop).
        "bound_to_artifact_ms": io_art_p50 + py_before_ms,
        # Were every job's Python perfectly overlapped with the previous job's I/O (two CPUs): the larger.
        "bound_overlapped_ms_per_job": max(io_ms, py_ms),
        "ratios": {
            "io_floor / floor": io_ms / floor_ms,
            "bound / floor (throughput, serial)": (io_ms + py_ms) / floor_ms,
            "bound / floor (throughput, ideal overlap)": max(io_ms, py_ms) / floor_ms,
            "bound to artifact / floor p50 (latency)": (io_art_p50 + py_before_ms) / (median(fl) * 1e3),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="jobs per floor round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=300, help="calls per Python piece")
    a = ap.parse_args()
    print(json.dumps(run(a.n, a.rounds, a.reps), indent=2))


if __name__ == "__main__":
    main()
