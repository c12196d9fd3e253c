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
    from pandacead.daemon import Daemon, install_early_signals

    install_early_signals()  # a stop during start-up is a clean stop, not a death by SIGTERM
    _setup_logging(home, verbose)
    s = _settings(home)
    if not (s.home / CONFIG_NAME).is_file() or not s.ledger_path.exists():
        # A mistyped --home must not quietly become a new home with a new signing key.
        raise ConfigError(f"{s.home} is not a pandacead home; create it with `pandacead init --home {s.home}` first.")
    sys.exit(Daemon(s, once=once).run())


@cli.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--wait", is_flag=True, help="Wait for the outcome and print it; exit 1 unless it succeeded.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.option("--json", "as_json", is_flag=True, help="With --wait: print the outcome as JSON.")
@click.option("--account", help="Drop it into this buyer's inbox (inbox/ACCOUNT/); its outcome is in outbox/ACCOUNT/.")
def submit(job_file: str, home: str | None, wait: bool, timeout: float, as_json: bool, account: str | None) -> None:
    """Validate JOB_FILE and drop it into the inbox atomically (temp file, then rename).

    With --account the job goes to that buyer's inbox and pays with that account.
    """
    from pandacead.artifacts import ERROR_SUFFIX, publish
    from pandacead.errors import JobRejected
    from pandacead.jobs import parse_job

    s = _settings(home)
    data = sys.stdin.buffer.read() if job_file == "-" else Path(job_file).read_bytes()
    try:
        job = parse_job(data, default_user=account)
    except JobRejected as exc:
        raise click.ClickException(f"{job_file}: {exc.message} " + "; ".join(exc.details[1:3])) from None
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
    target = inbox / f"{job.job_id}.json"
    n = 1
    while target.exists():
        target = inbox / f"{job.job_id}~{n}.json"
        n += 1
    started = time.time()
    publish(target, data, mode=0o644)
    if not wait:
        click.echo(f"submitted {job.job_id} as {target}")
        return
    art, err = outbox / f"{job.job_id}.json", outbox / f"{job.job_id}{ERROR_SUFFIX}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path, ok in ((art, True), (err, False)):
            try:
                if path.stat().st_mtime >= started - 1 and not target.exists():
                    outcome = json.loads(path.read_text("utf-8"))
                    if ok and not (outbox / f"{job.job_id}.dsse.json").exists():
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
    """List USER's jobs (dataset, privacy parameters) and the audit log; or a dataset's with --dataset."""
    if (user is None) == (dataset is None):
        raise click.UsageError("Give USER or --dataset NAME.")
    led = _ledger(home)
    if dataset is not None:
        spends = led.spends(dataset=dataset)
        audit = [a for a in led.audit() if a.get("detail") and json.loads(a["detail"]).get("dataset") == dataset]
        if as_json:
            _emit_json({"dataset": dataset, "spends": spends, "audit": audit})
            return
    else:
        spends = led.spends(user)
        audit = led.audit(user)
        if as_json:
            _emit_json({"user_id": user, "spends": spends, "audit": audit})
            return
    click.echo(_table(spends, [c for c in SPEND_COLUMNS if c[0] != ("dataset" if dataset else "user_id")]))
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


@jobs.command("list")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_list(home: str | None, limit: int, as_json: bool) -> None:
    """Recent jobs, newest first (files still waiting in the inbox show as queued)."""
    s = _settings(home)
    _restart_note(s)
    led = _ledger(home)
    spooled_files = {r["file"] for r in led.jobs(limit)}
    rows = [r for r in _queued(s) if r["file"] not in spooled_files] + led.jobs(limit)
    if as_json:
        _emit_json(rows)
        return
    click.echo(_table(rows, [
        ("job_id", "JOB"), ("user_id", "USER"), ("dataset", "DATASET"), ("status", "STATUS"), ("backend", "BACKEND"),
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
    for key in ("job_id", "user_id", "dataset", "status", "backend", "epsilon", "delta", "created_at", "updated_at",
                "error"):
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
