"""Hostile input: a corpus and property-based fuzzing of parsing and of the whole intake.

Every hostile file ends in an error report naming the problem, nothing is
charged for it, the daemon stays up and keeps serving good jobs, and nothing
is written outside outbox/ and state/ (no path from a job escapes the home).
The intake tests share one running daemon (module scope).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProc, drop, job, ledger, make_home, wait_for
from fuzz.corpus import base, benign_cases, big_cases, load_corpus
from fuzz.invariants import (
    check_ledger_matches_outbox,
    check_nothing_pending,
    read_outbox,
    tree_snapshot,
)
from fuzz.strategies import FILE_NAMES, JOB_BYTES, finite, near_valid_jobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pandacead.errors import JobRejected
from pandacead.jobs import ID_PATTERN, RESERVED_SUFFIXES, parse_job
from pandacead.spool import original_name, spool_name

SAFE_OUTBOX_NAME = __import__("re").compile(r"\A[A-Za-z0-9][A-Za-z0-9._~-]*\.json\Z")
FIGURES: dict[str, int] = {}


def _count(key: str, n: int = 1) -> None:
    FIGURES[key] = FIGURES.get(key, 0) + n


# --------------------------------------------------------------------------- parse_job properties


def _check_accepted(job: Any) -> None:
    """What parse_job accepts is inside the schema: finite, in range, safe identifiers."""
    for ident in (job.job_id, job.user_id, job.dataset):
        assert ID_PATTERN.fullmatch(ident), ident
    assert not job.job_id.lower().endswith(RESERVED_SUFFIXES)
    assert job.backend is None or (job.backend.isascii() and "\n" not in job.backend)
    d = job.dp
    assert d.enabled is True
    assert finite(d.epsilon) and 0 < d.epsilon <= 100
    assert finite(d.delta) and 0 < d.delta <= 0.01
    assert finite(d.clip) and 0 < d.clip <= 1000
    assert d.noise_multiplier is None or (finite(d.noise_multiplier) and 0.01 <= d.noise_multiplier <= 1000)
    assert type(job.epochs) is int and 1 <= job.epochs <= 1000
    assert type(job.batch_size) is int and 1 <= job.batch_size <= 65536
    assert finite(job.learning_rate) and 0 < job.learning_rate <= 100
    assert type(job.seed) is int and 0 <= job.seed < 2**53
    assert job.task in ("classification", "regression") and job.model.type in ("linear", "mlp")
    assert all(type(h) is int and 1 <= h <= 1024 for h in job.model.hidden) and len(job.model.hidden) <= 4


def _parse(data: bytes) -> Any:
    try:
        job = parse_job(data)
    except JobRejected as exc:
        assert exc.message and exc.details, "a rejection must name the problem"
        assert len(exc.details) <= 51
        return None
    _check_accepted(job)
    return job


@settings(max_examples=1000, deadline=None)
@given(JOB_BYTES)
def test_parse_job_never_raises_anything_but_job_rejected(data):
    _count("parse_job inputs")
    _parse(data)


@settings(max_examples=1000, deadline=None)
@given(near_valid_jobs())
def test_parse_job_accepts_only_in_range_jobs(raw):
    _count("parse_job inputs")
    data = json.dumps(raw, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    job = _parse(data)
    if job is not None:
        assert job.job_id == raw["job_id"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["epsilon", "delta", "clip", "noise_multiplier"]),
       st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e400", "0", "-0", "-0.0", "-1e-300"]))
def test_non_finite_and_non_positive_privacy_parameters_are_refused(key, literal):
    _count("parse_job inputs")
    raw = base("pp")
    dp_text = json.dumps({**raw["dp"], key: "@@"}).replace('"@@"', literal)
    data = json.dumps(raw).replace(json.dumps(raw["dp"]), dp_text)
    assert literal in data
    with pytest.raises(JobRejected):
        parse_job(data.encode())


def test_hostile_corpus_is_refused_by_parse_or_later():
    later = {"backend-unknown.json", "dataset-unknown.json", "num-delta-over-1-over-n.json", "size-over-limit.json"}
    for name, data, needle in load_corpus() + big_cases():
        if name in later:
            continue
        with pytest.raises(JobRejected) as info:
            parse_job(data)
        assert needle in info.value.message + " ".join(info.value.details), name


# --------------------------------------------------------------------------- a live daemon


class Live:
    def __init__(self, root: Path):
        self.root = root
        self.home = make_home(root / "h", workers=2)
        self.canary = root / "canary"  # a sibling of the home: nothing may appear or change here
        self.canary.mkdir()
        (self.canary / "victim.json").write_text(json.dumps(job("victim")))
        self.daemon = DaemonProc(self.home, PANDACEAD_DAEMON__RETRY_SECONDS="0.2")
        wait_for(lambda: " started: " in self.daemon.output(), timeout=60)
        self.before = self.snapshot()
        self.goods = 0

    def snapshot(self) -> dict[str, Any]:
        snap = {k: v for k, v in tree_snapshot(self.root).items()
                if not k.startswith(("h/outbox", "h/state", "h/inbox")) and not k.startswith("h/daemon-")}
        snap["/etc/passwd"] = os.stat("/etc/passwd").st_mtime_ns
        return snap

    def alive(self) -> None:
        assert self.daemon.proc.poll() is None, self.daemon.output()[-3000:]

    def rows(self) -> list[dict[str, Any]]:
        led = ledger(self.home)
        try:
            return led.jobs()
        finally:
            led.close()

    def good(self, prefix: str) -> str:
        self.goods += 1
        jid = f"{prefix}-good-{self.goods}"
        drop(self.home, f"{jid}.json", job(jid, "goodie", epsilon=0.01, seed=self.goods))
        return jid

    def settle(self, n_new: int, rows_before: int, timeout: float = 120) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            rows = self.rows()
            if len(rows) < rows_before + n_new:
                return None
            new = rows[: len(rows) - rows_before]
            if any(r["status"] not in ("succeeded", "rejected", "failed") for r in new):
                return None
            return new

        new = wait_for(done, timeout=timeout, interval=0.1)
        self.alive()
        return new

    def by_inbox_name(self, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(original_name(Path(r["file"])), []).append(r)
        return out


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    lv = Live(tmp_path_factory.mktemp("hostile"))
    yield lv
    lv.alive()
    assert lv.daemon.stop() == 0
    # Global invariants once every test of the module has run.
    check_nothing_pending(lv.home)
    check_ledger_matches_outbox(lv.home)
    assert lv.snapshot() == lv.before, "a file outside outbox/ and state/ was written or changed"
    for name in os.listdir(lv.home / "outbox"):
        assert SAFE_OUTBOX_NAME.match(name), f"unsafe outbox name {name!r}"
    led = ledger(lv.home)
    try:
        charged = {s["user_id"] for s in led.spends()}
    finally:
        led.close()
    assert charged <= {"goodie", "replayer", "thousand", "mallory"}, charged
    print("FIGURES hostile", json.dumps(FIGURES))


def _report(home: Path, name: str) -> dict[str, Any]:
    return json.loads((home / "outbox" / f"{name}.error.json").read_text("utf-8"))


def test_corpus_against_a_running_daemon(live):
    home = live.home
    cases = load_corpus() + big_cases()
    before = len(live.rows())
    goods = []
    for i, (name, data, _needle) in enumerate(cases):
        p = home / "inbox" / name
        if i % 2:
            p.write_bytes(data)  # `cp`-style
        else:
            drop(home, name, data)
        if i % 25 == 0:
            goods.append(live.good("corpus"))
    for name, data in benign_cases():
        drop(home, name, data)
    new = live.settle(len(cases) + len(goods) + len(benign_cases()), before)
    rows = live.by_inbox_name(new)
    got = read_outbox(home).outcomes
    for name, _data, needle in cases:
        assert len(rows[spool_name(name)]) == 1, name
        row = rows[spool_name(name)][0]
        stem = name[:-5]
        assert row["status"] == "rejected" and row["job_id"] == stem, (name, row["status"], row["error"])
        assert got[stem] == "error", (name, got.get(stem))
        rep = _report(home, stem)
        assert rep["status"] == "rejected" and rep["job_id"] == stem
        text = rep["error"] + " " + " ".join(rep["details"])
        assert needle in text, (name, needle, text[:300])
        assert len(rep["error"]) < 2000 and len(json.dumps(rep)) < 64_000, f"{name}: the report is too big"
    for jid in goods:
        assert got[jid] == "artifact"
    for name, _data in benign_cases():
        assert got[name[:-5]] == "artifact", name
    led = ledger(home)
    try:
        charged = {s["job_id"] for s in led.spends("mallory")}
    finally:
        led.close()
    assert charged == {name[:-5] for name, _ in benign_cases()}  # the hostile ones charged nothing
    _count("corpus files", len(cases))
    _count("benign variants", len(benign_cases()))


def test_special_files_are_refused_without_being_opened(live, tmp_path):
    home, inbox = live.home, live.home / "inbox"
    before = len(live.rows())  # before the files appear: the daemon may take some at once
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(job("stolen")))
    notjob = tmp_path / "notjob.txt"
    notjob.write_text("root:x:0:0:root:/root:/bin/bash\n")
    made: dict[str, str] = {}

    def make(name: str, kind: str, fn: Any) -> None:
        try:
            fn(inbox / name)
        except (PermissionError, OSError) as exc:
            print(f"skipped {name}: {exc}")
            return
        made[name] = kind

    make("sp-link-outside.json", "symlink", lambda p: os.symlink(secret, p))
    make("sp-link-passwd.json", "symlink", lambda p: os.symlink("/etc/passwd", p))
    make("sp-link-dangling.json", "symlink", lambda p: os.symlink("/nonexistent/x.json", p))
    make("sp-link-loop.json", "symlink", lambda p: os.symlink(p, p))
    make("sp-link-dir.json", "symlink", lambda p: os.symlink("/etc", p))
    make("sp-link-outbox.json", "symlink", lambda p: os.symlink(home / "outbox", p))
    make("sp-fifo.json", "fifo", os.mkfifo)
    make("sp-dir.json", "directory", lambda p: p.mkdir())
    make("sp-dir-full.json", "directory", lambda p: (p.mkdir(), (p / "inner.json").write_text(json.dumps(job("inner")))))
    make("sp-dev-null.json", "device", lambda p: os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3)))
    make("sp-dev-zero.json", "device", lambda p: os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 5)))
    make("sp-dev-block.json", "device", lambda p: os.mknod(p, 0o600 | stat.S_IFBLK, os.makedev(7, 250)))

    def sock(p: Path) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(p))
        s.close()

    make("sp-socket.json", "socket", sock)
    os.link(notjob, inbox / "sp-hardlink.json")
    good = live.good("special")
    new = live.settle(len(made) + 2, before)
    rows = live.by_inbox_name(new)
    got = read_outbox(home).outcomes
    for name, kind in made.items():
        stem = name[:-5]
        assert got.get(stem) == "error", (name, got.get(stem))
        rep = _report(home, stem)
        assert rep["status"] == "rejected" and kind in rep["error"], (name, rep)
        assert (home / "state" / "rejected" / rows[name][0]["file"]).exists() or os.path.lexists(
            home / "state" / "rejected" / rows[name][0]["file"]), f"{name} was not set aside"
    assert "not valid JSON" in _report(home, "sp-hardlink")["error"]
    assert notjob.read_text().startswith("root:x") and notjob.stat().st_nlink == 1
    assert json.loads(secret.read_text())["job_id"] == "stolen"
    assert "stolen" not in got and "inner" not in got
    assert got[good] == "artifact"
    _count("special files", len(made) + 1)


def test_hostile_file_names(live):
    home, inbox = live.home, os.fsencode(live.home / "inbox")
    names = [
        b"\xff\xfe-latin.json", b"nl\nname.json", b"cr\rname.json", b"tab\tname.json", b"\x1b[31mred.json",
        b"a" * 250 + b".json", "\u00e9".encode() * 125 + b".json", "\uff4a\uff4f\uff42.json".encode(),
        b"-rf.json", b" space.json", b"back\\slash.json", b"x.dsse.json", b"x.error.json",
        b"semi;colon$(id).json", b"\xed\xa0\x80.json", b"%2e%2e%2f.json",
    ]
    before = len(live.rows())
    for i, raw in enumerate(names):
        content = b"garbage" if i % 2 else json.dumps(job(f"fn-{i}", "nobody", epsilon=50)).encode()
        with open(inbox + b"/" + raw, "wb") as fh:
            fh.write(content)
    with open(inbox + b"/..json.json", "wb") as fh:  # a dotfile: never taken
        fh.write(b"{}")
    good = live.good("names")
    new = live.settle(len(names) + 1, before)
    assert len(new) == len(names) + 1
    for r in new:
        if not r["job_id"].startswith("names-good"):
            assert r["status"] == "rejected"
            assert (home / "outbox" / f"{r['job_id']}.error.json").exists()
            assert SAFE_OUTBOX_NAME.match(f"{r['job_id']}.json"), r["job_id"]
            assert r["file"].isprintable() and len(r["file"].encode()) < 255
    assert read_outbox(home).outcomes[good] == "artifact"
    os.unlink(inbox + b"/..json.json")
    log = live.daemon.output()
    assert "claimed nl\\nname.json" in log and "claimed nl\nname" not in log  # no log injection
    _count("hostile file names", len(names))


def test_replays_are_refused_and_never_charged_twice(live):
    home = live.home
    before = len(live.rows())
    drop(home, "rp1.json", job("rp1", "replayer", epsilon=1.0))
    drop(home, "rp-crash.json", job("rp-crash", "replayer", epsilon=1.0, backend="crash"))
    live.settle(2, before)
    art = (home / "outbox" / "rp1.json").read_bytes()
    assert _report(home, "rp-crash")["status"] == "failed"
    before = len(live.rows())
    drop(home, "rp1-again.json", job("rp1", "replayer", epsilon=1.0))
    drop(home, "rp1-other-user.json", job("rp1", "goodie", epsilon=0.01))
    drop(home, "rp-crash-again.json", job("rp-crash", "replayer", epsilon=1.0))
    (home / "inbox" / "rp1-copy.json").write_bytes((home / "outbox" / "rp1.json").read_bytes())  # an artifact fed back
    rows = live.by_inbox_name(live.settle(4, before))
    for name in ("rp1-again.json", "rp1-other-user.json", "rp-crash-again.json"):
        (r,) = rows[name]
        assert r["status"] == "rejected" and "already submitted" in r["error"], (name, r["error"])
    (r,) = rows["rp1-copy.json"]
    assert r["status"] == "rejected" and "Additional properties" in r["error"]
    # The reports share the outbox name <job_id>.error.json: the last one written stays.
    assert _report(home, "rp1")["status"] == "rejected"
    assert (home / "outbox" / "rp1.json").read_bytes() == art
    led = ledger(home)
    try:
        assert led.budget("replayer").epsilon_spent == pytest.approx(1.0)
        assert led.budget("replayer").epsilon_reserved == 0
        assert len(led.spends("replayer")) == 2
    finally:
        led.close()
    _count("replays", 4)


def test_a_file_still_being_written_is_not_taken(live):
    """A slow writer (no careful rename): the daemon waits for the close, then takes the whole file."""
    home = live.home
    before = len(live.rows())
    data = json.dumps(job("slow-writer", "goodie", epsilon=0.01)).encode()
    with open(home / "inbox" / "slow-writer.json", "wb") as fh:
        fh.write(data[:30])
        fh.flush()
        time.sleep(1.2)  # far beyond settle_seconds: only the open-for-writing test holds the daemon back
        assert (home / "inbox" / "slow-writer.json").exists(), "taken while still being written"
        fh.write(data[30:])
    live.settle(1, before)
    assert read_outbox(home).outcomes["slow-writer"] == "artifact"
    _count("files changing while written", 1)


@pytest.mark.slow
def test_thousands_of_files_at_once(live):
    home = live.home
    corpus = [c for c in load_corpus() if len(c[1]) < 4096]
    n, valid_every = 2000, 20
    led = ledger(home)
    led.set_budget("thousand", 100.0, 0.01)
    led.close()
    before = len(live.rows())
    t0 = time.monotonic()
    for i in range(n):
        if i % valid_every == 0:
            data = json.dumps(job(f"k{i}", "thousand", epsilon=0.01, seed=i)).encode()
        else:
            data = corpus[i % len(corpus)][1].replace(corpus[i % len(corpus)][0][:-5].encode(), b"k%d" % i)
        (home / "inbox" / f"k{i}.json").write_bytes(data)
    new = live.settle(n, before, timeout=240)
    took = time.monotonic() - t0
    assert len(new) == n
    got = read_outbox(home).outcomes
    valid = {f"k{i}" for i in range(0, n, valid_every)}
    for i in range(n):
        kind = got.get(f"k{i}")
        assert kind == ("artifact" if f"k{i}" in valid else "error"), (i, kind)
    led = ledger(home)
    try:
        assert led.budget("thousand").epsilon_spent == pytest.approx(0.01 * len(valid))
    finally:
        led.close()
    _count("burst files", n)
    FIGURES["burst seconds"] = round(took)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(FILE_NAMES, JOB_BYTES), min_size=3, max_size=12))
def test_intake_property_every_dropped_file_gets_exactly_one_outcome(live, batch):
    home, inbox = live.home, os.fsencode(live.home / "inbox")
    live.alive()
    before = len(live.rows())
    FIGURES["intake batches"] = FIGURES.get("intake batches", 0) + 1
    names = []
    for i, (name, data) in enumerate(batch):
        fname = f"hz{FIGURES['intake batches']}-{i}-{name}.json"
        raw = fname.encode("utf-8", "surrogateescape")
        if len(raw) > 255:
            raw = raw[:250] + b".json"
            fname = os.fsdecode(raw)
        with open(inbox + b"/" + raw, "wb") as fh:
            fh.write(data)
        names.append(fname)
    good = live.good("hz")
    new = live.settle(len(names) + 1, before)
    rows = live.by_inbox_name(new)
    got = read_outbox(home).outcomes
    for fname in names:
        mine = rows.get(spool_name(fname))
        assert mine is not None and len(mine) == 1, f"{fname!r}: {mine}"
        r = mine[0]
        if r["status"] == "succeeded":
            assert "artifact" in got[r["job_id"]]
        else:
            assert "error" in got[r["job_id"]] and r["error"]
    assert got[good] == "artifact"
    _count("intake files", len(names))


# --------------------------------------------------------------------------- files that change after the claim


@pytest.fixture
def pipeline(tmp_path):
    from pandacead.app import App
    from pandacead.config import load_settings
    from pandacead.pipeline import Pipeline
    from pandacead.spool import Spool

    home = make_home(tmp_path / "p")
    s = load_settings(home, environ={})
    app = App(s)
    sp = Spool(s.spool)
    sp.acquire()
    pipe = Pipeline(s, app.plugins, app.ctx, sp.owner, public_keys=app.public_keys, noise_key=app.noise_key)
    yield home, sp, pipe
    sp.release()


@pytest.mark.parametrize("change, needle", [
    (lambda p: os.truncate(p, 0), "not valid JSON"),
    (lambda p: open(p, "ab").write(b"  {\"more\": 1}"), "Extra data"),
    (lambda p: open(p, "ab").write(b" " * 1_100_000), "over the"),
    (lambda p: (os.unlink(p), os.symlink("/etc/passwd", p)), "symlink"),
    (lambda p: (os.unlink(p), os.mkfifo(p)), "fifo"),
    (lambda p: os.chmod(p, 0), None),  # root reads it anyway; others get "cannot be read"
])
def test_a_file_that_changes_after_the_claim_is_judged_on_what_was_read(pipeline, change, needle):
    home, sp, pipe = pipeline
    drop(home, "c.json", job("c"))
    spooled = sp.claim(home / "inbox", "c.json")
    change(spooled)
    out = pipe.process(spooled)
    if needle is None:
        assert out.status in ("succeeded", "rejected")
        if out.status == "rejected":
            assert "cannot be read" in out.error
    else:
        assert out.status == "rejected" and needle in out.error + " ".join(out.details or []), out
    assert not os.path.lexists(spooled)
    led = ledger(home)
    try:
        if out.status != "succeeded":
            assert led.spends() == []
    finally:
        led.close()
    _count("files changing after claim", 1)


def test_a_lone_surrogate_in_a_plugin_message_still_gets_a_report(pipeline, monkeypatch):
    """Messages can quote anything; the report and the ledger must still take them."""
    home, sp, pipe = pipeline
    from pandacead import default_budget

    def veto(job: Any, plan: Any, ledger: Any) -> str:
        return "refused: \ud800 \x00 \u202e"

    monkeypatch.setattr(pipe.plugins.hook.pandacead_check_budget.get_hookimpls()[0], "function", veto)
    assert default_budget  # the built-in stays registered; the patched hook vetoes
    drop(home, "s.json", job("s"))
    out = pipe.process(sp.claim(home / "inbox", "s.json"))
    assert out.status == "rejected"
    rep = json.loads((home / "outbox" / "s.error.json").read_bytes())
    assert "refused" in rep["error"]

