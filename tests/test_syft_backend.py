"""The syft backend: a job as a PySyft code request on the earner's own datasite.

One datasite is launched for the whole module (importing syft takes ~6 s);
tests that need "nothing launched yet" run in a subprocess instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.syft,
    pytest.mark.slow,
    # syft 0.9.5 itself uses pydantic v1-era APIs.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:syft.*"),
]

sy = pytest.importorskip("syft")
pytest.importorskip("pandacead_opacus.training")

from pandacead_syft import datasite  # noqa: E402
from pandacead_syft.runs import RunRecord  # noqa: E402
from pandacead_syft.trainer import SyftTrainer  # noqa: E402

from pandacead import datasets  # noqa: E402
from pandacead.errors import JobFailed, JobRejected  # noqa: E402
from pandacead.jobs import validate  # noqa: E402
from pandacead.testing import (  # noqa: E402
    check_identity,
    check_plan,
    check_refusals,
    check_train,
    impossible_jobs,
    make_context,
)
from pandacead.trainers import TrainerContext  # noqa: E402

GOOD_JOB = {
    "dataset": "synthetic",
    "task": "classification",
    "dp": {"epsilon": 1.0, "delta": 1e-5, "clip": 1.0},
    "epochs": 5,
    "batch_size": 64,
    "learning_rate": 0.1,
    "seed": 7,
    "backend": "syft",
}
# σ fixed far too low for ε = 1: the accountant must refuse it.
OVERSPENDING_JOB = {**GOOD_JOB, "dp": {**GOOD_JOB["dp"], "noise_multiplier": 0.3}, "epochs": 20}


def make_job(job_id: str, raw: dict | None = None, user: str = "alice"):
    return validate({**(raw or GOOD_JOB), "job_id": job_id, "user_id": user})


def make_ctx(home: str) -> TrainerContext:
    return make_context(f"{home}/state", datasets=["synthetic"], base_dir=home, torch_threads=1)


@pytest.fixture(scope="module")
def syft_home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("syft-home"))


@pytest.fixture(scope="module")
def ctx(syft_home):
    return make_ctx(syft_home)


@pytest.fixture(scope="module")
def trainer():
    yield SyftTrainer()
    datasite.shutdown()


@pytest.fixture
def training_calls(monkeypatch):
    """Count executions of the Opacus training function (the syft function imports it at run time)."""
    import pandacead_opacus.training as training

    calls: list[int] = []
    real = training.train_arrays

    def counting(job, plan, arrays, *args, **kwargs):
        calls.append(len(arrays["y_train"]))
        return real(job, plan, arrays, *args, **kwargs)

    monkeypatch.setattr(training, "train_arrays", counting)
    return calls


def same_tensors(a: bytes, b: bytes) -> bool:
    """Equal safetensors content (the header's metadata order may differ between writes)."""
    from safetensors.numpy import load

    ta, tb = load(a), load(b)
    return ta.keys() == tb.keys() and all(ta[k].tobytes() == tb[k].tobytes() for k in ta)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_registering_the_plugin_imports_neither_syft_nor_torch():
    proc = run_python(
        """
        import sys
        import pandacead_syft
        found = []
        pandacead_syft.pandacead_register_trainers(register=found.append)
        assert [(t.name, t.isolated) for t in found] == [("syft", True)], found
        heavy = [m for m in ("syft", "torch", "opacus") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_overspending_job_is_refused_in_plan_before_any_syft_call(tmp_path):
    # A fresh process, so "syft never imported, no datasite launched" is observable.
    proc = run_python(
        f"""
        import json, sys
        from pandacead import datasets
        from pandacead.errors import JobError
        from pandacead.jobs import validate
        from pandacead.trainers import TrainerContext
        from pandacead_syft import datasite
        from pandacead_syft.trainer import SyftTrainer

        home = {str(tmp_path)!r}
        info = datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], home)
        ctx = TrainerContext(datasets={{"synthetic": info}}, state_dir=home + "/state",
                             options={{"home": home}})
        job = validate({{**json.loads({json.dumps(OVERSPENDING_JOB)!r}),
                         "job_id": "syft-overspend-1", "user_id": "alice"}})
        try:
            SyftTrainer().plan(job, ctx)
            out = {{"status": "planned"}}
        except JobError as exc:
            out = {{"status": exc.status, "message": exc.message}}
        out["syft_imported"] = "syft" in sys.modules
        out["datasite"] = repr(datasite.current()) if datasite.current() else None
        print(json.dumps(out))
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "rejected", out
    assert out["message"]
    assert out["syft_imported"] is False
    assert out["datasite"] is None
    assert not (tmp_path / "state" / "syft").exists()  # no datasite, no run record, nothing


def test_job_trains_end_to_end_on_the_private_asset(trainer, ctx, training_calls):
    from safetensors.numpy import load as load_safetensors

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    job = make_job("syft-e2e-1")
    plan = trainer.plan(job, ctx)
    events: list[dict] = []
    result = trainer.train(job, plan, ctx, events.append)

    assert 0 < result.epsilon <= plan.epsilon <= 1.0
    assert result.accuracy is not None and result.accuracy >= 0.75
    tensors = load_safetensors(result.model)
    assert tensors and all(v.size for v in tensors.values())
    assert result.provenance["backend"] == "syft"
    assert result.provenance["syft_version"] == sy.__version__ == "0.9.5"
    assert "syft 0.9.5" in result.provenance["executor"].lower().replace("pysyft", "syft")
    # Trained once, on the private rows only: the mock run never reached training.
    info = ctx.datasets["synthetic"]
    assert training_calls == [info.n_train]
    stages = [e["stage"] for e in events if "stage" in e]
    assert stages == ["datasite", "dataset", "submitted", "approved"]
    epochs = [e for e in events if "epoch" in e]  # forwarded from training inside syft
    assert epochs and epochs[-1]["epoch"] == job.epochs
    assert all(e["epsilon"] <= plan.epsilon for e in epochs)
    assert RunRecord(f"{ctx.state_dir}/syft/runs.sqlite").get(job.job_id)["state"] == "executed"
    # launch() sets the root logger to its own level; the daemon's logging is restored.
    assert (root.level, root.handlers) == (level, handlers)


def test_a_job_runs_on_the_private_data_at_most_once(trainer, ctx, training_calls):
    job = make_job("syft-once-1")
    plan = trainer.plan(job, ctx)
    trainer.train(job, plan, ctx, lambda e: None)
    assert len(training_calls) == 1

    # Through pandacead: refused, in this process and from any other sharing the state dir.
    with pytest.raises(JobRejected, match="at most once"):
        trainer.train(job, plan, ctx, lambda e: None)
    with pytest.raises(JobRejected, match="at most once"):
        RunRecord(f"{ctx.state_dir}/syft/runs.sqlite").claim(job.job_id, "other", "alice")

    # Straight through syft (which does not enforce its single-execution policy):
    # the approval was withdrawn after the run, so the datasite refuses too.
    site = datasite.current()
    spender = site.spender("alice")
    asset = site.asset_for(spender, site.assets["synthetic"][1])
    with datasite.syft_io(), pytest.raises(Exception, match="DENIED"):
        getattr(spender.code, datasite.code_name_for(job.job_id))(data=asset)
    assert len(training_calls) == 1


def test_a_failing_user_function_reports_its_real_cause(trainer, ctx, monkeypatch):
    import pandacead_opacus.training as training

    def broken(*args, **kwargs):
        raise RuntimeError("synthetic failure injected by the test")

    monkeypatch.setattr(training, "train_arrays", broken)
    job = make_job("syft-fail-1")
    plan = trainer.plan(job, ctx)
    with pytest.raises(JobFailed) as caught:
        trainer.train(job, plan, ctx, lambda e: None)
    err = caught.value
    assert "syft-fail-1" in err.message
    assert "RuntimeError: synthetic failure injected by the test" in err.message
    assert "contact the Server Admin" not in err.message
    assert any("Traceback" in d and "broken" in d for d in err.details)
    assert RunRecord(f"{ctx.state_dir}/syft/runs.sqlite").get(job.job_id)["state"] == "failed"
    with pytest.raises(JobRejected):  # a failed run has touched private data too
        trainer.train(job, plan, ctx, lambda e: None)


def test_keeps_the_trainer_contract_and_trains_exactly_as_the_opacus_backend(trainer, ctx):
    import dataclasses

    from pandacead_opacus.trainer import OpacusTrainer

    # Without a noise seed both backends draw fresh OS randomness; fix one to compare.
    ctx = dataclasses.replace(ctx, options={**ctx.options, "noise_seed": 1234567})
    job = make_job("syft-contract-1")
    check_identity(trainer)
    plan = check_plan(trainer, job, ctx)  # reads no data, same cost twice
    check_refusals(trainer, ctx, impossible_jobs(job))
    result, _events = check_train(trainer, job, plan, ctx)
    # One DP implementation: the same job on the opacus backend gives the same model and ε.
    reference = OpacusTrainer().train(job, OpacusTrainer().plan(job, ctx), ctx, lambda e: None)
    assert same_tensors(result.model, reference.model)
    assert (result.epsilon, result.accuracy) == (reference.epsilon, reference.accuracy)


def test_the_secret_noise_seed_reaches_training_but_not_the_code_request(trainer, ctx, monkeypatch):
    import functools

    import pandacead_opacus.training as training

    secret = 918273645546372819
    seen: list[dict] = []
    real = training.train_arrays

    @functools.wraps(real)  # keeps the signature the syft function inspects
    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_arrays", spy)
    job_ctx = dataclasses.replace(ctx, options={**ctx.options, "noise_seed": secret})
    job = make_job("syft-noise-seed-1")
    trainer.train(job, trainer.plan(job, job_ctx), job_ctx, lambda e: None)

    assert len(seen) == 1
    if "noise_seed" in inspect.signature(real).parameters:
        assert seen[0]["noise_seed"] == secret
    site = datasite.current()
    with datasite.syft_io():
        code = next(
            c
            for c in site.admin.api.services.code.get_all()
            if c.service_func_name == datasite.code_name_for(job.job_id)
        )
        stored = repr(
            [
                rule.val
                for rules in code.input_policy_init_kwargs.values()
                for rule in rules.values()
            ]
        )
    assert "syft-noise-seed-1" in stored  # the job spec is bound into the request...
    assert str(secret) not in stored + code.raw_code  # ...its secret noise seed is not


def test_a_dataset_is_uploaded_once_and_again_when_its_digest_changes(trainer, ctx):
    site = datasite.current()
    assert site is not None
    info = ctx.datasets["synthetic"]
    loads: list[str] = []

    def load():
        loads.append("load")
        return datasets.load(info, ctx.options["home"])

    first = site.ensure_dataset(info, load)
    assert loads == []  # uploaded by the earlier jobs already
    changed = dataclasses.replace(info, digest="sha256:" + "0" * 64, commitment="hmac-sha256:" + "0" * 64)
    second = site.ensure_dataset(changed, load)
    assert loads == ["load"] and second != first
    with datasite.syft_io():
        held = [(d.name, d.summary) for d in site.admin.api.services.dataset.get_all()]
    # syft's store names the version by the keyed commitment, never by the plain digest
    assert held == [("synthetic", changed.commitment)]
    # its copies of the data are readable by the service alone (issue 12)
    loose = [str(p) for p in site.root.parent.rglob("*")
             if not p.is_symlink() and p.stat().st_mode & 0o077]
    assert not loose, loose[:5]
    site.ensure_dataset(info, load)  # back to the real digest for any later test


# --------------------------------------------------------------------------- through the daemon and CLI


def _artifact_checks(artifact: dict) -> None:
    import base64

    from safetensors.numpy import load as load_safetensors

    assert artifact["backend"] == "syft"
    assert artifact["model_format"] == "safetensors"
    assert 0 < artifact["epsilon"] <= artifact["dp"]["epsilon"] == 1.0
    assert artifact["accuracy"] >= 0.75
    assert load_safetensors(base64.b64decode(artifact["model"]))


def test_daemon_trains_with_syft_and_refuses_an_overspending_job_uncharged(tmp_path):
    import base64

    from conftest import cli, drop, make_home, run_once

    home = make_home(tmp_path / "home", backend="syft")
    good = {**GOOD_JOB, "job_id": "daemon-syft-1", "user_id": "alice"}
    greedy = {**OVERSPENDING_JOB, "job_id": "daemon-syft-2", "user_id": "alice"}
    drop(home, "a.json", good)
    drop(home, "b.json", greedy)
    proc = run_once(home)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]

    artifact = json.loads((home / "outbox" / "daemon-syft-1.json").read_text())
    _artifact_checks(artifact)
    envelope = json.loads((home / "outbox" / "daemon-syft-1.dsse.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert '"syft_version": "0.9.5"' in json.dumps(statement["predicate"])  # provenance names syft

    report = json.loads((home / "outbox" / "daemon-syft-2.error.json").read_text())
    assert report["status"] == "rejected" and "noise multiplier" in report["error"]
    assert not (home / "outbox" / "daemon-syft-2.json").exists()
    budget = json.loads(cli(home, "budget", "show", "alice", "--json").stdout)
    assert budget["epsilon_spent"] == pytest.approx(artifact["epsilon"])  # the refused job cost 0
    assert budget["epsilon_reserved"] == 0
    # The refused job never reached the datasite: no run record, no code request.
    runs = RunRecord(home / "state" / "syft" / "runs.sqlite")
    assert runs.get("daemon-syft-1")["state"] == "executed"
    assert runs.get("daemon-syft-2") is None


def test_pandacead_train_runs_a_syft_job_one_shot(tmp_path):
    from conftest import cli, make_home

    home = make_home(tmp_path / "home")
    job = {**GOOD_JOB, "job_id": "cli-syft-1"}
    proc = cli(
        home, "train", "--home", str(home), "--user-id", "bob", input=json.dumps(job).encode()
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    artifact = json.loads(
        proc.stdout
    )  # stdout carries the artifact only: syft's chatter is kept off it
    _artifact_checks(artifact)
    assert artifact["user_id"] == "bob"
