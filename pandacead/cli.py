"""The `pandacead` command: a thin click layer over the modules. Heavy libraries are never imported here."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from pandacead import __version__
from pandacead.config import CONFIG_NAME
from pandacead.errors import ConfigError

HOME_HELP = "The pandacead home (config, inbox/, outbox/, state/). Default: $PANDACEAD_HOME, else the current directory."


def _settings(home: str | None) -> Any:
    from pandacead.config import load_settings

    return load_settings(home)


def _ledger(home: str | None, actor: str = "cli") -> Any:
    from pandacead.ledger import Ledger

    s = _settings(home)
    if not s.ledger_path.exists():
        raise ConfigError(f"No ledger at {s.ledger_path}; run `pandacead init --home {s.home}` first.")
    return Ledger.from_settings(s, actor=f"{actor}:{real_actor()}")


def real_actor() -> str:
    """Who runs this command, for the audit log: the process's uid, the login uid (which su and
    sudo keep) and, under sudo as root, SUDO_USER — never the spoofable $USER."""
    import pwd

    def name(uid: int) -> str:
        try:
            return f"{pwd.getpwuid(uid).pw_name}(uid {uid})"
        except KeyError:
            return f"uid {uid}"

    uid = os.getuid()
    parts = [name(uid)]
    try:
        login = int(Path("/proc/self/loginuid").read_text().strip())
    except (OSError, ValueError):
        login = -1
    if 0 <= login < 4294967295 and login != uid:
        parts.append(f"login {name(login)}")
    sudo = os.environ.get("SUDO_USER") if uid == 0 else None
    if sudo and f"login {sudo}(" not in " ".join(parts):
        parts.append(f"sudo by {sudo}")
    return ", ".join(parts)


def _restart_note(s: Any) -> None:
    """Say on stderr which settings the running daemon's last reload could not apply (state/daemon.json)."""
    try:
        pending = json.loads((s.state / "daemon.json").read_text()).get("restart_needed") or []
    except (OSError, ValueError, AttributeError):
        return
    if pending:
        click.echo(f"pandacead: the running daemon needs a restart to apply {', '.join(map(str, pending))};"
                   " until then it keeps the previous value(s).", err=True)


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain text table: columns are (key, heading)."""
    if not rows:
        return "(none)"
    cells = [[h for _, h in columns]] + [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _setup_logging(home: str | None, verbose: bool = False) -> None:
    from pandacead.logs import setup_logging

    try:
        s = _settings(home)
        level = "DEBUG" if verbose else s.data["logging"]["level"]
        fmt = s.data["logging"]["format"]
    except ConfigError:
        level, fmt = "INFO", "auto"
    setup_logging(level, fmt)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pandacead")
@click.option("--home", "group_home", type=click.Path(file_okay=False), is_eager=True,
              help="The home for every subcommand (same as the subcommand's --home or $PANDACEAD_HOME).")
def cli(group_home: str | None) -> None:
    """pandacead: train models with differential privacy on an earner host.

    Buyers drop training jobs (JSON) into inbox/; the daemon checks each
    job's privacy cost against the data owner's budget before training,
    trains with DP-SGD, charges the ledger, and publishes a signed, hashed
    artifact (or an error report) into outbox/.

    Start with `pandacead init`, then `pandacead run`.

    Exit codes: 0 success; 1 failure (a refused or failed job, a check that
    does not hold, an unusable home); 2 a usage error; 130 interrupted.
    Shell completion: eval "$(_PANDACEAD_COMPLETE=bash_source pandacead)"
    (zsh_source, fish_source for those shells).
    """
    if group_home:
        os.environ["PANDACEAD_HOME"] = group_home  # a subcommand's own --home still wins


@cli.command()
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print what was created as JSON.")
def init(home: str | None, as_json: bool) -> None:
    """Create a home: config, inbox/, outbox/, the ledger and an Ed25519 signing key (idempotent)."""
    from pandacead.app import ensure_home
    from pandacead.signing import keyid, load_private_key

    s = _settings(home)
    created = ensure_home(s)
    kid = keyid(load_private_key(s.key_path).public_key())
    if as_json:
        _emit_json({"home": str(s.home), "created": created, "keyid": kid})
        return
    for c in created:
        click.echo(f"created {c}")
    click.echo(f"home {s.home} is ready (signing key {kid[:16]}…)")


@cli.command()
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--once", is_flag=True, help="Drain the inbox (and anything left in the spool), then exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def run(home: str | None, once: bool, verbose: bool) -> None:
    """Run the daemon: watch inbox/ and turn each job into an artifact or an error report.

    SIGTERM stops claiming, lets running jobs finish (or hands them back to the
    spool for the next start) and exits 0; SIGHUP reloads the configuration.
    """
    from pandacead.daemon import Daemon, install_early_signals

    install_early_signals()  # a stop during start-up is a clean stop, not a death by SIGTERM
    _setup_logging(home, verbose)
    s = _settings(home)
    if not (s.home / CONFIG_NAME).is_file() or not s.ledger_path.exists():
        # A mistyped --home must not quietly become a new home with a new signing key.
        raise ConfigError(f"{s.home} is not a pandacead home; create it with `pandacead init --home {s.home}` first.")
    sys.exit(Daemon(s, once=once).run())


# -- quote / submit ---------------------------------------------------------------


def _read_job(job_file: str, default_user: str | None = None) -> tuple[bytes, Any]:
    from pandacead.errors import JobRejected
    from pandacead.jobs import parse_job

    data = sys.stdin.buffer.read() if job_file == "-" else Path(job_file).read_bytes()
    try:
        return data, parse_job(data, default_user=default_user)
    except JobRejected as exc:
        raise click.ClickException(f"{job_file}: {exc.message} " + "; ".join(exc.details[1:3])) from None


def _quote(s: Any, job: Any, job_file: str, valid_for: float | None) -> Any:
    from pandacead import quote as q
    from pandacead.errors import JobError

    if not s.ledger_path.exists():
        raise ConfigError(f"No ledger at {s.ledger_path}; run `pandacead init --home {s.home}` first.")
    try:
        return q.make(s, job, valid_for=valid_for)
    except JobError as exc:
        raise click.ClickException(f"{job_file}: {exc.message}") from None


def _print_quote(qt: Any, as_json: bool) -> None:
    d = qt.summary()
    if as_json:
        _emit_json(d)
        return
    a, e = d["account_after"], d["estimate"]
    lines = [
        f"quote {d['quote']}",
        f"  job        {d['job_id']} (digest {d['job_digest'][:23]}…)",
        f"  account    {d['account']}    dataset {d['dataset']}    backend {d['backend']}",
        f"  plan       σ={_cell(d['noise_multiplier'])}  q={_cell(d['sample_rate'])}  steps={_cell(d['steps'])}"
        f"  accountant {d['accountant']}  n={_cell(d['n_train'])}",
        f"  reserves   ε={d['epsilon']:.6g}  δ={d['delta']:.3g}",
        f"  costs      ε {a['marginal_epsilon']:.6g}, δ {a['marginal_delta']:.3g} under {d['composition']} composition",
        f"  leaves     ε {a['epsilon_left_after']:.6g} of {a['epsilon_budget']:.6g}, δ {a['delta_left_after']:.3g}"
        f" of {a['delta_budget']:.3g} for {d['account']}",
        f"  estimate   ~{_duration(e['seconds'])}, peak memory ~{e['peak_memory_bytes'] / 2**20:.0f} MiB (rough)",
        f"  valid      {d['issued_at']} to {d['expires_at']}",
    ]
    if d.get("search"):
        sp = d["search"]
        lines.append(f"  search     mean {sp['mean']:g} candidates ({sp['distribution']}): ε {sp['search_epsilon']:.4g}"
                     f" for the whole search, vs ε {sp['naive_epsilon']:.4g} for {sp['mean']:g} separate jobs"
                     f" of ε {sp['base_epsilon']:.4g}")
        if sp.get("max") is not None:
            lines.append(f"             at most {sp['max']} candidates"
                         + (f", all {sp['max']} trained so the run time hides how many count"
                            if sp.get("constant_work") else " (only those that count are trained)"))
    if not d["fits"]:
        lines.append(f"  DOES NOT FIT: {d['reason']}")
    lines.append(f"Nothing was charged. To pay exactly this, add \"quote\": \"{d['quote']}\" to the job.")
    click.echo("\n".join(lines))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@cli.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--user-id", help="Whose budget pays, when the job has no user_id.")
@click.option("--valid", "valid_for", type=float, help="Seconds the quote stays valid (default: [quote] valid_seconds, 3600).")
@click.option("--json", "as_json", is_flag=True, help="Print the quote as one JSON object.")
def quote(job_file: str, home: str | None, user_id: str | None, valid_for: float | None, as_json: bool) -> None:
    """What JOB_FILE would cost here, signed: the daemon's own plan, nothing charged, no data read.

    Prints σ, sample rate, steps, the (ε, δ) the daemon would reserve, the
    marginal cost for the account under the active composition and what would
    be left, and a rough run-time and memory estimate. The signed quote is kept
    in state/quotes/; a job that carries its digest ("quote": "sha256:…") is
    run only with exactly this plan, or refused with nothing charged.
    """
    s = _settings(home)
    _, job = _read_job(job_file, user_id)
    qt = _quote(s, job, job_file, valid_for)
    _print_quote(qt, as_json)
    if not qt.summary()["fits"]:
        sys.exit(1)


def _check_against_home(s: Any, job: Any, job_file: str) -> None:
    """What submit can check now instead of leaving the refusal to the daemon: dataset, task, backend, quote."""
    from pandacead.app import App
    from pandacead.errors import JobError
    from pandacead.pipeline import Pipeline

    try:
        app = App(s, with_key=False)
    except OSError as exc:  # a producer may not read the service's state/: the daemon decides
        click.echo(f"pandacead: {job_file} was not checked against {s.home} ({exc.strerror or exc}).", err=True)
        return
    assert app.ctx is not None
    try:
        app.ctx.dataset(job)
        trainer = Pipeline(s, app.plugins, app.ctx, "submit").select(job)
        if job.quote is not None and os.access(s.state, os.R_OK | os.X_OK):
            from pandacead import quote as q
            from pandacead.ledger import Ledger
            from pandacead.trainers import PrivacyPlan

            stored = q.quotes_dir(s) / f"{job.quote.split(':', 1)[1]}.dsse.json"
            if not stored.exists():
                raise click.ClickException(f"{job_file}: this host issued no quote {job.quote[:23]}…; run `pandacead quote` first.")
            import base64

            pred = json.loads(base64.b64decode(json.loads(stored.read_bytes())["payload"]))["predicate"]
            quoted = PrivacyPlan(**{k: pred["plan"].get(k) for k in q.PLAN_FIELDS if k != "accountant"},
                                 accountant=pred["plan"].get("accountant") or "declared")
            q.check_admission(s, job, trainer.name, quoted)  # all but the plan, which only the daemon recomputes
            led = Ledger.from_settings(s, actor="submit")
            try:
                fits = q.admission_preview(led, job.user_id, job.dataset, quoted)
            finally:
                led.close()
            if not fits["fits"]:
                raise click.ClickException(f"{job_file}: the quoted cost no longer fits: {fits['reason']}.")
    except JobError as exc:
        raise click.ClickException(f"{job_file}: {exc.message}") from None


@cli.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--wait", is_flag=True, help="Wait for the outcome and print it; exit 1 unless it succeeded."
              " On a terminal a progress bar shows epoch, loss, ε so far, elapsed time and ETA.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.option("--dry-run", is_flag=True, help="Quote the job (like `pandacead quote`) and submit nothing.")
@click.option("--no-check", is_flag=True, help="Do not check dataset, task, backend and quote against this home first.")
@click.option("--json", "as_json", is_flag=True, help="With --wait or --dry-run: print the outcome or quote as JSON.")
@click.option("--account", help="Drop it into this buyer's inbox (inbox/ACCOUNT/); its outcome is in outbox/ACCOUNT/.")
def submit(job_file: str, home: str | None, wait: bool, timeout: float, dry_run: bool, no_check: bool,
           as_json: bool, account: str | None) -> None:
    """Validate JOB_FILE, check it against this home, and drop it into the inbox atomically (temp file, then rename).

    With --account the job goes to that buyer's inbox and pays with that account.
    """
    from pandacead.artifacts import publish

    s = _settings(home)
    data, job = _read_job(job_file, account)
    if dry_run:
        qt = _quote(s, job, job_file, None)
        _print_quote(qt, as_json)
        sys.exit(0 if qt.summary()["fits"] else 1)
    if not s.inbox.is_dir():
        raise ConfigError(f"The inbox {s.inbox} does not exist; run `pandacead init --home {s.home}`.")
    inbox, outbox = s.inbox, s.outbox
    if account is not None:
        inbox, outbox = s.inbox / account, s.outbox / account
        if not inbox.is_dir():
            raise click.ClickException(f"There is no buyer inbox {inbox}; the admin creates it with"
                                       f" `pandacead buyers add {account}`.")
        if job.user_id != account:
            raise click.ClickException(f"{job_file} names user_id {job.user_id!r}; in {inbox} it can only pay"
                                       f" with {account}.")
    if not no_check:
        _check_against_home(s, job, job_file)
    target = inbox / f"{job.job_id}.json"
    n = 1
    while target.exists():
        target = inbox / f"{job.job_id}~{n}.json"
        n += 1
    baseline = _last_job_row(s) if wait else 0
    started = time.time()
    before = _outcome_files(outbox, job.job_id) if wait and baseline is None else {}
    publish(target, data, mode=0o644)
    if not wait:
        click.echo(f"submitted {job.job_id} as {target}")
        return
    if baseline is None:
        _wait_in_outbox(s, job.job_id, target, started, timeout, as_json, outbox, before)
    _wait_for_outcome(s, job.job_id, target, baseline, timeout, as_json)


def _print_outcome(job_id: str, path: Path, ok: bool, as_json: bool) -> NoReturn:
    outcome = json.loads(path.read_text("utf-8"))
    if as_json:
        _emit_json({k: v for k, v in outcome.items() if k != "model"} | {"path": str(path)})
    elif ok:
        click.echo(f"{job_id} succeeded: ε={outcome['epsilon']:.6g} {_metric(outcome)}"
                   f" backend={outcome['backend']} → {path}")
    else:
        click.echo(f"{job_id} {outcome['status']}: {outcome['error']} (report {path})", err=True)
    sys.exit(0 if ok else 1)


def _outcome_files(outbox: Path, job_id: str) -> dict[Path, int]:
    """job_id's artifact and error reports in `outbox` now, with their mtimes (ns)."""
    from pandacead.artifacts import ERROR_SUFFIX

    out: dict[Path, int] = {}
    for p in [outbox / f"{job_id}.json", outbox / f"{job_id}{ERROR_SUFFIX}", *outbox.glob(f"{job_id}~*{ERROR_SUFFIX}")]:
        try:
            out[p] = p.stat().st_mtime_ns
        except OSError:
            pass
    return out


def _wait_in_outbox(s: Any, job_id: str, target: Path, started: float, timeout: float, as_json: bool,
                    outbox: Path | None = None, before: dict[Path, int] | None = None) -> NoReturn:
    """--wait without the ledger: the first outcome for job_id that was not there before the submission.

    Without the ledger a report's ~N name cannot be known: a report or artifact that is new,
    or rewritten, since the snapshot `before` (taken before the job was dropped) is ours."""
    from pandacead.artifacts import ENVELOPE_SUFFIX, ERROR_SUFFIX

    outbox = outbox or s.outbox
    before = before or {}

    def new(p: Path) -> bool:
        try:
            m = p.stat().st_mtime_ns
        except OSError:
            return False
        return before.get(p) != m and m >= int((started - 1) * 1e9)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not target.exists():
            art = outbox / f"{job_id}.json"
            reports = [p for p in [outbox / f"{job_id}{ERROR_SUFFIX}", *outbox.glob(f"{job_id}~*{ERROR_SUFFIX}")]
                       if new(p)]
            if reports:
                _print_outcome(job_id, max(reports, key=lambda p: p.stat().st_mtime), False, as_json)
            if new(art) and (outbox / f"{job_id}{ENVELOPE_SUFFIX}").exists():
                _print_outcome(job_id, art, True, as_json)
        time.sleep(0.2)
    raise click.ClickException(f"No outcome for {job_id} after {timeout:g} s; is `pandacead run` running on {s.home}?")


def _last_job_row(s: Any) -> int | None:
    """The newest row of the ledger's jobs table: --wait follows only rows after it.

    None when this user cannot read the ledger (a producer on a systemd host):
    --wait then watches the outbox alone, without a progress bar."""
    if not os.access(s.state, os.R_OK | os.X_OK) or not os.access(s.ledger_path, os.R_OK):
        return None
    try:
        led = _ledger(str(s.home), "submit")
        try:
            rows = led.query("SELECT max(id) AS m FROM jobs")
            return int(rows[0]["m"] or 0)
        finally:
            led.close()
    except (sqlite3.Error, OSError, ConfigError):
        return None


def _this_submission(s: Any, job_id: str, target: Path, baseline: int) -> dict[str, Any] | None:
    """The ledger row of the file we dropped (its spool name ends in the inbox name), if there is one yet."""
    from pandacead.ledger import _job_row

    led = _ledger(str(s.home), "submit")
    try:
        rows = led.query("SELECT * FROM jobs WHERE id > ? AND job_id = ? ORDER BY id DESC", [baseline, job_id])
    finally:
        led.close()
    for r in rows:
        if (r.get("file") or "").endswith("-" + target.name) or r.get("file") == target.name:
            return _job_row(r)
    return None


def progress_line(row: dict[str, Any], now: float, width: int = 80) -> str:
    """One line of `submit --wait`'s progress bar for a job row."""
    from pandacead.report import parse_time

    status = row.get("status") or "queued"
    p = row.get("progress") or {}
    start = parse_time(row.get("created_at"))
    elapsed = (now - start) if start else None
    if status != "running":
        return f"{row.get('job_id')}: {status}"
    if not p.get("epochs"):
        return f"{row.get('job_id')}: training  {_duration(elapsed)} elapsed"
    done, total = int(p.get("epoch") or 0), int(p["epochs"])
    eta = elapsed * (total - done) / done if elapsed is not None and done else None
    tail = (f" epoch {done}/{total}  loss {_cell(p.get('loss'))}  ε {_cell(p.get('epsilon'))}"
            f"  {_duration(elapsed)} elapsed  ETA {_duration(eta)}")
    bar_w = max(10, min(30, width - len(tail) - 3))
    filled = int(bar_w * done / total) if total else 0
    return ("[" + "#" * filled + "-" * (bar_w - filled) + "]" + tail)[: width - 1]


def _wait_for_outcome(s: Any, job_id: str, target: Path, baseline: int, timeout: float, as_json: bool) -> NoReturn:
    import shutil

    from pandacead.artifacts import ENVELOPE_SUFFIX, ERROR_SUFFIX

    tty = sys.stderr.isatty() and not as_json
    width = shutil.get_terminal_size((80, 24)).columns
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        row = _this_submission(s, job_id, target, baseline)
        if row is None and tty:
            line = f"{job_id}: queued" if target.exists() else f"{job_id}: claimed, planning"
        elif row is not None and row["status"] in ("succeeded", "rejected", "failed"):
            ok = row["status"] == "succeeded"
            path = s.outbox / (f"{job_id}.json" if ok else f"{row.get('report') or job_id}{ERROR_SUFFIX}")
            if path.exists() and (not ok or (s.outbox / f"{job_id}{ENVELOPE_SUFFIX}").exists()):
                if shown:
                    click.echo("\r" + " " * len(shown) + "\r", nl=False, err=True)
                _print_outcome(job_id, path, ok, as_json)
            line = f"{job_id}: {row['status']}, publishing"
        else:
            line = progress_line(row, time.time(), width) if row is not None else ""
        if tty and line and line != shown:
            click.echo("\r" + line.ljust(len(shown)), nl=False, err=True)
            shown = line
        time.sleep(0.2)
    if shown:
        click.echo(err=True)
    raise click.ClickException(f"No outcome for {job_id} after {timeout:g} s; is `pandacead run` running on {s.home}?")


def _metric(outcome: dict[str, Any]) -> str:
    m = outcome.get("metrics") or {}
    if outcome.get("accuracy") is not None:
        return f"accuracy={_cell(outcome['accuracy'])}"
    for k in ("accuracy", "r2", "mse"):
        if m.get(k) is not None:
            return f"{k}={_cell(m[k])}"
    return "accuracy=-"


@cli.command()
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--user-id", help="Whose budget pays, when the job has no user_id.")
@click.option("--mock", is_flag=True, help="Force the mock backend (like MOCK_DP=1).")
def train(home: str | None, user_id: str | None, mock: bool) -> None:
    """Train one job read from stdin and print its artifact (the seed worker's interface).

    The job goes through the same pipeline as the daemon's: validation, the
    pre-flight privacy cost, the ledger reservation, training and signing. The
    artifact is also published in outbox/ with its signature envelope. On
    refusal or failure the error report goes to stderr and the exit code is 1.
    """
    from pandacead.app import App, ensure_home
    from pandacead.pipeline import Deferred, Pipeline
    from pandacead.spool import Spool
    from pandacead.worker import WorkerPool

    if mock:
        os.environ["MOCK_DP"] = "1"
    _setup_logging(home)
    s = _settings(home)
    if not s.ledger_path.exists():
        for c in ensure_home(s):
            click.echo(f"created {c}", err=True)
    data = sys.stdin.buffer.read(int(s.daemon.get("max_job_bytes", 1_048_576)) + 1)
    app = App(s)
    spool = Spool(s.spool)
    spool.acquire()
    pool = WorkerPool(s.home, size=1)
    try:
        spooled = spool.dir / f"{time.time_ns():020d}-000000-stdin.json"
        fd = os.open(spooled, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        assert app.ctx is not None
        try:
            outcome = Pipeline(s, app.plugins, app.ctx, spool.owner, pool=pool, public_keys=app.public_keys,
                               noise_key=app.noise_key).process(spooled, default_user=user_id)
        except Deferred as exc:
            raise click.ClickException(
                f"The job could not be finished now ({exc}); it stays in the spool and the next"
                f" `pandacead run --home {s.home}` completes it."
            ) from None
    finally:
        pool.close()
        spool.release()
    if outcome.status == "succeeded" and outcome.artifact is not None:
        sys.stdout.write(outcome.artifact.read_text("utf-8"))
        return
    # The report goes to stderr only: `train`'s caller is the one to tell, not the outbox.
    led = _ledger(home, "train")
    try:
        row = led.job_by_file(spooled.name)
    finally:
        led.close()
    if row is not None:
        from pandacead.artifacts import ERROR_SUFFIX

        (s.outbox / f"{row.get('report') or outcome.job_id}{ERROR_SUFFIX}").unlink(missing_ok=True)
    report = {"job_id": outcome.job_id, "status": outcome.status, "error": outcome.error, "details": outcome.details}
    click.echo(json.dumps(report, indent=2, ensure_ascii=False), err=True)
    sys.exit(1)


# -- budget ----------------------------------------------------------------------

BUDGET_COLUMNS = [
    ("user_id", "USER"), ("epsilon_budget", "ε BUDGET"), ("epsilon_spent", "ε SPENT"),
    ("epsilon_reserved", "ε RESERVED"), ("epsilon_remaining", "ε LEFT"),
    ("delta_budget", "δ BUDGET"), ("delta_spent", "δ SPENT"),
]


@cli.group()
def budget() -> None:
    """Show and manage privacy budgets (ε, δ): accounts' allowances and datasets' budgets (--dataset)."""


@budget.command("show")
@click.argument("user", required=False)
@click.option("--dataset", help="Show this dataset's budget (all buyers together) instead of an account's.")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object (with USER or --dataset) or a list.")
def budget_show(user: str | None, dataset: str | None, home: str | None, as_json: bool) -> None:
    """Show USER's budget, or every user's; with --dataset NAME, the dataset's."""
    led = _ledger(home)
    if dataset is not None:
        if user is not None:
            raise click.UsageError("Give USER or --dataset, not both.")
        _show_dataset(led, dataset, as_json, _settings(home))
        return
    rows = [led.summary(user)] if user else [led.summary(b.user_id) for b in led.budgets()]
    if as_json:
        _emit_json(rows[0] if user else rows)
    else:
        cols = BUDGET_COLUMNS + ([("basic_epsilon_spent", "ε IF ADDED")] if led.composition == "rdp" else [])
        click.echo(_table(rows, cols))
        click.echo(f"(composition: {led.composition})")
        if user and not rows[0]["known"]:
            click.echo(f"({user} has no ledger entry yet: this is the default budget)")


def _check_user(user: str) -> None:
    from pandacead.jobs import ID_PATTERN

    if not ID_PATTERN.match(user):
        raise click.BadParameter(f"{user!r} is not a valid user id (letters, digits, . _ -; at most 128).")


def _target(args: tuple[str, ...], dataset: str | None, command: str, *, amount: bool) -> tuple[str | None, list[str]]:
    """USER (or None with --dataset) and the remaining positional arguments."""
    want = 1 if amount else 0
    if dataset is not None:
        if len(args) != want:
            raise click.UsageError(f"Usage: pandacead budget {command} --dataset NAME" + (" EPSILON" if amount else ""))
        return None, list(args)
    if len(args) != want + 1:
        raise click.UsageError(f"Usage: pandacead budget {command} USER" + (" EPSILON" if amount else ""))
    _check_user(args[0])
    return args[0], list(args[1:])


def _warn_below_spent(what: str, budget_e: float, used_e: float, budget_d: float, used_d: float) -> None:
    if used_e > budget_e * (1 + 1e-9) or used_d > budget_d * (1 + 1e-9):
        click.echo(
            f"warning: {what} has already spent or reserved ε {used_e:.6g}, δ {used_d:.3g}, more than its new"
            f" budget ε {budget_e:g}, δ {budget_d:g}; it admits nothing until spends are reset.",
            err=True,
        )


@budget.command("set")
@click.argument("args", nargs=-1, metavar="[USER] EPSILON")
@click.option("--dataset", help="Set this dataset's total budget instead of an account's allowance.")
@click.option("--delta", type=float, help="Also set the δ budget (default: keep it).")
@click.option("--create", is_flag=True, help="Create the account (or the dataset's ledger entry) if it does not exist.")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def budget_set(
    args: tuple[str, ...], dataset: str | None, delta: float | None, create: bool, home: str | None, as_json: bool
) -> None:
    """Set USER's ε allowance (or, with --dataset NAME, the dataset's ε budget) to EPSILON.

    What was spent stays spent; a budget below it is set, with a warning. An
    account or dataset that does not exist is an error unless --create.
    """
    user, rest = _target(args, dataset, "set", amount=True)
    try:
        epsilon = float(rest[0])
    except ValueError:
        raise click.BadParameter(f"{rest[0]!r} is not a number.", param_hint="EPSILON") from None
    led = _ledger(home)
    try:
        if dataset is not None:
            d = led.set_dataset_budget(dataset, epsilon, delta, create=create)
            _warn_below_spent(f"dataset {dataset}", d["epsilon_budget"], d["epsilon_spent"] + d["epsilon_reserved"],
                              d["delta_budget"], d["delta_spent"] + d["delta_reserved"])
            if as_json:
                _emit_json(d)
            else:
                click.echo(f"dataset {dataset}: ε budget {d['epsilon_budget']:g} (spent {d['epsilon_spent']:.6g}),"
                           f" δ budget {d['delta_budget']:g}")
            return
        assert user is not None
        b = led.set_budget(user, epsilon, delta, create=create)
    except ValueError as exc:
        raise click.ClickException(f"{str(exc)[0].upper()}{str(exc)[1:]}.") from None
    s = led.summary(user)
    _warn_below_spent(f"account {user}", s["epsilon_budget"], s["epsilon_spent"] + s["epsilon_reserved"],
                      s["delta_budget"], s["delta_spent"] + s["delta_reserved"])
    if as_json:
        _emit_json(b.to_dict())
    else:
        click.echo(f"{user}: ε budget {b.epsilon_budget:g} (spent {b.epsilon_spent:.6g}), δ budget {b.delta_budget:g}")


@budget.command("reset")
@click.argument("args", nargs=-1, metavar="[USER]")
@click.option("--dataset", help="Reset this dataset's spend (all buyers) instead of an account's.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--create", is_flag=True, help="Allow resetting an account or dataset the ledger does not know.")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def budget_reset(
    args: tuple[str, ...], dataset: str | None, yes: bool, create: bool, home: str | None, as_json: bool
) -> None:
    """Forget what USER (or, with --dataset NAME, everyone on the dataset) has spent.

    Works under both composition modes (under rdp the filter starts afresh).
    Running jobs keep their reservations. Asks for confirmation unless --yes;
    recorded in the audit log with the real actor (uid, login uid, SUDO_USER).
    """
    user, _ = _target(args, dataset, "reset", amount=False)
    what = f"dataset {dataset}" if dataset is not None else f"account {user}"
    led = _ledger(home)
    if not yes:
        click.confirm(
            f"Forget everything {what} has spent? Its privacy loss does not go away; this only lets it spend again.",
            abort=True, err=True,
        )
    try:
        if dataset is not None:
            d = led.reset_dataset(dataset, create=create)
            if as_json:
                _emit_json(d)
            else:
                click.echo(f"dataset {dataset}: spent reset to 0; ε budget {_cell(d['epsilon_budget'])}")
            return
        assert user is not None
        b = led.reset(user, create=create)
    except ValueError as exc:
        raise click.ClickException(f"{str(exc)[0].upper()}{str(exc)[1:]}.") from None
    if as_json:
        _emit_json(led.summary(user))
    else:
        click.echo(f"{user}: spent reset to 0; ε budget {b.epsilon_budget:g}")


SPEND_COLUMNS = [
    ("job_id", "JOB"), ("user_id", "USER"), ("dataset", "DATASET"), ("state", "STATE"), ("backend", "BACKEND"),
    ("epsilon_reserved", "ε RESERVED"), ("epsilon", "ε SPENT"), ("delta", "δ"), ("noise_multiplier", "σ"),
    ("sample_rate", "q"), ("steps", "STEPS"), ("reserved_at", "RESERVED AT"),
]


@budget.command("history")
@click.argument("user", required=False)
@click.option("--dataset", help="The spends on this dataset (all buyers) instead of one account's.")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def budget_history(user: str | None, dataset: str | None, home: str | None, as_json: bool) -> None:
    """List USER's jobs (dataset, privacy parameters, running total) and the audit log; or a dataset's with --dataset."""
    from pandacead.report import _cumulative

    if (user is None) == (dataset is None):
        raise click.UsageError("Give USER or --dataset NAME.")
    led = _ledger(home)
    if dataset is not None:
        spends = led.spends(dataset=dataset)
        audit = [a for a in led.audit() if a.get("detail") and json.loads(a["detail"]).get("dataset") == dataset]
        ds = led.dataset_summary(dataset)
        budget = (ds.get("epsilon_budget"), ds.get("delta_budget"))
    else:
        spends = led.spends(user)
        audit = led.audit(user)
        b = led.budget(user)
        budget = (b.epsilon_budget, b.delta_budget)
    totals: dict[str, Any] = {}
    if budget[0] is not None and budget[1] is not None:
        totals = {p["job_id"]: p for p in _cumulative(led, spends, float(budget[0]), float(budget[1]))}
    for rec in [*spends, *audit]:  # stored JSON columns become real JSON
        for k in ("rdp", "before", "after", "detail"):
            if isinstance(rec.get(k), str):
                try:
                    rec[k] = json.loads(rec[k])
                except ValueError:
                    pass
    for sp in spends:
        t = totals.get(sp["job_id"])
        sp["epsilon_total"] = t["epsilon"] if t else None  # running total after this spend (active composition)
        sp["delta_total"] = t["delta"] if t else None
    if as_json:
        key: dict[str, Any] = {"dataset": dataset} if dataset is not None else {"user_id": user}
        _emit_json({**key, "composition": led.composition, "spends": spends, "audit": audit})
        return
    click.echo(_table(spends, [
        ("job_id", "JOB"), ("user_id" if dataset else "dataset", "ACCOUNT" if dataset else "DATASET"),
        ("state", "STATE"), ("backend", "BACKEND"),
        ("epsilon_reserved", "ε RESERVED"), ("epsilon", "ε SPENT"), ("epsilon_total", "ε TOTAL"), ("delta", "δ"),
        ("noise_multiplier", "σ"), ("sample_rate", "q"), ("steps", "STEPS"), ("reserved_at", "RESERVED AT"),
    ]))
    click.echo()
    click.echo(_table(audit, [("at", "AT"), ("event", "EVENT"), ("job_id", "JOB"), ("actor", "BY")]))


# -- jobs ------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """List the jobs this home has processed, and their status and progress."""


def _queued(s: Any) -> list[dict[str, Any]]:
    from pandacead.accounts import buyer_inboxes
    from pandacead.spool import original_name, scan

    out = [{"job_id": e.name[:-5], "status": "queued", "file": e.name} for e in scan(s.inbox)]
    for account, d in buyer_inboxes(s.inbox):
        out.extend({"job_id": e.name[:-5], "user_id": account, "status": "queued", "file": f"{account}/{e.name}"}
                   for e in scan(d))
    if s.spool.exists():
        for d in s.spool.iterdir():
            if d.is_dir():
                for p in d.iterdir():
                    if not p.name.startswith("."):
                        out.append({"job_id": original_name(p)[:-5], "status": "queued", "file": p.name})
    return out


def _queued_in_scope(s: Any, job_id: str, scope: str, led: Any = None) -> bool:
    """Is JOB_ID waiting in `scope`'s inbox ('' = the admin's) or in the spool, claimed from it?
    With `led`, a spooled file whose job the ledger shows ended is not waiting (the daemon keeps a
    succeeded job's file until its commit is fsynced, docs/reliability.md 2a)."""
    from pandacead.accounts import buyer_inboxes
    from pandacead.spool import original_name, scan, spooled_account

    inbox = s.inbox if not scope else dict(buyer_inboxes(s.inbox)).get(scope)
    if inbox is not None and any(e.name[:-5] == job_id for e in scan(inbox)):
        return True
    if s.spool.exists():
        for d in s.spool.iterdir():
            if d.is_dir():
                for p in d.iterdir():
                    if (not p.name.startswith(".") and original_name(p)[:-5] == job_id
                            and (spooled_account(p) or "") == scope):
                        row = led.job_by_file(p.name) if led is not None else None
                        if row is None or row["status"] in ("queued", "running"):
                            return True
    return False


def _since(text: str | None) -> str | None:
    """--since: an ISO date/time, or a duration back from now (30m, 6h, 2d)."""
    if not text:
        return None
    import re
    from datetime import datetime, timedelta, timezone

    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        dt = datetime.now(timezone.utc) - timedelta(seconds=float(m.group(1)) * unit)
    else:
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(f"{text!r} is neither a date (2026-12-01, 2026-12-01T09:00) nor a duration (30m, 6h, 2d).",
                                     param_hint="--since") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _history(s: Any, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's per-epoch history file (`jobs logs`), read as the report reads it."""
    from pandacead.report import _history as read_history

    return read_history(s, row["id"]) if row.get("id") else []


def _artifact(s: Any, row: dict[str, Any]) -> tuple[Path | None, dict[str, Any] | None]:
    if row.get("status") != "succeeded":
        return None, None
    path = s.outbox / f"{row['job_id']}.json"
    try:
        art = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None, None
    return path, {k: v for k, v in art.items() if k != "model"}


def _enrich(s: Any, led: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A jobs row plus what `jobs list/show` add: dataset, metrics, artifact, timing, which ε it is."""
    from pandacead.report import parse_time

    row = dict(row)
    hist = _history(s, row)
    meta = next((h for h in hist if h.get("type") == "job"), {})
    path, art = _artifact(s, row)
    row["account"] = row.get("user_id")
    row["dataset"] = (art or {}).get("dataset") or meta.get("dataset")
    row["metrics"] = (art or {}).get("metrics") or ({"accuracy": art["accuracy"]} if art and art.get("accuracy") is not None else None)
    row["artifact"] = str(path) if path else None
    if row.get("report") and row.get("status") in ("rejected", "failed"):
        row["report_path"] = str(s.outbox / f"{row['report']}.error.json")
    spend = led.spend(row["job_id"]) if row.get("status") not in ("queued",) else None
    mine = spend is not None and spend.get("owner") == row.get("owner")
    if spend is not None and mine and spend["state"] == "committed":
        row["epsilon_is"] = "charged"
    elif spend is not None and mine and spend["state"] == "reserved":
        row["epsilon_is"] = "reserved"
    elif mine:
        row["epsilon_is"] = "released"
    else:
        row["epsilon_is"] = None if row.get("epsilon") is None else "charged"
    start, end = parse_time(row.get("created_at")), parse_time(row.get("updated_at"))
    row["started_at"] = row.get("created_at") if row.get("status") != "queued" else None
    running = row.get("status") == "running"
    now = time.time()
    if start is not None:
        row["elapsed_seconds" if running else "duration_seconds"] = round((now if running else (end or now)) - start, 3)
    p = row.get("progress") or {}
    if running and start is not None and p.get("epoch") and p.get("epochs"):
        first = next((h["at"] for h in hist if h.get("type") == "job"), start)
        done = now - first
        row["eta_seconds"] = round(done * (p["epochs"] - p["epoch"]) / p["epoch"], 1)
    return row


def _short(text: Any, width: int) -> str:
    t = _cell(text).replace("\n", " ")
    return t if len(t) <= width else t[: max(1, width - 1)] + "…"


def _fit(rows: list[dict[str, Any]], columns: list[tuple[str, str, int]], width: int = 80) -> str:
    """A table that fits `width` columns: each column capped, the last one takes what is left."""
    if not rows:
        return "(none)"
    heads = [h for _, h, _ in columns]
    cells = [[_short(r.get(k), cap) for k, _, cap in columns] for r in rows]
    widths = [max(len(heads[i]), *(len(c[i]) for c in cells)) for i in range(len(columns) - 1)]
    last = max(len(heads[-1]), width - 1 - sum(widths) - 2 * (len(columns) - 1))
    cells = [c[:-1] + [_short(rows[n].get(columns[-1][0]), last)] for n, c in enumerate(cells)]
    widths.append(max(len(heads[-1]), *(len(c[-1]) for c in cells)))
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [heads, *cells]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@jobs.command("list")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["queued", "running", "succeeded", "rejected", "failed"]), help="Only jobs in this state (repeatable).")
@click.option("--account", help="Only jobs this account (user_id) pays for.")
@click.option("--dataset", help="Only jobs on this dataset.")
@click.option("--since", help="Only jobs updated since a date (2026-12-01) or a duration ago (30m, 6h, 2d).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Full rows (errors unshortened) as a JSON list.")
def jobs_list(home: str | None, statuses: tuple[str, ...], account: str | None, dataset: str | None,
              since: str | None, limit: int, as_json: bool) -> None:
    """Recent jobs, newest first (files still waiting in the inbox show as queued); fits 80 columns."""
    s = _settings(home)
    _restart_note(s)
    led = _ledger(home)
    cutoff = _since(since)
    sql, args = "SELECT * FROM jobs WHERE 1=1", list[Any]()
    if statuses:
        sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
        args.extend(statuses)
    if account:
        sql += " AND user_id = ?"
        args.append(account)
    if cutoff:
        sql += " AND updated_at >= ?"
        args.append(cutoff)
    sql += " ORDER BY id DESC"
    from pandacead.ledger import _job_row

    recorded = [_enrich(s, led, _job_row(r)) for r in led.query(sql, args)]
    spooled_files = {r["file"] for r in led.jobs(None)}
    queued = [] if (statuses and "queued" not in statuses) or account or cutoff else [
        r for r in _queued(s) if r["file"] not in spooled_files]
    rows = [r for r in queued + recorded if not dataset or r.get("dataset") == dataset][: max(0, limit)]
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        r["when"] = (r.get("updated_at") or "")[5:16].replace("T", " ") or None
        r["eps"] = r.get("epsilon")
        r["what"] = r.get("error") or r.get("dataset")
    click.echo(_fit(rows, [("job_id", "JOB", 18), ("account", "ACCOUNT", 10), ("status", "STATUS", 9),
                           ("backend", "BACKEND", 7), ("eps", "ε", 7), ("when", "UPDATED", 11),
                           ("what", "DATASET / ERROR", 80)]))


def _job_rows(
    s: Any, led: Any, job_id: str, scope: str | None = None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The job to show for JOB_ID (the one that succeeded, if one did, else the newest) and the others;
    only those of `scope` ('' = the admin's inbox, else a buyer account) when it is given."""
    from pandacead.ledger import _job_row

    if scope is None:
        found = led.query("SELECT * FROM jobs WHERE job_id = ? ORDER BY id DESC", [job_id])
    else:
        found = led.query("SELECT * FROM jobs WHERE job_id = ? AND scope = ? ORDER BY id DESC", [job_id, scope])
    rows = [_job_row(r) for r in found]
    if not rows:
        return None, []
    main = next((r for r in rows if r["status"] == "succeeded"), rows[0])
    return main, [r for r in rows if r is not main]


@jobs.command("show")
@click.argument("job_id")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def jobs_show(job_id: str, home: str | None, as_json: bool) -> None:
    """One job: status, dataset, backend, ε (reserved, charged or released), metrics, artifact, timing, progress.

    After a replay it shows the job that succeeded and notes the refused
    submissions with the same job_id.
    """
    s = _settings(home)
    led = _ledger(home)
    row, others = _job_rows(s, led, job_id)
    if row is None:
        queued = [r for r in _queued(s) if r["job_id"] == job_id]
        if not queued:
            raise click.ClickException(f"No job {job_id} in {s.home}.")
        row = queued[0]
    else:
        row = _enrich(s, led, row)
        row["other_submissions"] = [
            {"status": o["status"], "error": o.get("error"), "report": o.get("report"), "updated_at": o.get("updated_at")}
            for o in others]
    if as_json:
        _emit_json(row)
        return
    eps = _cell(row.get("epsilon")) + (f" ({row['epsilon_is']})" if row.get("epsilon_is") else "")
    fields = [("job_id", row.get("job_id")), ("account", row.get("user_id")), ("status", row.get("status")),
              ("dataset", row.get("dataset")), ("backend", row.get("backend")), ("epsilon", eps),
              ("delta", row.get("delta")), ("started", row.get("started_at")), ("updated", row.get("updated_at"))]
    if "duration_seconds" in row:
        fields.append(("duration", _duration(row["duration_seconds"])))
    if "elapsed_seconds" in row:
        fields.append(("elapsed", _duration(row["elapsed_seconds"])))
    if "eta_seconds" in row:
        fields.append(("eta", _duration(row["eta_seconds"])))
    if row.get("attempts") is not None:
        fields.append(("attempts", row.get("attempts")))
    if row.get("metrics"):
        fields.append(("metrics", "  ".join(f"{k}={_cell(v)}" for k, v in row["metrics"].items())))
    if row.get("artifact"):
        fields.append(("artifact", row["artifact"]))
    if row.get("report_path"):
        fields.append(("report", row["report_path"]))
    if row.get("error"):
        fields.append(("error", row["error"]))
    if "file" in row and row.get("status") == "queued":
        fields.append(("file", row["file"]))
    for k, v in fields:
        click.echo(f"{k:>10}: {_cell(v)}")
    if row.get("progress"):
        p = row["progress"]
        click.echo(f"{'progress':>10}: epoch {p.get('epoch')}/{p.get('epochs')} loss {_cell(p.get('loss'))} ε so far {_cell(p.get('epsilon'))}")
    for d in row.get("details") or []:
        click.echo(f"{'':>10}  - {d}")
    for o in row.get("other_submissions") or []:
        what = "a refused replay" if o["status"] == "rejected" and "already submitted" in (o.get("error") or "") else f"another submission ({o['status']})"
        click.echo(f"{'note':>10}: {what} of this job_id at {o.get('updated_at')}"
                   + (f", report {o['report']}.error.json" if o.get("report") else ""))


@jobs.command("summary")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_summary(home: str | None, limit: int, as_json: bool) -> None:
    """One line per recent job (backend, ε, metric, artifact or report), then what to do next (`make demo` ends with it)."""
    s = _settings(home)
    led = _ledger(home)
    rows = [_enrich(s, led, r) for r in led.jobs(limit)]
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        r["metric"] = "  ".join(f"{k}={_cell(v)}" for k, v in (r.get("metrics") or {}).items() if k in ("accuracy", "r2", "mse")) or None
        r["where"] = r.get("artifact") or r.get("report_path")
    click.echo(_table(rows, [("job_id", "JOB"), ("status", "STATUS"), ("backend", "BACKEND"), ("epsilon", "ε"),
                             ("metric", "METRIC"), ("where", "ARTIFACT / REPORT")]))
    click.echo()
    h = f" --home {s.home}" if home else ""
    steps = [(f"pandacead verify{h} {s.outbox}/JOB.json", "check an artifact's hash and signature"),
             (f"pandacead jobs show{h} JOB", "one job in full; `jobs logs JOB` for its epochs"),
             (f"pandacead quote{h} JOB.json", "what a new job would cost, before paying"),
             (f"pandacead report{h}", "budgets and loss curves as an HTML page")]
    pad = max(len(c) for c, _ in steps)
    click.echo("Next:")
    for c, why in steps:
        click.echo(f"  {c.ljust(pad)}  # {why}")


@jobs.command("logs")
@click.argument("job_id")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="The history as a JSON list (parameters first, then progress).")
def jobs_logs(job_id: str, home: str | None, as_json: bool) -> None:
    """JOB_ID's per-epoch history: epoch, loss, ε so far, time (kept in state/history/, for the earner)."""
    s = _settings(home)
    led = _ledger(home)
    row, _ = _job_rows(s, led, job_id)
    if row is None:
        raise click.ClickException(f"No job {job_id} in {s.home}.")
    hist = _history(s, row)
    if as_json:
        _emit_json(hist)
        return
    meta = next((h for h in hist if h.get("type") == "job"), None)
    if meta is None:
        click.echo(f"{job_id} ({row['status']}) has no training history: it never started training.")
        return
    click.echo(f"{job_id}: {meta.get('backend')} on {meta.get('dataset')}, {meta.get('epochs')} epochs, batch"
               f" {meta.get('batch_size')}, σ={_cell(meta.get('noise_multiplier'))} q={_cell(meta.get('sample_rate'))}"
               f" planned ε={_cell(meta.get('epsilon_planned'))}")
    t0 = meta["at"]
    rows = [{"t": f"{h['at'] - t0:.1f}s", **h} for h in hist if h.get("type") == "progress" and h.get("epoch") is not None]
    click.echo(_table(rows, [("epoch", "EPOCH"), ("epochs", "OF"), ("loss", "LOSS"), ("epsilon", "ε SO FAR"),
                             ("steps", "STEPS"), ("t", "TIME")]))
    click.echo(f"status: {row['status']}" + (f" ({row['error']})" if row.get("error") else ""))


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--wait", "wait_s", type=float, default=0.0, help="Seconds to wait for a running job to stop (0: do not wait).")
@click.option("--account", default=None,
              help="The buyer account whose JOB_ID to cancel (job ids are per account); default: the admin's inbox.")
@click.option("--json", "as_json", is_flag=True)
def jobs_cancel(job_id: str, home: str | None, wait_s: float, account: str | None, as_json: bool) -> None:
    """Cancel JOB_ID: a queued job is removed with an error report (nothing charged); a running one is
    stopped by the daemon (its worker is killed) and charged its reservation, since it touched the data.

    The request is a file state/cancel/<JOB_ID> (state/cancel/@<ACCOUNT>/<JOB_ID> with --account)
    the daemon watches while it plans and trains; it stops only that account's JOB_ID.
    """
    from pandacead.accounts import valid_account
    from pandacead.jobs import valid_job_id

    if not valid_job_id(job_id):
        raise click.BadParameter(f"{job_id!r} is not a valid job id.", param_hint="JOB_ID")
    if account is not None and not valid_account(account):
        raise click.BadParameter(f"{account!r} is not a valid account name.", param_hint="--account")
    scope = account or ""
    s = _settings(home)
    led = _ledger(home, "cancel")
    from pandacead.pipeline import cancel_path

    row, _ = _job_rows(s, led, job_id, scope=scope)
    queued = _queued_in_scope(s, job_id, scope, led)
    if row is not None and row["status"] != "running" and not queued:
        raise click.ClickException(f"Job {job_id} already {row['status']}; there is nothing to cancel.")
    if row is None and not queued:
        where = f"account {scope}'s jobs" if scope else "the admin's inbox (use --account for a buyer's job)"
        raise click.ClickException(f"No queued or running job {job_id} in {where} of {s.home}.")
    req = cancel_path(s, job_id, scope)
    req.parent.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    req.parent.mkdir(exist_ok=True, mode=0o700)
    req.write_text(json.dumps({"job_id": job_id, "by": f"cli:{os.getenv('USER', 'unknown')}", "at": time.time()}))
    result: dict[str, Any] = {"job_id": job_id}
    taken = _take_from_inbox(s, led, job_id) if not scope else None  # a buyer's inbox is the buyer's to withdraw
    if taken is not None:
        req.unlink(missing_ok=True)
        result.update(status="rejected", was="queued", charged=False, report=str(taken))
        if as_json:
            _emit_json(result)
        else:
            click.echo(f"cancelled queued job {job_id}: nothing was charged; report {taken}")
        return
    result.update(was="running" if row is not None and row["status"] == "running" else "queued", requested=str(req))
    deadline = time.monotonic() + wait_s
    while wait_s and time.monotonic() < deadline:
        r2, _ = _job_rows(s, led, job_id, scope=scope)
        if r2 is not None and r2["status"] in ("rejected", "failed", "succeeded"):
            spend = led.spend(job_id, scope)
            result.update(status=r2["status"], error=r2.get("error"),
                          charged=bool(spend and spend["state"] == "committed" and spend.get("owner") == r2.get("owner")),
                          epsilon_charged=spend.get("epsilon") if spend else None)
            break
        time.sleep(0.2)
    if as_json:
        _emit_json(result)
    elif "status" in result:
        click.echo(f"{job_id} {result['status']}: {result.get('error')}"
                   + (f" (charged ε={_cell(result['epsilon_charged'])})" if result.get("charged") else " (nothing charged)"))
    else:
        click.echo(f"asked the daemon to stop {job_id} ({result['was']}); if it had started training, its reservation"
                   f" is charged. Follow it with `pandacead jobs show {job_id}`.")


def _take_from_inbox(s: Any, led: Any, job_id: str) -> Path | None:
    """Move a queued job's file out of the inbox before the daemon claims it, and report it cancelled.

    The rename is atomic: either we take the file (and report it) or the daemon
    did, and then it finds the cancel request before it plans the job.
    """
    from pandacead.artifacts import ERROR_SUFFIX, error_report, publish
    from pandacead.jobs import job_id_hint, parse_json
    from pandacead.spool import scan

    for e in scan(s.inbox):
        if e.name[:-5] != job_id and not e.name.startswith(job_id + "~"):
            continue
        hold = s.state / "cancel" / f".{e.name}.{os.getpid()}.taken"
        try:
            os.rename(s.inbox / e.name, hold)
        except FileNotFoundError:
            continue
        try:
            raw = parse_json(hold.read_bytes()[:1_048_576])
        except Exception:
            raw = {}
        if job_id_hint(raw) not in (None, job_id):
            os.rename(hold, s.inbox / e.name)  # another job's file after all: put it back
            continue
        user = raw.get("user_id") if isinstance(raw, dict) and isinstance(raw.get("user_id"), str) else None
        msg = f"Job {job_id} was cancelled before it started; nothing was charged."
        details = [f"cancelled: by cli:{os.getenv('USER', 'unknown')} while queued"]
        _, report = led.settle_failure(job_id, user, "rejected", msg, details, owner="cancel", file=e.name)
        path = s.outbox / f"{report}{ERROR_SUFFIX}"
        publish(path, (json.dumps(error_report(job_id, "rejected", msg, details), indent=2) + "\n").encode("utf-8"))
        hold.unlink(missing_ok=True)
        return path
    return None


# -- report / key ------------------------------------------------------------------


@cli.command()
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Directory for report.html. Default: state/report/.")
@click.option("--json", "as_json", is_flag=True, help="Print the data the page shows, as JSON, and write no page.")
def report(home: str | None, out_dir: str | None, as_json: bool) -> None:
    """Write a self-contained HTML page: ε and δ spent over time per account and per dataset, and per job
    its loss and ε-so-far curves, parameters and outcome. Loads nothing from the network.

    The page shows training loss, which is not a DP release: it is for the
    earner, written under state/ unless --out says otherwise, never into the outbox.
    """
    from pandacead import report as rep

    s = _settings(home)
    _ledger(home).close()  # the usual message when there is no ledger
    if as_json:
        _emit_json(rep.collect(s))
        return
    path = rep.write(s, Path(out_dir) if out_dir else s.state / "report")
    click.echo(f"wrote {path}")


@cli.group()
def key() -> None:
    """This host's signing key: what buyers verify artifacts (and quotes) with."""


@key.command("show")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def key_show(home: str | None, as_json: bool) -> None:
    """Print the public key (PEM) and its keyid, the sha256 of the raw key that envelopes name."""
    from pandacead.signing import keyid, load_public_key, public_pem

    s = _settings(home)
    pub_path = s.key_path.with_suffix(".pub")
    if not pub_path.exists():
        raise ConfigError(f"No public key at {pub_path}; run `pandacead init --home {s.home}` first.")
    pub = load_public_key(pub_path)
    kid, pem = keyid(pub), public_pem(pub).decode("ascii")
    if as_json:
        _emit_json({"keyid": kid, "algorithm": "ed25519", "public_key_pem": pem, "path": str(pub_path)})
        return
    click.echo(f"keyid {kid}")
    click.echo("algorithm ed25519")
    click.echo(f"file {pub_path}")
    click.echo(pem.rstrip())
    click.echo(f"Buyers verify with: pandacead verify --key {pub_path.name} ARTIFACT.json")


# -- verify / plugins ----------------------------------------------------------------


@cli.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--key", "keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Public key (PEM) to trust; repeatable. Default: the home's key(s).")
@click.option("--envelope", type=click.Path(dir_okay=False), help="Default: ARTIFACT with .dsse.json.")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def verify(artifact: str, keys: tuple[str, ...], envelope: str | None, home: str | None, as_json: bool) -> None:
    """Check an artifact's hash, its envelope's subject digest and its signatures; exit 0 only if all hold.

    A renamed artifact verifies when the envelope's subject digest matches
    (the name it was signed under is shown); signatures by unknown keys are
    ignored when one signature is by a trusted key. An error report is said to
    be one: reports are not signed and are not artifacts.
    """
    from pandacead.artifacts import signed_name, verify_artifact
    from pandacead.signing import keyid, load_public_key

    try:
        head = json.loads(Path(artifact).read_bytes())
    except (OSError, ValueError):
        head = None
    if isinstance(head, dict) and "error" in head and "status" in head and "model" not in head:
        msg = (f"{artifact} is an error report, not an artifact: job {head.get('job_id')} {head.get('status')}:"
               f" {head.get('error')}")
        if as_json:
            _emit_json({"artifact": artifact, "ok": False, "error_report": True, "problems": [msg]})
        else:
            click.echo(msg, err=True)
        sys.exit(1)

    if keys:
        trusted = {}
        for k in keys:
            pub = load_public_key(Path(k))
            trusted[keyid(pub)] = pub
    else:
        from pandacead.app import trusted_keys

        trusted = trusted_keys(_settings(home))
        if not trusted:
            raise click.ClickException("No public key to verify with; pass --key or --home.")
    problems = verify_artifact(Path(artifact), trusted, Path(envelope) if envelope else None)
    name = None if problems else signed_name(Path(artifact), Path(envelope) if envelope else None)
    env_path = Path(envelope) if envelope else Path(artifact).with_name(Path(artifact).name[:-5] + ".dsse.json")
    try:
        signers = [sg.get("keyid") for sg in json.loads(env_path.read_bytes()).get("signatures", [])
                   if isinstance(sg, dict) and sg.get("keyid") in trusted]
    except (OSError, ValueError, AttributeError):
        signers = []
    if as_json:
        _emit_json({"artifact": artifact, "ok": not problems, "problems": problems, "signed_name": name,
                    "signed_by": signers})
    if problems:
        if not as_json:
            click.echo(f"{artifact} does not verify: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") + ".", err=True)
        sys.exit(1)
    if not as_json:
        renamed = f"; signed as {name}" if name and name != Path(artifact).name else ""
        click.echo(f"{artifact}: OK (hash, subject digest and signatures verified{renamed})")
        for kid in signers:
            click.echo(f"signed by key {kid}")


@cli.command()
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def plugins(home: str | None, as_json: bool) -> None:
    """List plugins: distribution, version, hooks, trainers, and any load error."""
    from pandacead.app import App

    s = _settings(home)
    _restart_note(s)
    # With the home's key, the built-in signer is listed like any other plugin.
    ps = App(s, with_key=s.key_path.exists(), with_datasets=False).plugins
    rows = [i.to_dict() for i in ps.infos.values()]
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        r["hooks"] = ", ".join(h.replace("pandacead_", "") for h in r["hooks"])
        r["trainers"] = ", ".join(r["trainers"])
        r["state"] = "ok" if not r["error"] else r["error"]
    click.echo(_table(rows, [("name", "PLUGIN"), ("dist", "DIST"), ("version", "VERSION"),
                             ("trainers", "TRAINERS"), ("hooks", "HOOKS"), ("state", "STATE")]))


# -- datasets ------------------------------------------------------------------------

DATASET_COLUMNS = [
    ("dataset", "DATASET"), ("owner", "OWNER"), ("privacy", "PRIVACY"), ("rows", "ROWS"), ("features", "FEATURES"),
    ("epsilon_budget", "ε BUDGET"), ("epsilon_spent", "ε SPENT"), ("epsilon_reserved", "ε RESERVED"),
    ("epsilon_remaining", "ε LEFT"), ("delta_budget", "δ BUDGET"), ("delta_spent", "δ SPENT"), ("jobs", "JOBS"),
]


def _dataset_rows(led: Any, names: list[str], settings: Any) -> list[dict[str, Any]]:
    """The ledger's figures for each dataset, with its rows and features (the admin's view)."""
    from pandacead.app import describe_datasets

    infos, errors = describe_datasets(settings)
    rows = []
    for name in names:
        d = led.dataset_summary(name)
        info = infos.get(name)
        d["privacy"] = "public" if d["public"] else "private"
        d["rows"] = info.n_rows if info else None
        d["features"] = info.n_features if info else None
        d["registered"] = info is not None
        if name in errors:
            d["error"] = errors[name]
        rows.append(d)
    return rows


def _show_dataset(led: Any, name: str, as_json: bool, settings: Any) -> None:
    if not led.dataset_exists(name):
        raise click.ClickException(f"No dataset {name} on this host (see `pandacead datasets list`).")
    row = _dataset_rows(led, [name], settings)[0]
    if as_json:
        _emit_json(row)
        return
    click.echo(_table([row], DATASET_COLUMNS))
    click.echo(f"(composition: {led.composition})")
    if row["legacy_spends"]:
        click.echo(
            f"({row['legacy_spends']} spend(s) from before datasets were recorded count against {name};"
            f" `pandacead datasets legacy {name} --ignore` stops that)"
        )


@cli.group()
def datasets() -> None:
    """The datasets this host offers: owner, public or private, budget, spent and remaining (all buyers)."""


@datasets.command("list")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="A list of objects, one per dataset.")
def datasets_list(home: str | None, as_json: bool) -> None:
    """Every dataset the configuration registers or the ledger has charged."""
    s = _settings(home)
    led = _ledger(home)
    rows = _dataset_rows(led, led.dataset_names(), s)
    if as_json:
        _emit_json(rows)
        return
    click.echo(_table(rows, DATASET_COLUMNS))
    click.echo(f"(composition: {led.composition})")


@datasets.command("show")
@click.argument("name")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def datasets_show(name: str, home: str | None, as_json: bool) -> None:
    """One dataset: owner, privacy, rows and features, budget, spent, reserved and remaining."""
    _show_dataset(_ledger(home), name, as_json, _settings(home))


@datasets.command("legacy")
@click.argument("name")
@click.option("--ignore/--count", default=True,
              help="--ignore: spends from before datasets were recorded no longer count against NAME; --count: they do.")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def datasets_legacy(name: str, ignore: bool, home: str | None, as_json: bool) -> None:
    """Decide whether spends that name no dataset (from an older ledger) count against NAME (audited).

    After the migration they count against every private dataset, which is
    conservative; an admin who knows they touched other data lifts them here.
    """
    led = _ledger(home)
    if not led.dataset_exists(name):
        raise click.ClickException(f"No dataset {name} on this host (see `pandacead datasets list`).")
    d = led.set_legacy(name, not ignore)
    if as_json:
        _emit_json(d)
    else:
        click.echo(f"dataset {name}: spends without a dataset {'no longer count' if ignore else 'count'} against it")


# -- buyers --------------------------------------------------------------------------


@cli.group()
def buyers() -> None:
    """Buyer accounts: inbox/<account>/ and outbox/<account>/, owned by one unix user (docs/accounts.md)."""


@buyers.command("add")
@click.argument("name")
@click.option("--user", "unix_user", help="The unix user who may drop jobs and read outcomes (default: you).")
@click.option("--uid", type=int, help="The same, as a uid.")
@click.option("--epsilon", type=float, help="The account's ε allowance (default: [budget] default_epsilon).")
@click.option("--delta", type=float, help="The account's δ allowance (default: [budget] default_delta).")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def buyers_add(
    name: str, unix_user: str | None, uid: int | None, epsilon: float | None, delta: float | None,
    home: str | None, as_json: bool,
) -> None:
    """Create buyer account NAME: its ledger entry and its inbox/outbox directories.

    Only the unix user (and the service's group) can write inbox/NAME/ and
    read outbox/NAME/; jobs dropped there always pay with NAME.
    """
    from pandacead.accounts import create_buyer_dirs, resolve_user, valid_account

    s = _settings(home)
    if not valid_account(name):
        raise click.BadParameter(f"{name!r} is not a valid account name (letters, digits, . _ -; at most 48;"
                                 " not ending in .json).", param_hint="NAME")
    for v, what in ((epsilon, "--epsilon"), (delta, "--delta")):
        if v is not None and not (v >= 0 and v != float("inf")):
            raise click.BadParameter(f"{v} is not a finite number >= 0.", param_hint=what)
    led = _ledger(home)
    try:
        uid_, login = resolve_user(unix_user, uid)
        dirs = create_buyer_dirs(s, name, uid_, login)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"Cannot add buyer {name}: {exc}.") from None
    b = led.add_account(name, epsilon, delta, buyer=True, unix_uid=uid_)
    out = {**dirs.to_dict(), **b.to_dict()}
    if as_json:
        _emit_json(out)
    else:
        click.echo(f"buyer {name} (unix user {login or uid_}): drops jobs into {dirs.inbox}/, reads {dirs.outbox}/;"
                   f" allowance ε {b.epsilon_budget:g}, δ {b.delta_budget:g}")


@buyers.command("list")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def buyers_list(home: str | None, as_json: bool) -> None:
    """Buyer accounts with their directories, owners, modes and allowances."""
    import pwd

    from pandacead.accounts import buyer_inboxes, describe_dir

    s = _settings(home)
    led = _ledger(home)
    accounts = {a["user_id"]: a for a in led.accounts()}
    names = sorted({n for n, a in accounts.items() if a["buyer"]} | {n for n, _ in buyer_inboxes(s.inbox)})
    rows = []
    for n in names:
        inbox, outbox = describe_dir(s.inbox / n), describe_dir(s.outbox / n)
        uid = (inbox or {}).get("uid", (accounts.get(n) or {}).get("unix_uid"))
        try:
            user = pwd.getpwuid(uid).pw_name if uid is not None else None
        except KeyError:
            user = None
        summ = led.summary(n)
        rows.append({
            "account": n, "user": user, "uid": uid, "registered": n in accounts,
            "inbox": inbox, "outbox": outbox, "epsilon_budget": summ["epsilon_budget"],
            "epsilon_spent": summ["epsilon_spent"], "epsilon_remaining": summ["epsilon_remaining"],
        })
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        r["inbox_mode"] = (r["inbox"] or {}).get("mode", "missing")
        r["outbox_mode"] = (r["outbox"] or {}).get("mode", "missing")
    click.echo(_table(rows, [("account", "ACCOUNT"), ("user", "UNIX USER"), ("inbox_mode", "INBOX"),
                             ("outbox_mode", "OUTBOX"), ("epsilon_budget", "ε BUDGET"), ("epsilon_spent", "ε SPENT"),
                             ("epsilon_remaining", "ε LEFT")]))


@buyers.command("remove")
@click.argument("name")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def buyers_remove(name: str, home: str | None, as_json: bool) -> None:
    """Stop taking jobs from NAME: remove inbox/NAME/ (it must be empty). The outbox and the ledger's record stay."""
    from pandacead.accounts import remove_buyer_dirs

    s = _settings(home)
    led = _ledger(home)
    try:
        removed = remove_buyer_dirs(s, name)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"Cannot remove buyer {name}: {exc}.") from None
    known = led.remove_account(name)
    if not removed and not known:
        raise click.ClickException(f"There is no buyer {name} in {s.home}.")
    if as_json:
        _emit_json({"account": name, "removed": removed, "ledger": known})
    else:
        click.echo(f"buyer {name} removed ({', '.join(removed) or 'no inbox'}); outbox/{name}/ and its record stay")


@cli.group("config")
def config_group() -> None:
    """Show or check the configuration (pandacead.toml + PANDACEAD_<SECTION>__<KEY> variables)."""


@config_group.command("show")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: home, config file, values with their source.")
def config_show(home: str | None, as_json: bool) -> None:
    """Print the effective configuration and where each value came from (default, file or env)."""
    from pandacead.config import effective

    s = _settings(home)
    rows = effective(s)
    if as_json:
        _emit_json({"home": str(s.home), "config": str(s.home / CONFIG_NAME),
                    "config_exists": (s.home / CONFIG_NAME).is_file(), "values": rows})
        return
    click.echo(f"# {s.home / CONFIG_NAME}" + ("" if (s.home / CONFIG_NAME).is_file() else " (missing: defaults only)"))
    click.echo(_table([{"key": r["key"], "value": json.dumps(r["value"]), "source": r["source"]} for r in rows],
                      [("key", "KEY"), ("value", "VALUE"), ("source", "SOURCE")]))


@config_group.command("check")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, config, error, dataset_errors.")
def config_check(home: str | None, as_json: bool) -> None:
    """Validate the configuration (and describe its datasets) without starting anything; exit 1 if invalid."""
    from pandacead.config import load_settings, resolve_home

    cfg = resolve_home(home) / CONFIG_NAME
    result: dict[str, Any] = {"ok": True, "config": str(cfg), "error": None, "dataset_errors": {}}
    try:
        s = load_settings(home)
        if not cfg.is_file():
            raise ConfigError(f"There is no {cfg}; create the home with `pandacead init --home {cfg.parent}`.")
        import logging

        from pandacead.app import describe_datasets

        logging.getLogger("pandacead").setLevel(logging.CRITICAL)  # the dataset errors are reported below
        result["dataset_errors"] = describe_datasets(s)[1]
    except ConfigError as exc:
        result.update(ok=False, error=str(exc))
    if result["dataset_errors"]:
        result["ok"] = False
        result["error"] = result["error"] or "; ".join(f"{v}" for v in result["dataset_errors"].values())
    if as_json:
        _emit_json(result)
    elif result["ok"]:
        click.echo(f"{cfg} is valid")
    else:
        click.echo(f"pandacead: {result['error']}", err=True)
    sys.exit(0 if result["ok"] else 1)

# -- audit ---------------------------------------------------------------------------


@cli.command()
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--backend", help="The backend to audit. Default: the home's default backend.")
@click.option("--epsilon", type=float, default=1.0, show_default=True, help="The ε the audit jobs ask for.")
@click.option("--delta", type=float, default=1e-5, show_default=True, help="The δ the audit jobs ask for.")
@click.option("--runs", type=int, default=200, show_default=True,
              help="Training runs (many-runs: half without the canary, half with it).")
@click.option("--method", type=click.Choice(["many-runs", "one-run"]), default="many-runs", show_default=True,
              help="many-runs: Clopper-Pearson test over repeated runs; one-run: many canaries in one run.")
@click.option("--canaries", type=int, default=500, show_default=True, help="Canaries of a one-run audit.")
@click.option("--statistic", type=click.Choice(["loss", "weight"]), default="loss", show_default=True,
              help="loss: the model's loss on the canary (black-box); weight: the canary's own weight (white-box).")
@click.option("--epochs", type=int, default=1, show_default=True, help="Full-batch DP steps per run.")
@click.option("--confidence", type=float, default=0.95, show_default=True)
@click.option("--time-limit", type=float, help="Stop starting runs after this many seconds (the bound uses the runs done).")
@click.option("--seed", type=int, help="Seed the audit's own randomness (canaries, noise seeds) to repeat an audit.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write audit.json, audit.txt and audit.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit(home: str | None, backend: str | None, epsilon: float, delta: float, runs: int, method: str,
          canaries: int, statistic: str, epochs: int, confidence: float, time_limit: float | None,
          seed: int | None, out_dir: str | None, as_json: bool) -> None:
    """Empirical privacy audit: a lower bound ε̂ on a backend's real privacy loss, next to the ε it claims.

    Trains the backend many times on a small public synthetic dataset with
    and without a canary (or once with many canaries) and turns how well the
    canary can be detected into a lower bound ε̂ at the given confidence
    (docs/audit.md). ε̂ above the claimed ε proves a privacy bug: the exit
    code is then 3. Nothing is charged; the home's datasets are never read.
    """
    from pandacead.audit import AuditError, AuditSettings, audit_backend
    from pandacead.audit.report import write_report

    settings = AuditSettings(epsilon=epsilon, delta=delta, method=method, runs=runs, canaries=canaries,
                             statistic=statistic, epochs=epochs, confidence=confidence,
                             time_limit=time_limit, seed=seed)
    tty = sys.stderr.isatty()
    last = [0.0]

    def progress(event: dict[str, Any]) -> None:
        now = time.monotonic()
        done, total = event.get("run"), event.get("runs")
        if tty or done == total or now - last[0] > 5:
            last[0] = now
            click.echo(f"\raudit: run {done}/{total}, {event.get('elapsed')} s", err=True, nl=not tty)

    try:
        report = audit_backend(home, backend, settings, progress=progress)
    except AuditError as exc:
        raise click.ClickException(str(exc)) from None
    if tty:
        click.echo("", err=True)
    if out_dir:
        write_report(report, out_dir)
    if as_json:
        _emit_json(report.to_dict())
    else:
        click.echo(report.summary())
        for kind, path in report.files.items():
            click.echo(f"  {kind}: {path}")
    if report.violated:
        sys.exit(3)



def main() -> None:
    try:
        cli(standalone_mode=False, prog_name="pandacead")
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"pandacead: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code or 1)
    except ConfigError as exc:
        click.echo(f"pandacead: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except sqlite3.OperationalError as exc:
        click.echo(f"pandacead: the ledger is unavailable ({exc}); another process may hold it locked, try again.", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"pandacead: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ") + ".", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
