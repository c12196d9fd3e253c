"""[executor] kind = "ray": the daemon plans, reserves, signs, publishes and commits; only train runs on the cluster.

Against a real local Ray cluster (a head and a worker node, one CPU each),
started and torn down by the test.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import drop, job, ledger, make_home, outcomes, wait_for  # noqa: E402
from raycluster import LocalRayCluster, ray_available  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ray_available(), reason="ray is not installed"),
]
pytest.importorskip("opacus")

N_JOBS = 20


def _ray_home(path: Path, address: str) -> Path:
    extra = f"""
[executor]
kind = "ray"
address = "{address}"
max_retries = 3
"""
    home = make_home(path, backend="opacus", workers=2, default_epsilon=1000.0, timeout=300, extra=extra)
    return home


def _job(i: int) -> dict:
    return job(f"r{i:02d}", epsilon=5.0, epochs=1, batch_size=64, learning_rate=0.5,
               dp={"enabled": True, "epsilon": 5.0, "delta": 1e-5, "clip": 1.0, "noise_multiplier": 1.0,
                   "accountant": "rdp"})


def _node_workers(home: Path) -> list[int]:
    """pandacead worker processes serving `home` (for the no-orphans check)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pandacead.worker" in argv and str(home).encode() in argv:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.fixture(scope="module")
def cluster():
    with LocalRayCluster(nodes=2, cpus_per_node=1) as c:
        yield c


def test_twenty_jobs_on_two_nodes_survive_a_node_killed_mid_run(tmp_path, cluster, daemon_factory):
    home = _ray_home(tmp_path / "h", cluster.address)
    d = daemon_factory(home)
    for i in range(N_JOBS):
        drop(home, f"r{i:02d}.json", _job(i))

    # Two trainings at once on two one-CPU nodes: one of them is on the worker node. Kill it then.
    def two_running() -> bool:
        rows = list(ledger(home).query("SELECT count(*) AS n FROM jobs WHERE status = 'running'"))
        done = sum(1 for v in outcomes(home).values() if v)
        return rows[0]["n"] >= 2 and done >= 2

    def all_done() -> bool:
        return len([v for v in outcomes(home).values() if v]) >= N_JOBS

    mid_run: list[bool] = []

    def mid_run_or_all_done() -> bool:
        if two_running():
            mid_run.append(True)
            return True
        return all_done()

    wait_for(mid_run_or_all_done, timeout=400, interval=0.2)
    if not mid_run:  # an idle, fast machine ran all twenty before two were ever seen at once
        pytest.skip("every job finished before two trained at once: no mid-run moment to kill a node")
    seen = {r["job_id"] for r in ledger(home).query("SELECT job_id FROM jobs")}  # claimed before the kill
    cluster.kill_node(1)
    killed_at = time.monotonic()
    wait_for(lambda: len([v for v in outcomes(home).values() if v]) >= N_JOBS, timeout=600, interval=0.5)
    rc = d.stop()
    assert rc == 0, d.output()[-4000:]
    got = outcomes(home)
    assert got == {f"r{i:02d}": "artifact" for i in range(N_JOBS)}, d.output()[-3000:]
    led = ledger(home)
    spends = led.spends("alice")
    assert sorted(s["job_id"] for s in spends) == sorted(got)  # one reservation per job
    assert all(s["state"] == "committed" for s in spends)
    after_kill: set[str] = set()
    nodes: set[str] = set()
    for i in range(N_JOBS):
        art = json.loads((home / "outbox" / f"r{i:02d}.json").read_bytes())
        assert art["epsilon"] == pytest.approx(next(s["epsilon"] for s in spends if s["job_id"] == art["job_id"]))
        env = json.loads((home / "outbox" / f"r{i:02d}.dsse.json").read_bytes())
        assert env["signatures"]
        executor = json.loads(base64.b64decode(env["payload"]))["predicate"]["dataset"]["executor"]
        assert executor["kind"] == "ray"
        nodes.add(executor["node"])
        if art["job_id"] not in seen:
            after_kill.add(executor["node"])
    assert len(nodes) == 2  # both nodes trained
    assert len(after_kill) == 1  # what was claimed after the kill all ran on the head
    budget = led.budget("alice")
    assert budget.epsilon_spent == pytest.approx(sum(s["epsilon"] for s in spends))
    assert budget.epsilon_reserved == 0
    # The killed node's pandacead workers died with it (PR_SET_PDEATHSIG); none is left training.
    wait_for(lambda: len(_node_workers(home)) == 0 or time.monotonic() - killed_at > 60, timeout=90)
    left = _node_workers(home)
    for pid in left:
        os.kill(pid, 9)
    assert not left


def test_a_duplicate_delivery_trains_the_same_model_under_one_reservation(tmp_path, cluster):
    """At least once: the same train request run twice on the cluster gives the same release, nothing more."""
    from pandacead_opacus.trainer import OpacusTrainer

    from pandacead.app import App
    from pandacead.config import load_settings
    from pandacead.executor import RayExecutor
    from pandacead.jobs import Job
    from pandacead.pipeline import Pipeline

    home = _ray_home(tmp_path / "d", cluster.address)
    settings = load_settings(home, environ={})
    app = App(settings)
    pipeline = Pipeline(settings, app.plugins, app.ctx, "test", noise_key=app.noise_key)
    job = Job.from_dict({**_job(1), "job_id": "dup"})
    ctx = pipeline.job_context(job)
    assert ctx.options["noise_seed"]  # the secret travels with the request, as to a local worker
    plan = OpacusTrainer().plan(job, ctx)
    request = {"op": "train", "trainer": "opacus", "job": job.to_dict(), "ctx": ctx.to_dict(), "plan": plan.to_dict()}
    ex = RayExecutor(home, settings.data["executor"])
    try:
        first = ex.train(request, 300)
        second = ex.train(request, 300)
    finally:
        import ray

        ray.shutdown()
    assert first["model"] == second["model"] and first["epsilon"] == second["epsilon"] == plan.epsilon
    assert ledger(home).spends() == []  # the executor never touches the ledger: the daemon charges, once
