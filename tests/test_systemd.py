"""The systemd integration: the unit and its friends, the notify protocol, journald-fit logs.

The systemd-analyze / systemd-sysusers / systemd-tmpfiles tests need Debian's `systemd`
package (and `procps` for /bin/kill, which the unit's ExecReload= names); CI installs both.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pandacead.logs import journal_priority, setup_logging, stream_is_journal
from pandacead.sdnotify import Notifier, watchdog_interval

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "pandacead.service"
INSTALLED_BINARY = "/opt/pandacead/venv/bin/pandacead"
MAX_EXPOSURE = 2.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package `systemd`)")
    return path


def _directives(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> every value it is given (unit files may repeat keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def _unit_for_verify(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at a stub: verify insists the binary exists."""
    stub = tmp_path / "bin" / "pandacead"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text("utf-8")
    assert f"ExecStart={INSTALLED_BINARY} " in text
    unit = tmp_path / "unit" / UNIT.name
    unit.parent.mkdir()
    unit.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={stub} "))
    return unit


# --- the unit -----------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify_without_complaints(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    unit = _unit_for_verify(tmp_path)
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on unknown keys and only complains on stderr.
    assert proc.stderr == ""
    assert proc.returncode == 0
    assert proc.stdout == ""


def test_verify_would_catch_an_unknown_key(tmp_path: Path) -> None:
    """Guards the test above: an empty stderr means something only if mistakes show there."""
    analyze = _tool("systemd-analyze")
    unit = _unit_for_verify(tmp_path)
    unit.write_text(unit.read_text("utf-8").replace("[Service]\n", "[Service]\nWachdogSec=1s\n"))
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "WachdogSec" in proc.stderr


def test_unit_exposure_is_at_most_two() -> None:
    analyze = _tool("systemd-analyze")
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"Overall exposure level for pandacead\.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_unit_is_type_notify_with_a_watchdog_and_the_key_as_a_credential() -> None:
    d = _directives(UNIT)
    assert d["Service.Type"] == ["notify"]
    assert d["Service.NotifyAccess"] == ["main"]
    watchdog = d["Service.WatchdogSec"][0]
    assert watchdog not in ("", "0", "infinity")
    assert d["Service.Restart"] == ["on-failure"]
    assert d["Service.User"] == ["pandacead"]
    assert d["Service.StateDirectory"] == ["pandacead"]
    assert d["Service.KillMode"] == ["mixed"]
    assert d["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Service.ExecStart"] == [f"{INSTALLED_BINARY} run --home /var/lib/pandacead"]
    assert d["Service.LoadCredential"] == ["signing-key:/etc/pandacead/signing-key.pem"]
    assert "PANDACEAD_SIGNING__KEY=%d/signing-key" in d["Service.Environment"]
    assert "pandacead-producers" in d["Service.SupplementaryGroups"]


def test_home_mode_agrees_between_unit_and_tmpfiles() -> None:
    """StateDirectoryMode= is applied at every start; tmpfiles must not fight it."""
    unit_mode = _directives(UNIT)["Service.StateDirectoryMode"][0]
    rows = [
        line.split()
        for line in (SYSTEMD / "pandacead.tmpfiles").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    home = [row for row in rows if row[1] == "/var/lib/pandacead"]
    assert home and home[0][2] == unit_mode
    assert home[0][3:5] == ["pandacead", "pandacead"]


def _ids(root: Path, db: str) -> dict[str, int]:
    out = {}
    for line in (root / "etc" / db).read_text().splitlines():
        fields = line.split(":")
        out[fields[0]] = int(fields[2])
    return out


def test_sysusers_and_tmpfiles_give_producers_the_inbox_and_outbox(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    tmpfiles = _tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to set owners")
    root = tmp_path / "root"
    for sub in ("etc", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"):
        (root / sub).mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    shutil.copy(SYSTEMD / "pandacead.sysusers", root / "usr/lib/sysusers.d/pandacead.conf")
    shutil.copy(SYSTEMD / "pandacead.tmpfiles", root / "usr/lib/tmpfiles.d/pandacead.conf")

    for cmd in ([sysusers, f"--root={root}"], [tmpfiles, f"--root={root}", "--create"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    users, groups = _ids(root, "passwd"), _ids(root, "group")
    home = root / "var/lib/pandacead"

    def check(path: Path, mode: int, group: str) -> None:
        st = path.lstat()
        assert stat.S_ISDIR(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == mode, f"{path}: {stat.S_IMODE(st.st_mode):o}"
        assert st.st_uid == users["pandacead"], path
        assert st.st_gid == groups[group], path

    check(home, 0o751, "pandacead")
    check(home / "inbox", 0o3770, "pandacead-producers")
    check(home / "outbox", 0o2750, "pandacead-producers")
    check(home / "state", 0o700, "pandacead")
    assert os.readlink(home / "pandacead.toml") == "/etc/pandacead/pandacead.toml"


def test_host_config_example_loads_with_the_credential_key() -> None:
    from pandacead.config import load_settings

    with tempfile.TemporaryDirectory() as home:
        shutil.copy(SYSTEMD / "pandacead.toml", Path(home) / "pandacead.toml")
        key = "/run/credentials/pandacead.service/signing-key"
        settings = load_settings(home, environ={"PANDACEAD_SIGNING__KEY": key})
    assert settings.inbox == Path("/var/lib/pandacead/inbox")
    assert settings.state == Path("/var/lib/pandacead/state")
    assert settings.key_path == Path(key)
    stop = float(_directives(UNIT)["Service.TimeoutStopSec"][0].removesuffix("s"))
    assert settings.daemon["drain_timeout"] < stop


# --- the notify protocol -----------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A listening datagram socket standing in for systemd's, and its $NOTIFY_SOCKET value."""
    path = tmp_path / "notify"
    cleanup = None
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        cleanup = tempfile.TemporaryDirectory(prefix="sdn")
        path = Path(cleanup.name) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, str(path)
    finally:
        sock.close()
        if cleanup is not None:
            cleanup.cleanup()


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_notifier_sends_ready_status_watchdog_and_stopping(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, address = notify_socket
    n = Notifier({"NOTIFY_SOCKET": address})
    assert n.enabled
    assert n.ready()
    assert _recv(sock) == "READY=1"
    assert n.ready(status="Waiting for jobs")
    assert _recv(sock) == "READY=1\nSTATUS=Waiting for jobs"
    assert n.status("Training job j1\nfor alice")
    assert _recv(sock) == "STATUS=Training job j1 for alice"
    assert n.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    assert n.stopping()
    assert _recv(sock) == "STOPPING=1"
    assert n.stopping("Handing back 1 job")
    assert _recv(sock) == "STOPPING=1\nSTATUS=Handing back 1 job"
    assert n.extend_timeout(2.5)
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=2500000"


def test_reloading_carries_the_monotonic_clock(notify_socket: tuple[socket.socket, str]) -> None:
    sock, address = notify_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier({"NOTIFY_SOCKET": address}).reloading("Reloading configuration")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = dict(line.split("=", 1) for line in _recv(sock).split("\n"))
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert fields["STATUS"] == "Reloading configuration"


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"pandacead-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert _recv(sock) == "READY=1"


def test_notifier_reads_the_environment_of_a_real_process(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, address = notify_socket
    code = (
        "from pandacead.sdnotify import Notifier\n"
        "n = Notifier()\n"
        "print(n.watchdog_interval())\n"
        "n.ready('up'); n.watchdog(); n.stopping()\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "30.0"
    assert [_recv(sock) for _ in range(3)] == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1"]


def test_notifier_is_a_silent_no_op_without_notify_socket() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.watchdog_interval() is None


def test_a_vanished_notify_socket_never_raises_into_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="pandacead.sdnotify"):
        assert n.watchdog() is False
        assert n.watchdog() is False
    assert len([r for r in caplog.records if "cannot notify" in r.getMessage()]) == 1
    assert Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).ready() is False


def test_watchdog_interval_is_only_ours_when_watchdog_pid_matches() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 20.0
    assert (
        watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 20.0
    )
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


# --- logs ---------------------------------------------------------------------------


@pytest.fixture
def clean_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
        logging.captureWarnings(False)


def _journal_env(monkeypatch: pytest.MonkeyPatch, fh: io.IOBase) -> None:
    st = os.fstat(fh.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.mark.usefixtures("clean_root_logger")
def test_json_log_lines_carry_ts_level_logger_msg_and_job_fields() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log = logging.getLogger("pandacead.test")
    log.info("claimed %s", "j1.json", extra={"job_id": "j1", "user_id": "alice"})
    log.debug("not shown")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("trainer crashed", extra={"job_id": "j2"})
    lines = out.getvalue().splitlines()
    first = json.loads(lines[0])
    assert first["msg"] == "claimed j1.json"
    assert first["level"] == "INFO"
    assert first["logger"] == "pandacead.test"
    assert (first["job_id"], first["user_id"]) == ("j1", "alice")
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None
    second = json.loads(lines[1])
    assert second["level"] == "ERROR" and second["job_id"] == "j2"
    assert "RuntimeError: boom" in second["exc"]
    assert len(lines) == 2


@pytest.mark.usefixtures("clean_root_logger")
def test_under_journald_lines_have_priority_prefixes_and_no_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as fh:
        _journal_env(monkeypatch, fh)
        assert stream_is_journal(fh)
        setup_logging("DEBUG", "auto", stream=fh)
        log = logging.getLogger("pandacead.daemon")
        log.info("claimed job", extra={"job_id": "j1", "user_id": "alice"})
        log.warning("budget low")
        log.debug("scan")
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("job failed")
        fh.seek(0)
        lines = fh.read().splitlines()
    assert lines[0] == "<6>pandacead.daemon: claimed job [job_id=j1 user_id=alice]"
    assert lines[1] == "<4>pandacead.daemon: budget low"
    assert lines[2] == "<7>pandacead.daemon: scan"
    assert lines[3] == "<3>pandacead.daemon: job failed"
    # Every traceback line keeps the error priority, or journald files it as info.
    assert all(line.startswith("<3>") for line in lines[4:])
    assert any("ValueError: bad" in line for line in lines[4:])
    assert not any(TIMESTAMP.search(line) for line in lines)


@pytest.mark.usefixtures("clean_root_logger")
def test_json_under_journald_is_prefixed_and_the_rest_is_one_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as fh:
        _journal_env(monkeypatch, fh)
        setup_logging("INFO", "json", stream=fh)
        logging.getLogger("pandacead").error("signing failed", extra={"job_id": "j3"})
        fh.seek(0)
        line = fh.read().rstrip("\n")
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["job_id"] == "j3"


@pytest.mark.usefixtures("clean_root_logger")
def test_outside_journald_text_lines_are_timestamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")  # some other stream, e.g. stderr was redirected
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as fh:
        assert not stream_is_journal(fh)
        setup_logging("INFO", "auto", stream=fh)
        logging.getLogger("pandacead.daemon").info("ready", extra={"job_id": "j1"})
        fh.seek(0)
        line = fh.read().rstrip("\n")
    assert TIMESTAMP.match(line)
    assert line.endswith(" INFO pandacead.daemon: ready [job_id=j1]")
    assert not line.startswith("<")


def test_a_process_whose_stderr_is_the_journal_stream_logs_for_journald(tmp_path: Path) -> None:
    """Real stderr, real $JOURNAL_STREAM, as systemd sets them up."""
    code = (
        "import logging\n"
        "from pandacead.logs import setup_logging\n"
        "setup_logging('INFO', 'auto')\n"
        "logging.getLogger('pandacead').error('disk full', extra={'job_id': 'j9'})\n"
    )
    target = tmp_path / "journal"
    with open(target, "w") as fh:
        st = os.fstat(fh.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, stderr=fh, timeout=60)
    assert proc.returncode == 0
    assert target.read_text() == "<3>pandacead: disk full [job_id=j9]\n"


@pytest.mark.usefixtures("clean_root_logger")
def test_setting_up_logging_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", "text", stream=first)
    setup_logging("WARNING", "text", stream=second)
    logging.getLogger("pandacead").warning("once")
    logging.getLogger("pandacead").info("filtered")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert "filtered" not in second.getvalue()


def test_unknown_level_or_format_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="Unknown log level 'loud'"):
        setup_logging("loud", "text", stream=io.StringIO())
    with pytest.raises(ValueError, match="Unknown log format 'xml'"):
        setup_logging("INFO", "xml", stream=io.StringIO())


def test_priorities_follow_syslog() -> None:
    assert [journal_priority(lv) for lv in (10, 20, 25, 30, 40, 50)] == [7, 6, 5, 4, 3, 2]


# --- a real daemon under a fake service manager -------------------------------------------


def _pandacead_command() -> list[str]:
    import importlib.util

    if importlib.util.find_spec("pandacead.daemon") is None:
        pytest.skip("pandacead.daemon is not there yet")
    script = Path(sys.executable).with_name("pandacead")
    if not script.exists():
        pytest.skip("the pandacead console script is not installed beside this python")
    return [str(script)]


def _messages_until(
    sock: socket.socket, wanted: str, timeout: float, proc: subprocess.Popen[bytes]
) -> list[str]:
    """Every message received up to and including the first with the line `wanted`."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
        try:
            msg = _recv(sock)
        except TimeoutError:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({proc.returncode}) before {wanted}; got {got}"
                ) from None
            continue
        got.append(msg)
        if wanted in msg.split("\n"):
            return got
    raise AssertionError(f"no {wanted} within {timeout:g}s; got {got}")


@pytest.mark.slow
def test_daemon_notifies_ready_watchdog_reloading_and_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """The lifecycle systemd sees: READY=1 once up, WATCHDOG=1 from the loop, RELOADING=1 then
    READY=1 on SIGHUP, STOPPING=1 on SIGTERM, and exit status 0."""
    import signal

    cmd = _pandacead_command()
    sock, address = notify_socket
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANDACEAD_", "WATCHDOG_"))}
    env.update({"MOCK_DP": "1", "PANDACEAD_HOME": str(home)})
    init = subprocess.run(
        [*cmd, "init", "--home", str(home)], env=env, capture_output=True, text=True, timeout=120
    )
    assert init.returncode == 0, init.stderr

    # A slow rescan must not starve the watchdog: the loop wakes for it.
    env.update(
        {
            "NOTIFY_SOCKET": address,
            "WATCHDOG_USEC": "2000000",
            "PANDACEAD_DAEMON__RESCAN_INTERVAL": "30",
        }
    )
    with open(tmp_path / "daemon.log", "w+") as log:
        proc = subprocess.Popen([*cmd, "run", "--home", str(home)], env=env, stderr=log)
        try:
            _messages_until(sock, "READY=1", 60, proc)
            # A 2 s watchdog must be fed at least once in any 2 s.
            _messages_until(sock, "WATCHDOG=1", 2, proc)
            _messages_until(sock, "WATCHDOG=1", 2, proc)

            proc.send_signal(signal.SIGHUP)
            reload = _messages_until(sock, "RELOADING=1", 10, proc)
            assert any(line.startswith("MONOTONIC_USEC=") for line in reload[-1].split("\n"))
            _messages_until(sock, "READY=1", 10, proc)
            assert proc.poll() is None

            proc.send_signal(signal.SIGTERM)
            _messages_until(sock, "STOPPING=1", 10, proc)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            print(log.read())
