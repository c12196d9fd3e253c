"""The `pandacead` command: a thin click layer over the modules. Heavy libraries are never imported here."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click

from pandacead import __version__
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
    return Ledger.from_settings(s, actor=f"{actor}:{os.getenv('USER', 'unknown')}")


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
def cli() -> None:
    """pandacead: train models with differential privacy on an earner host.

    Buyers drop training jobs (JSON) into inbox/; the daemon checks each
    job's privacy cost against the data owner's budget before training,
    trains with DP-SGD, charges the ledger, and publishes a signed, hashed
    artifact (or an error report) into outbox/.

    Start with `pandacead init`, then `pandacead run`.
    """


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
    from pandacead.app import ensure_home
    from pandacead.daemon import Daemon

    _setup_logging(home, verbose)
    s = _settings(home)
    if not s.ledger_path.exists():
        for c in ensure_home(s):
            click.echo(f"created {c}", err=True)
    sys.exit(Daemon(s, once=once).run())


@cli.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--wait", is_flag=True, help="Wait for the outcome and print it; exit 1 unless it succeeded.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.option("--json", "as_json", is_flag=True, help="With --wait: print the outcome as JSON.")
def submit(job_file: str, home: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Validate JOB_FILE and drop it into the inbox atomically (temp file, then rename)."""
    from pandacead.artifacts import ERROR_SUFFIX, publish
    from pandacead.errors import JobRejected
    from pandacead.jobs import parse_job

    s = _settings(home)
    data = sys.stdin.buffer.read() if job_file == "-" else Path(job_file).read_bytes()
    try:
        job = parse_job(data)
    except JobRejected as exc:
        raise click.ClickException(f"{job_file}: {exc.message} " + "; ".join(exc.details[1:3])) from None
    if not s.inbox.is_dir():
        raise ConfigError(f"The inbox {s.inbox} does not exist; run `pandacead init --home {s.home}`.")
    target = s.inbox / f"{job.job_id}.json"
    n = 1
    while target.exists():
        target = s.inbox / f"{job.job_id}~{n}.json"
        n += 1
    started = time.time()
    publish(target, data, mode=0o644)
    if not wait:
        click.echo(f"submitted {job.job_id} as {target}")
        return
    art, err = s.outbox / f"{job.job_id}.json", s.outbox / f"{job.job_id}{ERROR_SUFFIX}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path, ok in ((art, True), (err, False)):
            try:
                if path.stat().st_mtime >= started - 1 and not target.exists():
                    outcome = json.loads(path.read_text("utf-8"))
                    if ok and not (s.outbox / f"{job.job_id}.dsse.json").exists():
                        continue
                    if as_json:
                        _emit_json(outcome if not ok else {k: v for k, v in outcome.items() if k != "model"})
                    elif ok:
                        click.echo(f"{job.job_id} succeeded: ε={outcome['epsilon']:.6g} accuracy={_cell(outcome.get('accuracy'))} backend={outcome['backend']} → {path}")
                    else:
                        click.echo(f"{job.job_id} {outcome['status']}: {outcome['error']}", err=True)
                    sys.exit(0 if ok else 1)
            except FileNotFoundError:
                pass
        time.sleep(0.2)
    raise click.ClickException(f"No outcome for {job.job_id} after {timeout:g} s; is `pandacead run` running on {s.home}?")


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
    """Show and manage users' privacy budgets (ε, δ) in the ledger."""


@budget.command("show")
@click.argument("user", required=False)
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object (with USER) or a list.")
def budget_show(user: str | None, home: str | None, as_json: bool) -> None:
    """Show USER's budget, or every user's."""
    led = _ledger(home)
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


@budget.command("set")
@click.argument("user")
@click.argument("epsilon", type=float)
@click.option("--delta", type=float, help="Also set the δ budget (default: keep it).")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def budget_set(user: str, epsilon: float, delta: float | None, home: str | None, as_json: bool) -> None:
    """Set USER's ε budget to EPSILON (what was spent stays spent)."""
    _check_user(user)
    try:
        b = _ledger(home).set_budget(user, epsilon, delta)
    except ValueError as exc:
        raise click.ClickException(f"{exc}.") from None
    if as_json:
        _emit_json(b.to_dict())
    else:
        click.echo(f"{user}: ε budget {b.epsilon_budget:g} (spent {b.epsilon_spent:.6g}), δ budget {b.delta_budget:g}")


@budget.command("reset")
@click.argument("user")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def budget_reset(user: str, home: str | None, as_json: bool) -> None:
    """Forget what USER has spent (audited). Running jobs keep their reservations."""
    _check_user(user)
    b = _ledger(home).reset(user)
    if as_json:
        _emit_json(b.to_dict())
    else:
        click.echo(f"{user}: spent reset to 0; ε budget {b.epsilon_budget:g}")


@budget.command("history")
@click.argument("user")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def budget_history(user: str, home: str | None, as_json: bool) -> None:
    """List USER's jobs with their privacy parameters, and the audit log."""
    led = _ledger(home)
    spends = led.spends(user)
    audit = led.audit(user)
    if as_json:
        _emit_json({"user_id": user, "spends": spends, "audit": audit})
        return
    click.echo(_table(spends, [
        ("job_id", "JOB"), ("state", "STATE"), ("backend", "BACKEND"), ("epsilon_reserved", "ε RESERVED"),
        ("epsilon", "ε SPENT"), ("delta", "δ"), ("noise_multiplier", "σ"), ("sample_rate", "q"),
        ("steps", "STEPS"), ("reserved_at", "RESERVED AT"),
    ]))
    click.echo()
    click.echo(_table(audit, [("at", "AT"), ("event", "EVENT"), ("job_id", "JOB"), ("actor", "BY")]))


# -- jobs ------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """List the jobs this home has processed, and their status and progress."""


def _queued(s: Any) -> list[dict[str, Any]]:
    from pandacead.spool import original_name, scan

    out = [{"job_id": e.name[:-5], "status": "queued", "file": e.name} for e in scan(s.inbox)]
    if s.spool.exists():
        for d in s.spool.iterdir():
            if d.is_dir():
                for p in d.iterdir():
                    if not p.name.startswith("."):
                        out.append({"job_id": original_name(p)[:-5], "status": "queued", "file": p.name})
    return out


@jobs.command("list")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_list(home: str | None, limit: int, as_json: bool) -> None:
    """Recent jobs, newest first (files still waiting in the inbox show as queued)."""
    s = _settings(home)
    led = _ledger(home)
    spooled_files = {r["file"] for r in led.jobs(limit)}
    rows = [r for r in _queued(s) if r["file"] not in spooled_files] + led.jobs(limit)
    if as_json:
        _emit_json(rows)
        return
    click.echo(_table(rows, [
        ("job_id", "JOB"), ("user_id", "USER"), ("status", "STATUS"), ("backend", "BACKEND"),
        ("epsilon", "ε"), ("updated_at", "UPDATED"), ("error", "ERROR"),
    ]))


@jobs.command("show")
@click.argument("job_id")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def jobs_show(job_id: str, home: str | None, as_json: bool) -> None:
    """One job: status, backend, ε, progress (epoch, loss, ε so far) and any error."""
    s = _settings(home)
    row = _ledger(home).job(job_id)
    if row is None:
        queued = [r for r in _queued(s) if r["job_id"] == job_id]
        if not queued:
            raise click.ClickException(f"No job {job_id} in {s.home}.")
        row = queued[0]
    if as_json:
        _emit_json(row)
        return
    for key in ("job_id", "user_id", "status", "backend", "epsilon", "delta", "created_at", "updated_at", "error"):
        if key in row:
            click.echo(f"{key:>10}: {_cell(row.get(key))}")
    if row.get("progress"):
        p = row["progress"]
        click.echo(f"{'progress':>10}: epoch {p.get('epoch')}/{p.get('epochs')} loss {_cell(p.get('loss'))} ε so far {_cell(p.get('epsilon'))}")
    for d in row.get("details") or []:
        click.echo(f"{'':>10}  - {d}")


# -- verify / plugins ----------------------------------------------------------------


@cli.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--key", "keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Public key (PEM) to trust; repeatable. Default: the home's key(s).")
@click.option("--envelope", type=click.Path(dir_okay=False), help="Default: ARTIFACT with .dsse.json.")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def verify(artifact: str, keys: tuple[str, ...], envelope: str | None, home: str | None, as_json: bool) -> None:
    """Check an artifact's hash, its envelope's subject digest and every signature; exit 0 only if all hold."""
    from pandacead.artifacts import verify_artifact
    from pandacead.signing import keyid, load_public_key

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
    if as_json:
        _emit_json({"artifact": artifact, "ok": not problems, "problems": problems})
    if problems:
        if not as_json:
            click.echo(f"{artifact} does not verify: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") + ".", err=True)
        sys.exit(1)
    if not as_json:
        click.echo(f"{artifact}: OK (hash, subject digest and signatures verified)")


@cli.command()
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def plugins(home: str | None, as_json: bool) -> None:
    """List plugins: distribution, version, hooks, trainers, and any load error."""
    from pandacead.app import App

    s = _settings(home)
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
        cli(standalone_mode=False)
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
