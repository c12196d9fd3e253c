"""Who pays: every job is charged to the data it touches, and buyers are who they say they are.

Attacks from issue #13, performed against a real ledger, real daemons and
real unix permissions: Sybil accounts on one dataset, impersonation from a
buyer's inbox, reading another buyer's outputs, squatting job_ids, racing
daemons, and a ledger written by the previous release.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from pathlib import Path

import pytest
from conftest import cli, env_for, job, ledger, make_home, run_once, wait_for

from pandacead.accounting import curve_to_json, gaussian_noise_for, subsampled_gaussian_rdp
from pandacead.errors import JobRejected
from pandacead.ledger import DatasetPolicy, Ledger

REPO = Path(__file__).resolve().parent.parent


def declared(eps: float = 1.0, delta: float = 1e-5) -> types.SimpleNamespace:
    """A plan with a declared (ε, δ) and no Rényi curve (mock and third-party backends)."""
    return types.SimpleNamespace(epsilon=eps, delta=delta, noise_multiplier=None, sample_rate=None, steps=None,
                                 accountant="declared", rdp=None)


def dpsgd(eps: float = 1.0) -> types.SimpleNamespace:
    q, steps, delta = 0.04, 250, 1e-6
    sigma = gaussian_noise_for(eps, delta, q, steps)
    return types.SimpleNamespace(epsilon=eps, delta=delta, noise_multiplier=sigma, sample_rate=q, steps=steps,
                                 accountant="rdp", rdp=curve_to_json(subsampled_gaussian_rdp(q, sigma, steps)))


def private_ledger(path: Path, mode: str, eps: float = 3.0, delta: float = 1e-3) -> Ledger:
    policies = {
        "clinic": DatasetPolicy("clinic", "clinic-a", False, eps, delta),
        "synthetic": DatasetPolicy("synthetic", None, True, 0.0, 0.0),
    }
    return Ledger(path, default_epsilon=10, default_delta=1e-3, composition=mode, datasets=policies)


def admitted(led: Ledger, plans: list[tuple[str, str, object]], dataset: str = "clinic") -> list[str]:
    """Reserve and commit each (job_id, account, plan) on `dataset`; the job_ids admitted."""
    out = []
    for job_id, account, plan in plans:
        try:
            led.reserve(job_id, account, plan, "mock", owner="t", dataset=dataset)
        except JobRejected:
            continue
        led.commit(job_id, plan.epsilon, plan.delta)
        out.append(job_id)
    return out


# -- the dataset's budget binds all buyers together -------------------------------------


@pytest.mark.parametrize("mode", ["basic", "rdp"])
def test_private_dataset_with_budget_3_admits_three_eps1_jobs_from_five_accounts_or_five_names(tmp_path, mode):
    led = private_ledger(tmp_path / "a.db", mode)
    five_accounts = admitted(led, [(f"j{i}", f"buyer{i}", declared()) for i in range(5)])
    assert len(five_accounts) == 3
    s = led.dataset_summary("clinic")
    charged = sum(r["epsilon"] for r in led.spends(dataset="clinic", state="committed"))
    assert s["epsilon_spent"] == pytest.approx(charged) == pytest.approx(3.0)
    assert s["epsilon_remaining"] == pytest.approx(0.0) and s["jobs"] == 3 and s["accounts"] == 3

    led2 = private_ledger(tmp_path / "b.db", mode)
    five_names = admitted(led2, [(f"name{i}", "alice", declared()) for i in range(5)])
    assert len(five_names) == 3
    assert led2.dataset_summary("clinic")["epsilon_spent"] == pytest.approx(3.0)
    # The account could have paid for all five: it is the dataset that refused.
    assert led2.budget("alice").epsilon_spent == pytest.approx(3.0)


@pytest.mark.parametrize("mode", ["basic", "rdp"])
def test_sybil_many_fresh_accounts_never_exceed_the_dataset_budget(tmp_path, mode):
    led = private_ledger(tmp_path / "s.db", mode, eps=3.0, delta=1e-3)
    plan = dpsgd(0.5) if mode == "rdp" else declared(0.5)
    got = admitted(led, [(f"s{i}", f"sybil-{uuid.uuid4().hex[:8]}", plan) for i in range(80)])
    s = led.dataset_summary("clinic")
    assert s["epsilon_spent"] <= 3.0 * (1 + 1e-9)
    # All buyers together are one filter: exactly what a single account would get on that budget.
    alone = private_ledger(tmp_path / "alone.db", mode, eps=3.0, delta=1e-3)
    alone.set_budget("one", 1000.0, 0.5)
    assert len(got) == len(admitted(alone, [(f"o{i}", "one", plan) for i in range(80)]))
    if mode == "basic":
        assert len(got) == 6
    else:
        assert 6 < len(got) < 80  # rdp composes better, and still closes
    # Each Sybil account spent only its own job: the accounts alone would never have stopped them.
    assert max(b.epsilon_spent for b in led.budgets()) <= 0.5 + 1e-12


def test_public_dataset_needs_no_dataset_budget_but_the_account_still_pays(tmp_path):
    led = private_ledger(tmp_path / "p.db", "basic", eps=0.0)
    assert len(admitted(led, [(f"p{i}", "alice", declared(2.0)) for i in range(6)], dataset="synthetic")) == 5
    assert led.budget("alice").epsilon_spent == pytest.approx(10.0)
    s = led.dataset_summary("synthetic")
    assert s["public"] is True and s["epsilon_remaining"] is None and s["epsilon_spent"] == pytest.approx(10.0)
    # A private dataset with budget 0 admits nothing, and says so without numbers.
    with pytest.raises(JobRejected) as exc:
        led.reserve("z", "bob", declared(0.1), "mock", dataset="clinic")
    assert "does not fit the privacy budget of dataset clinic" in exc.value.message
    assert led.spend("z") is None and led.budget("bob").epsilon_reserved == 0


def test_refusal_never_reveals_the_datasets_or_other_accounts_numbers(tmp_path):
    led = private_ledger(tmp_path / "r.db", "basic", eps=2.5)
    admitted(led, [("a1", "alice", declared(1.0)), ("a2", "alice", declared(1.0))])
    with pytest.raises(JobRejected) as exc:
        led.reserve("b1", "bob", declared(1.0), "mock", dataset="clinic")
    text = exc.value.message + " ".join(exc.value.details)
    for leak in ("0.5", "2.5", "2 ", "alice", "left", "remaining", "spent"):
        assert leak not in text, (leak, text)


def test_admission_preview_answers_without_reserving(tmp_path):
    led = private_ledger(tmp_path / "q.db", "basic", eps=3.0)
    admitted(led, [("a1", "alice", declared(2.0))])
    before = (led.spends(), led.audit())
    p = led.admission_preview("bob", "clinic", declared(0.5))
    assert p["fits"] and p["account_fits"] and p["dataset_fits"]
    assert p["dataset_epsilon_remaining"] == pytest.approx(1.0)
    assert p["dataset_epsilon_remaining_after"] == pytest.approx(0.5)
    assert p["account_epsilon_remaining_after"] == pytest.approx(9.5)
    no = led.admission_preview("bob", "clinic", declared(1.5))
    assert not no["fits"] and no["dataset_fits"] is False and "does not fit" in no["refusal"]
    assert "1.0" not in no["refusal"]
    assert led.admission_preview("ghost", "clinic", declared(0.5), create_account=False)["fits"] is False
    assert (led.spends(), led.audit()) == before


@pytest.mark.parametrize("mode", ["basic", "rdp"])
def test_reset_really_resets_under_both_modes(tmp_path, mode):
    led = private_ledger(tmp_path / "x.db", mode, eps=100.0)
    led.set_budget("alice", 3.0)
    assert len(admitted(led, [(f"x{i}", "alice", declared(1.0)) for i in range(5)])) == 3
    led.reset("alice")
    assert led.summary("alice")["epsilon_spent"] == 0
    assert len(admitted(led, [(f"y{i}", "alice", declared(1.0)) for i in range(5)])) == 3
    # The dataset stays charged for all six: a reset of the account is not a reset of the data.
    assert led.dataset_summary("clinic")["epsilon_spent"] == pytest.approx(6.0)
    led.reset_dataset("clinic")
    assert led.dataset_summary("clinic")["epsilon_spent"] == 0


# -- end to end: buyers, directories, the daemon ------------------------------------------

CSV_DATASET = """
[datasets.clinic]
kind = "csv"
path = "clinic.csv"
label = "y"
task = "classification"
owner = "clinic-a"
epsilon_budget = 3.0
delta_budget = 1e-3
rows = 300

[datasets.ward]
kind = "csv"
path = "clinic.csv"
label = "y"
task = "classification"
owner = "clinic-b"
epsilon_budget = 3.0
rows = 300
"""


def write_csv(path: Path, rows: int = 300) -> None:
    import random

    rnd = random.Random(3)
    lines = ["a,b,c,y"]
    for _ in range(rows):
        a, b, c = (rnd.uniform(-1, 1) for _ in range(3))
        lines.append(f"{a:.4f},{b:.4f},{c:.4f},{int(a + 0.5 * b > 0)}")
    path.write_text("\n".join(lines) + "\n")


def nss_job(job_id: str, user_id: str | None, dataset: str = "clinic", eps: float = 1.0) -> dict:
    j = job(job_id, user_id or "x", epsilon=eps, dataset=dataset, backend="nss", seed=hash(job_id) % 1000)
    if user_id is None:
        del j["user_id"]
    return j


def clinic_home(tmp_path: Path, mode: str = "basic", **kw) -> Path:
    home = tmp_path / "home"
    home.mkdir(parents=True)
    write_csv(home / "clinic.csv")
    make_home(home, extra=CSV_DATASET, **kw)
    cfg = home / "pandacead.toml"
    cfg.write_text(cfg.read_text().replace("[budget]\n", f'[budget]\ncomposition = "{mode}"\n', 1))
    return home


def drop_in(directory: Path, name: str, content: dict) -> None:
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(content))
    os.replace(tmp, directory / name)


def add_buyer(home: Path, name: str, *extra: str) -> dict:
    r = cli(home, "buyers", "add", name, "--home", str(home), "--json", *extra)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_five_buyers_on_a_private_dataset_impersonation_and_squatting(tmp_path):
    home = clinic_home(tmp_path)
    buyers = [f"b{i}" for i in range(5)]
    for b in buyers + ["victim"]:
        add_buyer(home, b)
    # Each buyer drops one ε=1 job on the dataset (budget ε=3), naming itself or nobody.
    for i, b in enumerate(buyers):
        drop_in(home / "inbox" / b, "job.json", nss_job("same-id", b if i % 2 else None))
    # Impersonation: a job in b0's inbox naming the victim's account.
    drop_in(home / "inbox" / "b0", "evil.json", nss_job("evil", "victim", dataset="synthetic"))
    # A directory the admin never registered in the ledger.
    (home / "inbox" / "stranger").mkdir()
    drop_in(home / "inbox" / "stranger", "s.json", nss_job("s", None, dataset="synthetic"))
    # One account under five job names, on the admin's inbox, on the other dataset.
    for i in range(5):
        drop_in(home / "inbox", f"w{i}.json", nss_job(f"w{i}", "alice", dataset="ward"))
    r = run_once(home)
    assert r.returncode == 0, r.stderr.decode()[-3000:]

    arts = {b: (home / "outbox" / b / "same-id.json") for b in buyers}
    ok = [b for b, p in arts.items() if p.exists()]
    refused = [b for b in buyers if (home / "outbox" / b / "same-id.error.json").exists()]
    assert len(ok) == 3 and len(refused) == 2, (ok, refused)
    for b in ok:  # job_ids are scoped per account: five "same-id" jobs, none a replay of another
        art = json.loads(arts[b].read_text())
        assert art["user_id"] == b and (home / "outbox" / b / "same-id.dsse.json").exists()
    for b in refused:
        rep = json.loads((home / "outbox" / b / "same-id.error.json").read_text())
        assert "does not fit the privacy budget of dataset clinic" in rep["error"]
        assert "left" not in json.dumps(rep) and "remaining" not in json.dumps(rep)
    assert not list((home / "outbox").glob("same-id*"))  # nothing in the admin's outbox

    evil = json.loads((home / "outbox" / "b0" / "evil.error.json").read_text())
    assert evil["status"] == "rejected" and "victim" in evil["error"] and "Nothing was charged" in evil["error"]
    stranger = json.loads((home / "outbox" / "stranger" / "s.error.json").read_text())
    assert "not registered" in stranger["error"]
    assert stat_mode(home / "outbox" / "stranger") == 0o700  # made by the daemon: the service's only

    shown = json.loads(cli(home, "datasets", "show", "clinic", "--json").stdout)
    charged = sum(json.loads(arts[b].read_text())["epsilon"] for b in ok)
    assert shown["epsilon_spent"] == pytest.approx(charged) and charged == pytest.approx(3.0)
    assert shown["epsilon_budget"] == 3.0 and shown["owner"] == "clinic-a" and shown["public"] is False
    assert shown["epsilon_remaining"] == pytest.approx(0.0, abs=1e-6) and shown["rows"] == 300 and shown["features"] == 3
    assert {"dataset", "owner", "public", "epsilon_budget", "epsilon_spent", "epsilon_reserved", "epsilon_remaining",
            "delta_budget", "delta_spent"} <= set(shown)
    ward = json.loads(cli(home, "budget", "show", "--dataset", "ward", "--json").stdout)
    assert ward["epsilon_spent"] == pytest.approx(3.0) and ward["jobs"] == 3
    assert sorted(p.name for p in (home / "outbox").glob("w*.json") if ".error" not in p.name
                  and ".dsse" not in p.name) == ["w0.json", "w1.json", "w2.json"]

    led = ledger(home)
    try:
        assert led.budget("victim").epsilon_spent == 0 and led.spends("victim") == []
        assert [s for s in led.spends() if s["job_id"] in ("evil", "s")] == []
        assert not led.account_exists("stranger")
        assert {s["scope"] for s in led.spends(dataset="clinic")} == set(ok)
    finally:
        led.close()
    listed = cli(home, "jobs", "list").stdout.decode()
    assert "DATASET" in listed and "clinic" in listed and "ward" in listed
    hist = cli(home, "budget", "history", "alice").stdout.decode()
    assert "DATASET" in hist and "ward" in hist
    everyone = json.loads(cli(home, "datasets", "list", "--json").stdout)
    assert {"clinic", "ward", "synthetic"} <= {d["dataset"] for d in everyone}


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


@pytest.mark.parametrize("mode", ["rdp"])
def test_datasets_show_under_rdp_spent_is_certified_and_within_budget(tmp_path, mode):
    home = clinic_home(tmp_path, mode)
    for i in range(8):
        drop_in(home / "inbox", f"r{i}.json", nss_job(f"r{i}", f"acct{i}"))
    assert run_once(home).returncode == 0
    shown = json.loads(cli(home, "datasets", "show", "clinic", "--json").stdout)
    n = len([p for p in (home / "outbox").glob("r?.json")])
    assert shown["composition"] == "rdp" and shown["jobs"] == n >= 3
    assert shown["epsilon_spent"] <= 3.0 * (1 + 1e-9)
    assert shown["basic_epsilon_spent"] == pytest.approx(float(n))
    print("FIGURES who-pays-rdp", json.dumps({"admitted": n, "certified_epsilon": shown["epsilon_spent"]}))


# -- real unix permissions ----------------------------------------------------------------


def _make_user(name: str) -> int | None:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        return None
    subprocess.run(["userdel", name], capture_output=True)
    r = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                       capture_output=True)
    if r.returncode != 0:
        return None
    return pwd.getpwnam(name).pw_uid


def _as(uid: int, *cmd: str) -> subprocess.CompletedProcess[bytes]:
    gid = pwd.getpwuid(uid).pw_gid
    return subprocess.run(list(cmd), user=uid, group=gid, extra_groups=[], capture_output=True, timeout=30)


def test_a_buyers_outputs_are_unreadable_by_another_buyers_unix_user():
    suffix = uuid.uuid4().hex[:6]
    names = (f"pcb1{suffix}", f"pcb2{suffix}")
    uids = [_make_user(n) for n in names]
    base = Path(tempfile.mkdtemp(prefix="whopays-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        home = make_home(base / "home")
        if None in uids:
            # No second unix user can be made here: check the modes that would keep them out.
            a = add_buyer(home, "one")
            assert stat_mode(Path(a["inbox"])) == 0o2770 and stat_mode(Path(a["outbox"])) == 0o2570
            pytest.skip("cannot create unix users here (not root or no useradd); checked the mode bits only")
        u1, u2 = uids
        add_buyer(home, "one", "--user", names[0])
        add_buyer(home, "two", "--uid", str(u2))
        job_text = json.dumps(job("mine", "one"))
        # The buyer drops its own job as itself; the other buyer can neither drop into nor list that inbox.
        r = _as(u1, "sh", "-c", f"printf '%s' '{job_text}' > {home}/inbox/one/.mine.tmp"
                                f" && mv {home}/inbox/one/.mine.tmp {home}/inbox/one/mine.json")
        assert r.returncode == 0, r.stderr
        assert _as(u2, "sh", "-c", f"echo x > {home}/inbox/one/planted.json").returncode != 0
        assert _as(u2, "ls", f"{home}/inbox/one").returncode != 0
        assert run_once(home).returncode == 0
        art = home / "outbox" / "one" / "mine.json"
        assert art.exists()
        assert _as(u1, "cat", str(art)).returncode == 0  # the owner reads its artifact
        assert _as(u1, "cat", str(art.with_name("mine.dsse.json"))).returncode == 0
        denied = _as(u2, "cat", str(art))
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr
        assert _as(u2, "ls", f"{home}/outbox/one").returncode != 0
        # ... and the owner cannot plant or replace files in its own outbox (only the service writes there).
        assert _as(u1, "sh", "-c", f"echo x > {home}/outbox/one/fake.json").returncode != 0
        assert _as(u1, "rm", "-f", str(art)).returncode != 0 and art.exists()
        listed = json.loads(cli(home, "buyers", "list", "--json").stdout)
        assert {b["account"]: b["user"] for b in listed} == {"one": names[0], "two": names[1]}
    finally:
        shutil.rmtree(base, ignore_errors=True)
        for n, uid in zip(names, uids):
            if uid is not None:
                subprocess.run(["userdel", n], capture_output=True)


# -- admin commands --------------------------------------------------------------------------


def test_budget_set_and_reset_are_safe_and_audited_with_the_real_actor(tmp_path):
    home = clinic_home(tmp_path)
    r = cli(home, "budget", "set", "nobody", "5")
    assert r.returncode == 1 and "does not exist" in r.stderr.decode() and "--create" in r.stderr.decode()
    assert cli(home, "budget", "set", "--dataset", "nowhere", "5").returncode == 1
    assert cli(home, "budget", "reset", "nobody", "--yes").returncode == 1
    assert cli(home, "budget", "set", "carol", "5", "--create").returncode == 0
    led = ledger(home)
    for i in range(3):
        led.reserve(f"c{i}", "carol", declared(1.0), "mock", dataset="clinic")
        led.commit(f"c{i}", 1.0, 1e-5)
    led.close()
    r = cli(home, "budget", "set", "carol", "2")
    assert r.returncode == 0 and "warning" in r.stderr.decode()
    r = cli(home, "budget", "set", "--dataset", "clinic", "1", "--json")
    assert r.returncode == 0 and "warning" in r.stderr.decode() and json.loads(r.stdout)["epsilon_budget"] == 1.0
    # reset asks first; with no answer (stdin closed) nothing changes.
    r = cli(home, "budget", "reset", "carol", input=b"")
    assert r.returncode == 1
    assert json.loads(cli(home, "budget", "show", "carol", "--json").stdout)["epsilon_spent"] == pytest.approx(3.0)
    r = cli(home, "budget", "reset", "carol", input=b"y\n", env=env_for(home, USER="mallory", LOGNAME="mallory"))
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(cli(home, "budget", "show", "carol", "--json").stdout)["epsilon_spent"] == 0
    assert cli(home, "budget", "reset", "--dataset", "clinic", "--yes").returncode == 0
    assert json.loads(cli(home, "datasets", "show", "clinic", "--json").stdout)["epsilon_spent"] == 0
    led = ledger(home)
    try:
        resets = [a for a in led.audit() if a["event"] in ("budget_reset", "dataset_reset")]
        assert len(resets) == 2
        me = pwd.getpwuid(os.getuid()).pw_name
        for a in resets:
            assert "mallory" not in a["actor"] and f"{me}(uid {os.getuid()})" in a["actor"]
    finally:
        led.close()


def test_budget_reset_works_under_rdp_from_the_cli(tmp_path):
    home = clinic_home(tmp_path, "rdp")
    assert cli(home, "budget", "set", "dora", "2", "--create").returncode == 0
    led = ledger(home)
    assert len(admitted(led, [(f"d{i}", "dora", declared(1.0)) for i in range(3)], dataset="synthetic")) == 2
    led.close()
    assert cli(home, "budget", "reset", "dora", "--yes").returncode == 0
    shown = json.loads(cli(home, "budget", "show", "dora", "--json").stdout)
    assert shown["composition"] == "rdp" and shown["epsilon_spent"] == 0 and shown["epsilon_remaining"] == 2.0
    led = ledger(home)
    try:
        assert len(admitted(led, [(f"e{i}", "dora", declared(1.0)) for i in range(3)], dataset="synthetic")) == 2
    finally:
        led.close()


# -- migration of a ledger written by the current release --------------------------------------


def _release_ledger_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("ledger_release", REPO / "tests" / "legacy" / "ledger_release.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ledger_release"] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def test_migration_brings_a_release_ledger_forward(tmp_path):
    old = _release_ledger_module()
    path = tmp_path / "state" / "ledger.db"
    led = old.Ledger(path, default_epsilon=10, default_delta=1e-3, composition="rdp")
    for i in range(3):
        led.reserve(f"a{i}", "alice", declared(1.0), "mock", owner="f")
        led.commit(f"a{i}", 1.0, 1e-5)
    led.reserve("a3", "alice", declared(1.0), "mock", owner="f")
    led.release("a3", "never published")
    for i in range(4):
        led.reserve(f"b{i}", "bob", declared(1.0), "mock", owner="f")
        led.commit(f"b{i}", 1.0, 1e-5)
    time.sleep(0.01)
    led.reset("bob")  # under rdp the release's reset changed nothing; the migration honours it
    led.set_budget("carol", 4.0)
    assert {r[0] for r in led.conn.execute("SELECT name FROM _sqlite_migrations")} == {
        "m001_initial", "m002_report_names"}
    led.close()

    new = private_ledger(path, "rdp", eps=5.0)
    try:
        spends = new.spends()
        assert len(spends) == 8 and {s["dataset"] for s in spends} == {None} and {s["scope"] for s in spends} == {""}
        assert new.budget("alice").epsilon_spent == pytest.approx(3.0)  # stays charged to its account
        assert new.summary("alice")["epsilon_spent"] == pytest.approx(3.0)
        assert new.summary("bob")["epsilon_spent"] == 0  # the old reset now holds under rdp too
        assert new.budget("carol").epsilon_budget == 4.0
        events = [a["event"] for a in new.audit()]
        assert events.count("legacy_spends") == 1
        legacy = json.loads(next(a for a in new.audit() if a["event"] == "legacy_spends")["detail"])
        assert legacy["spends"] == 7
        # Unattributable spends count against every private dataset, conservatively: 7 of its 5 ε.
        clinic = new.dataset_summary("clinic")
        assert clinic["legacy_spends"] == 7 and clinic["basic_epsilon_spent"] == pytest.approx(7.0)
        with pytest.raises(JobRejected):
            new.reserve("n1", "dave", declared(1.0), "mock", dataset="clinic")
        with pytest.raises(JobRejected, match="already submitted"):  # old job_ids stay charged once
            new.reserve("a0", "alice", declared(1.0), "mock")
        # The admin decides they did not touch this dataset.
        assert new.set_legacy("clinic", False)["legacy_spends"] == 0
        new.reserve("n1", "dave", declared(1.0), "mock", dataset="clinic")
        assert new.dataset_summary("synthetic")["public"] is True
    finally:
        new.close()
    again = private_ledger(path, "rdp")  # opening again applies nothing twice
    try:
        assert [a["event"] for a in again.audit()].count("legacy_spends") == 1
    finally:
        again.close()


def test_migration_tells_the_admin_through_datasets_show(tmp_path):
    home = clinic_home(tmp_path)
    state = home / "state" / "ledger.db"
    for p in state.parent.glob("ledger.db*"):
        p.unlink()
    old = _release_ledger_module()
    led = old.Ledger(state)
    led.reserve("x", "alice", declared(2.0), "mock", owner="f")
    led.commit("x", 2.0, 1e-5)
    led.close()
    out = cli(home, "datasets", "show", "clinic").stdout.decode()
    assert "1 spend(s) from before datasets were recorded count against clinic" in out
    assert cli(home, "datasets", "legacy", "clinic", "--ignore").returncode == 0
    assert json.loads(cli(home, "datasets", "show", "clinic", "--json").stdout)["legacy_spends"] == 0


# -- races -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_daemons_and_the_admin_cli_racing_one_dataset_budget_never_overspend(tmp_path, daemon_factory):
    home = clinic_home(tmp_path, workers=2)
    buyers = [f"r{i}" for i in range(4)]
    for b in buyers:
        add_buyer(home, b)
    fast = {"PANDACEAD_DAEMON__RESCAN_INTERVAL": "0.1"}
    daemons = [daemon_factory(home, **fast) for _ in range(2)]
    wait_for(lambda: all(" started: " in d.output() for d in daemons), timeout=90)
    stop = threading.Event()
    log: list[int] = []

    def admin() -> None:
        k = 0
        while not stop.is_set():
            cmd = [["datasets", "show", "clinic", "--json"], ["budget", "set", "--dataset", "clinic", "3"],
                   ["budget", "show", "--dataset", "clinic", "--json"]][k % 3]
            log.append(cli(home, *cmd).returncode)
            k += 1

    def one_shot() -> None:  # the admin's own one-shot path, on the same dataset
        for i in range(3):
            cli(home, "train", "--home", str(home), input=json.dumps(nss_job(f"t{i}", "admin", eps=0.5)).encode())

    threads = [threading.Thread(target=admin, daemon=True), threading.Thread(target=one_shot, daemon=True)]
    for t in threads:
        t.start()
    n = 0
    for i in range(5):
        for b in buyers:
            drop_in(home / "inbox" / b, f"j{i}.json", nss_job(f"j{i}", b, eps=0.5))
            n += 1
    threads[1].join(timeout=300)

    def settled() -> bool:
        led = ledger(home)
        try:
            return len([r for r in led.jobs() if r["status"] in ("succeeded", "rejected", "failed")]) >= n + 3
        finally:
            led.close()

    wait_for(settled, timeout=300, interval=0.3)
    stop.set()
    threads[0].join(timeout=60)
    for d in daemons:
        assert d.stop() == 0
    assert log and set(log) == {0}
    led = ledger(home)
    try:
        committed = led.spends(dataset="clinic", state="committed")
        assert sum(s["epsilon"] for s in committed) <= 3.0 * (1 + 1e-9)
        assert len(committed) == 6  # floor(3 / 0.5): the budget is used, never exceeded
        assert led.spends(state="reserved") == []
        arts = [p for b in buyers for p in (home / "outbox" / b).glob("j?.json")]
        assert len(arts) + len([p for p in (home / "outbox").glob("t?.json")]) == 6
    finally:
        led.close()


def test_spooled_buyer_files_keep_their_account_across_a_restart(tmp_path):
    from pandacead.spool import Spool, original_name, spooled_account

    inbox = tmp_path / "inbox" / "alice"
    inbox.mkdir(parents=True)
    (inbox / "j-1.json").write_text("{}")
    sp = Spool(tmp_path / "spool")
    sp.acquire()
    got = sp.claim(inbox, "j-1.json", "alice")
    assert got is not None and spooled_account(got) == "alice" and original_name(got) == "j-1.json"
    (tmp_path / "inbox" / "x@bob@y.json").write_text("{}")
    admin = sp.claim(tmp_path / "inbox", "x@bob@y.json")
    assert admin is not None and spooled_account(admin) is None and original_name(admin) == "x@bob@y.json"
    sp.release()


def test_buyers_add_refuses_bad_names_and_remove_keeps_the_outbox(tmp_path):
    home = make_home(tmp_path / "h")
    for bad in ("x.json", "../up", "a" * 49, ".hidden"):
        assert cli(home, "buyers", "add", bad).returncode != 0
    add_buyer(home, "gone")
    assert cli(home, "buyers", "remove", "gone").returncode == 0
    assert not (home / "inbox" / "gone").exists() and (home / "outbox" / "gone").is_dir()
    assert cli(home, "buyers", "remove", "never").returncode == 1


def test_submit_into_a_buyers_inbox_pays_with_that_account(tmp_path):
    home = make_home(tmp_path / "h")
    add_buyer(home, "sub")
    j = job("via-submit", "sub")
    del j["user_id"]
    (tmp_path / "j.json").write_text(json.dumps(j))
    r = cli(home, "submit", str(tmp_path / "j.json"), "--account", "sub")
    assert r.returncode == 0 and (home / "inbox" / "sub" / "via-submit.json").exists(), r.stderr.decode()
    (tmp_path / "k.json").write_text(json.dumps(job("other", "someone-else")))
    r = cli(home, "submit", str(tmp_path / "k.json"), "--account", "sub")
    assert r.returncode == 1 and "can only pay with sub" in r.stderr.decode()
    assert run_once(home).returncode == 0
    art = json.loads((home / "outbox" / "sub" / "via-submit.json").read_text())
    assert art["user_id"] == "sub"
    shown = json.loads(cli(home, "jobs", "show", "via-submit", "--json").stdout)
    assert shown["scope"] == "sub" and shown["dataset"] == "synthetic" and shown["status"] == "succeeded"
