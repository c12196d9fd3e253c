"""The job pipeline: one function per stage, from a claimed file to exactly one outcome.

    read → parse → select backend → plan → budget hooks → reserve → train
         → artifact → sign → publish (envelope, then artifact) → commit → clean up

Any stage may refuse (JobRejected) or fail (JobFailed); the job then ends in
an error report and its reservation, if this file made one, is released. The
ledger's `jobs` row (keyed by the spool file name) records how far a job got,
so a daemon that restarts after a crash settles every spooled file exactly
once: see `Pipeline.process`.

A problem of the host rather than of the job (outbox not writable or full,
ledger locked for minutes) raises `Deferred`: the file stays in the spool with
whatever the ledger already says about it (a reservation stays a reservation)
and the daemon tries it again later. Once an artifact is in the outbox its
reservation is only ever committed, never released.

Privacy boundary (docs/privacy.md): a non-private trainer is refused on private
data before planning (`select`); a job that cannot fit is refused before the
trainer plans it (`precheck`); once a trainer announces that it reads private
data (the progress event ``{"stage": "data_loaded"}``, recorded in the job's
ledger row) the job is charged whatever happens next — success, a failure,
divergence, a timeout or a worker crash — and its error report is one fixed
sentence without data-dependent values (`_fail`); only host problems
(`Deferred`) and a hand-back at shutdown leave the reservation as it is. What
is published passes through `released`: for private data no exact metric,
no true row count, no timing and no plain digest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import platform
import shutil
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pandacead import __version__, fastjson, faults
from pandacead.artifacts import (
    ENVELOPE_SUFFIX,
    ERROR_SUFFIX,
    artifact_bytes,
    build_artifact,
    error_report,
    fsync_dir,
    provenance,
    publish,
    safe_stem,
    utcnow,
    verify_artifact,
)
from pandacead.errors import Diverged, HandedBack, JobError, JobFailed, JobRejected
from pandacead.jobs import Job, job_id_hint, parse_job, parse_json
from pandacead.ledger import SLACK, Ledger
from pandacead.signing import envelope, envelope_payload, statement, statement_bytes
from pandacead.spool import Oversized, SpecialFile, original_name, read_job_file, spooled_account
from pandacead.trainers import PrivacyPlan, TrainerContext, TrainResult, may_train_on, noise_seed

log = logging.getLogger("pandacead.job")

#: A calibrated plan costs at least this share of the requested ε (see `Pipeline.precheck`).
PRECHECK_SHARE = 0.9
#: Metric keys a private dataset's artifact may carry: post-processing of DP outputs only.
DP_METRICS = ("diverged", "validation_accuracy_dp", "validation_clipped_loss_dp", "train_accuracy_dp",
              "train_clipped_loss_dp")
#: Provenance keys released for private data (library versions, the opaque dataset id).
RELEASED_PROVENANCE = ("versions", "backend", "dataset", "dataset_version", "noise_source")
#: Under the state directory: one directory per job that a trainer may checkpoint into
#: (`pandacead_opacus.checkpoint`); removed by the pipeline when the job ends.
CHECKPOINTS_DIR = "checkpoints"
#: Under the state directory: a buyer account's own state root (job ids are unique per account),
#: state/scoped/<account>/ — what a trainer gets as ctx.options["job_state_dir"] for that account's jobs.
SCOPED_DIR = "scoped"


def job_state_dir(state: Any, scope: str = "") -> Path:
    """The state root of the jobs of `scope`: the state directory for the admin's inbox,
    state/scoped/<account>/ for a buyer's (so that one account's job J never meets another's J)."""
    return Path(state) / SCOPED_DIR / scope if scope else Path(state)
#: The job row's `error` while a job handed back at a stop waits in the spool (not a failed attempt).
HANDED_BACK = "handed back: the daemon stopped; it resumes at the next start"


class Deferred(OSError):
    """The job cannot be settled now because of the host (outbox, disk, ledger), not the job.

    Its file stays in the spool and the daemon retries it later; nothing is
    charged or released by the attempt that raised this. (An OSError, so that
    one-shot callers such as `pandacead train` report it as one sentence.)
    """

    def __init__(self, message: str, err: int = errno.EAGAIN, reason: str | None = None):
        super().__init__(err, message)
        self.message = message
        self.reason = reason or message  # the problem alone, without what happens next


class Cancelled(JobFailed):
    """`pandacead jobs cancel` stopped the job while it trained: what it touched is charged."""


CANCEL_DIR = "cancel"  # state/cancel/<job_id>: a cancel request `pandacead jobs cancel` leaves for the daemon


def cancel_path(settings: Any, job_id: str, scope: str = "") -> Path:
    """The cancel request of `job_id` in `scope`: state/cancel/<job_id> for the admin's inbox,
    state/cancel/@<account>/<job_id> for a buyer's (job ids are unique per scope only; no id has an '@')."""
    base = Path(settings.state) / CANCEL_DIR
    return base / f"@{scope}" / job_id if scope else base / job_id


def history_path(settings: Any, row_id: int) -> Path:
    """state/history/<jobs row id>.jsonl: a job's parameters, then one line per progress report
    (`pandacead jobs logs`, `pandacead report`). For the earner: under state/, never in the outbox."""
    return Path(settings.state) / "history" / f"{int(row_id)}.jsonl"


class _History:
    """Appends a job's progress to its history file; best effort (no fsync: it is a view, not a record).

    Each line is written through (`jobs logs` reads the file while a job runs). The file is created
    here, in the job's thread: an empty file's creation costs about 30 µs on this machine's ext4
    (measured, docs/benchmarks.md (a), round five); round four created it in a background thread,
    whose hand-offs (a future, a lock, the GIL) cost the daemon more than the creation itself.
    """

    def __init__(self, settings: Any, row_id: int, job: Job, backend: str, plan: PrivacyPlan):
        self.path = history_path(settings, row_id)
        self.fh: Any = None
        with contextlib.suppress(OSError):
            try:
                self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
            except FileNotFoundError:  # the first job of a home (or state/history/ was removed)
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        meta = {"type": "job", "at": time.time(), "job_id": job.job_id, "account": job.user_id,
                "dataset": job.dataset, "backend": backend, "epochs": job.epochs, "batch_size": job.batch_size,
                "learning_rate": job.learning_rate, "model": job.model.type, "hidden": list(job.model.hidden),
                "epsilon_requested": job.dp.epsilon, "delta": plan.delta, "epsilon_planned": plan.epsilon,
                "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate, "steps": plan.steps}
        self.write(meta)

    def write(self, record: dict[str, Any]) -> None:
        fh = self.fh
        if fh is None:
            return
        with contextlib.suppress(OSError, TypeError, ValueError):
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()

    def close(self) -> None:
        fh, self.fh = self.fh, None
        if fh is not None:
            with contextlib.suppress(Exception):
                fh.close()


@dataclass
class Outcome:
    job_id: str
    status: str  # succeeded | rejected | failed
    user_id: str | None = None
    backend: str | None = None
    epsilon: float | None = None
    error: str | None = None
    details: list[str] | None = None
    artifact: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["artifact"] = str(self.artifact) if self.artifact else None
        return d


class Pipeline:
    def __init__(
        self,
        settings: Any,
        plugins: Any,
        ctx: TrainerContext,
        owner: str,
        pool: Any = None,
        public_keys: dict[str, Any] | None = None,
        noise_key: bytes = b"",
    ):
        self.settings = settings
        self.plugins = plugins
        self.ctx = ctx
        self.owner = owner
        self.pool = pool
        self.public_keys = public_keys or {}
        self.noise_key = noise_key
        self._local = threading.local()
        self.versions = {"pandacead": __version__, "python": platform.python_version()}
        # One durable commit per job (docs/reliability.md): with `defer_sync` (the daemon sets it) the
        # success commit is not fsynced, and the job's spool file — what recovery keys on — is kept
        # until a later durable transaction (the next reservation) or `flush_unsynced` has fsynced
        # the WAL. Entries: (sequence number, spool file), in commit order.
        self.defer_sync = False
        self._cancel_dir: tuple[Any, dict[str, Any] | None, str] | None = None
        self._unsynced: list[tuple[int, Path]] = []
        self._unsynced_seq = 0
        self._unsynced_lock = threading.Lock()
        self._unsynced_at = 0.0

    # -- plumbing -------------------------------------------------------------

    def ledger(self) -> Ledger:
        led = getattr(self._local, "ledger", None)
        if led is not None and getattr(self._local, "ledger_settings", None) is not self.settings:
            # SIGHUP reloaded the configuration: datasets' budgets and defaults may have changed.
            with contextlib.suppress(Exception):
                led.close()
            led = None
        if led is None:
            led = Ledger.from_settings(self.settings, actor=f"daemon:{self.owner}")
            self._local.ledger = led
            self._local.ledger_settings = self.settings
        return led

    def job_context(self, job: Job) -> TrainerContext:
        """The trainer context for one job, with its secret noise seed.

        DP noise and Poisson sampling must not be predictable by the buyer, who
        chooses `job.seed`: they are seeded from HMAC(host noise key, job_id, seed),
        which is reproducible on this host (crash recovery retrains identically)
        and unknown outside it.
        """
        if not self.noise_key:
            return self.ctx
        # The scope (buyer account, or "" for the admin's inbox) of the file being processed:
        # job_ids are unique only within it (Pipeline.process sets it).
        scope = getattr(self._local, "scope", "")
        seed = noise_seed(self.noise_key, job.job_id, job.seed, scope)
        return dataclasses.replace(self.ctx, options={**self.ctx.options, "noise_seed": seed,
                                                      "job_state_dir": str(job_state_dir(self.ctx.state_dir, scope))})

    def _trainer_call(self, trainer: Any, op: str, job: Job, plan: PrivacyPlan | None, progress: Any) -> Any:
        ctx = self.job_context(job)
        if not getattr(trainer, "isolated", False):
            if op == "plan":
                return trainer.plan(job, ctx)
            return trainer.train(job, plan, ctx, progress)
        if self.pool is None:
            raise JobFailed(f"Backend {trainer.name} needs a worker process, and none is configured.")
        request = {"op": op, "trainer": trainer.name, "job": job.to_dict(), "ctx": ctx.to_dict()}
        if plan is not None:
            request["plan"] = plan.to_dict()
        timeout = float(self.settings.trainer.get("timeout_seconds", 900))
        if op == "train" and (self.settings.data.get("executor") or {}).get("kind", "local") != "local":
            from pandacead.executor import remote_executor

            # Only train leaves this host: plan, reserve, sign, publish, commit stay here (docs/scale.md).
            value = remote_executor(self.settings).train(
                request, timeout, on_progress=progress, stopping=getattr(self.pool, "stopping", None))
            return TrainResult.from_dict(value)
        with self.pool.worker() as w:
            if op != "train":
                value = w.call(request, timeout=max(60.0, timeout / 10), on_progress=progress)
            else:
                with self._cancel_watch(job, w) as cancelled:
                    try:
                        value = w.call(request, timeout=timeout, on_progress=progress)
                    except JobFailed:
                        if cancelled.is_set():
                            raise self._cancelled(job) from None
                        raise
        return PrivacyPlan.from_dict(value) if op == "plan" else TrainResult.from_dict(value)

    # -- cancellation (pandacead jobs cancel) ---------------------------------

    def cancel_requested(self, job_id: str, scope: str | None = None) -> bool:
        """Is there a cancel request for `job_id` in `scope` (default: the scope of the file this thread processes)?"""
        if scope is None:
            scope = getattr(self._local, "scope", "")
        # `cancel_path` as a string, its directory computed once per settings (checked at every progress report).
        settings = self.settings
        paths = getattr(settings, "data", {}).get("paths")
        cached = getattr(self, "_cancel_dir", None)
        if cached is None or cached[0] is not settings or cached[1] != paths:
            cached = (settings, dict(paths) if paths is not None else None, str(Path(settings.state) / CANCEL_DIR))
            if paths is not None:  # (settings without `data`: nothing to key a cache on)
                self._cancel_dir = cached
        return os.path.lexists(f"{cached[2]}/@{scope}/{job_id}" if scope else f"{cached[2]}/{job_id}")

    def _refuse_if_cancelled(self, job: Job) -> None:
        if self.cancel_requested(job.job_id):
            with contextlib.suppress(OSError):
                os.unlink(cancel_path(self.settings, job.job_id, getattr(self._local, "scope", "")))
            raise JobRejected(f"Job {job.job_id} was cancelled before it started; nothing was charged.",
                              ["cancelled: before training"])

    def _cancelled(self, job: Job) -> Cancelled:
        with contextlib.suppress(OSError):
            os.unlink(cancel_path(self.settings, job.job_id, getattr(self._local, "scope", "")))
        return Cancelled(
            f"Job {job.job_id} was cancelled while training; it had touched the data, so its reservation is charged.",
            ["cancelled: while training (charged)"],
        )

    @contextlib.contextmanager
    def _cancel_watch(self, job: Job, w: Any) -> Any:
        """While a worker trains `job`, stop it (SIGKILL to its process group) if a cancel request appears."""
        done, cancelled = threading.Event(), threading.Event()
        scope = getattr(self._local, "scope", "")  # the watcher thread has no thread-local scope

        def watch() -> None:
            while not done.wait(0.25):
                if self.cancel_requested(job.job_id, scope):
                    cancelled.set()
                    proc = getattr(w, "proc", None)
                    if proc is not None:
                        with contextlib.suppress(OSError):
                            os.killpg(proc.pid, signal.SIGKILL)
                    return

        t = threading.Thread(target=watch, name=f"cancel-watch-{job.job_id}", daemon=True)
        t.start()
        try:
            yield cancelled
        finally:
            done.set()
            t.join(timeout=5)

    # -- one durable commit per job ---------------------------------------------

    def _sync_mark(self) -> int:
        """Taken before a durable ledger transaction: the spool files committed so far."""
        return self._unsynced_seq

    def _synced(self, mark: int) -> None:
        """A durable transaction that began after `mark` has committed: the WAL up to it is on the disk,
        with every success commit recorded before `mark`; their spool files may go."""
        if not self._unsynced or self._unsynced[0][0] > mark:
            return
        with self._unsynced_lock:
            done = [p for seq, p in self._unsynced if seq <= mark]
            self._unsynced = [(seq, p) for seq, p in self._unsynced if seq > mark]
        for spooled in done:
            try:
                self.cleanup(spooled)
            except OSError as exc:  # it stays spooled: the next start finds it succeeded and removes it
                log.warning("could not remove the settled job file %s: %s", spooled.name, exc)

    def _keep_until_synced(self, spooled: Path) -> None:
        with self._unsynced_lock:
            self._unsynced_seq += 1
            self._unsynced.append((self._unsynced_seq, spooled))
            if len(self._unsynced) == 1:
                self._unsynced_at = time.monotonic()

    def unsynced_since(self, older_than: float) -> float | None:
        """When the oldest success commit not yet durable was made (time.monotonic()), if it is
        more than `older_than` seconds old; else None."""
        if not self._unsynced:
            return None
        at = self._unsynced_at
        return at if time.monotonic() - at >= older_than else None

    def flush_unsynced(self) -> int:
        """Make the success commits not yet durable durable (one fsync of the ledger's WAL) and remove
        their spool files; the daemon calls it when no reservation did for a while (50 ms with nothing in
        flight, 0.5 s with jobs in flight: one may have reserved before the last commit), and at shutdown.
        Returns how many files it settled."""
        if not self._unsynced:
            return 0
        mark = self._sync_mark()
        n = len(self._unsynced)
        try:
            self.ledger().sync()
        except OSError as exc:
            log.error("the ledger %s could not be synced (%s); %d settled job file(s) stay spooled",
                      self.settings.ledger_path, exc, n)
            self._unsynced_at = time.monotonic() + 1.0  # the next try in about a second, not at the next turn
            return 0
        faults.point("synced")
        self._synced(mark)
        return n

    # -- stages ---------------------------------------------------------------

    def read(self, spooled: Path) -> bytes:
        max_bytes = int(self.settings.daemon.get("max_job_bytes", 1_048_576))
        if spooled_account(spooled) is not None:
            # A buyer could hard-link a file it cannot read into its inbox for the service to read.
            with contextlib.suppress(OSError):
                if os.lstat(spooled).st_nlink > 1:
                    raise JobRejected(
                        f"{original_name(spooled)} is a hard link to another file; it was not opened.",
                        ["file: hard link in a buyer inbox"],
                    )
        try:
            return read_job_file(spooled, max_bytes)
        except SpecialFile as exc:
            raise JobRejected(
                f"{original_name(spooled)} is a {exc.kind}, not a regular file; it was not opened.",
                [f"file: {exc.kind} in the inbox"],
            ) from None
        except Oversized as exc:
            raise JobRejected(
                f"{original_name(spooled)} is {exc.size} bytes, over the {max_bytes}-byte limit for a job file.",
                [f"file: {exc.size} bytes > {max_bytes}"],
            ) from None
        except OSError as exc:
            raise JobRejected(
                f"{original_name(spooled)} cannot be read: {exc.strerror or exc}.",
                [f"file: {exc.strerror or exc}"],
            ) from None

    def outbox_problem(self) -> str | None:
        """Why nothing can be published right now (outbox missing, read-only or full), else None.

        Checked before a job reserves budget or is trained again, so that a job
        waits in the spool instead of burning its attempts against a broken outbox.
        """
        outbox = self.settings.outbox
        try:
            st = os.statvfs(outbox)
        except OSError as exc:
            return f"the outbox {outbox} is unusable: {exc.strerror or exc}"
        if not os.path.isdir(outbox):
            return f"the outbox {outbox} is not a directory"
        if st.f_flag & os.ST_RDONLY:
            return f"the outbox {outbox} is on a read-only filesystem"
        if not os.access(outbox, os.W_OK | os.X_OK):
            return f"the outbox {outbox} is not writable by this process"
        need = int(self.settings.daemon.get("outbox_min_free_bytes", 1_048_576))
        free = st.f_bavail * st.f_frsize
        if free < need:
            return f"the outbox {outbox} is full ({free} bytes free, {need} needed)"
        if st.f_files and st.f_favail < 16:
            return f"the outbox {outbox} has no free inodes"
        return None

    def _require_outbox(self, job_id: str) -> None:
        problem = self.outbox_problem()
        if problem:
            raise Deferred(f"Job {job_id} waits: {problem}", errno.ENOSPC if "full" in problem else errno.EROFS, problem)

    def parse(self, data: bytes, default_user: str | None = None, scope: str = "") -> Job:
        """The job; in a buyer's inbox (`scope`) it pays with that account, whatever it names."""
        if not scope:
            return parse_job(data, default_user=default_user)
        job = parse_job(data, default_user=scope)
        if job.user_id != scope:
            raise JobRejected(
                f"Job {job.job_id} names user_id {job.user_id!r} but was dropped in account {scope}'s inbox;"
                f" a job there can only charge {scope}. Nothing was charged.",
                [f"user_id: {job.user_id!r} is not the account {scope!r} of the inbox"],
            )
        return job

    def outbox_dir(self, scope: str = "") -> Path:
        """Where a job's outcome goes: outbox/, or outbox/<account>/ for a buyer's job.

        A buyer's outbox made by `pandacead buyers add` is readable by that buyer only;
        if it is missing, one only the service can read is made (fail closed).
        """
        if not scope:
            return self.settings.outbox
        d = self.settings.outbox / scope
        if not d.is_dir():
            d.mkdir(mode=0o700, exist_ok=True)
        return d

    def select(self, job: Job) -> Any:
        trainers = self.plugins.trainers
        try:
            name = self.plugins.hook.pandacead_select_trainer(job=job, trainers=trainers, config=self.settings)
        except JobError:
            raise
        except Exception as exc:
            raise JobRejected(f"Choosing a backend failed: {exc}.", [f"backend: {exc}"]) from None
        if name not in trainers:
            raise JobRejected(f"Backend {name!r} is not available on this host.", [f"backend: {name!r}"])
        trainer = trainers[name]
        if job.search and not getattr(trainer, "supports_search", False):
            raise JobRejected(
                f"Backend {name!r} cannot run a hyperparameter search; use the opacus backend.",
                [f"search: backend {name!r} does not support search"],
            )
        # Whatever chose it (the job, the config default, MOCK_DP, a selection plugin):
        # a trainer whose outputs are not DP never touches data not declared public.
        may_train_on(trainer, self.ctx.datasets.get(job.dataset), job.job_id, job.dataset)
        return trainer

    def precheck(self, job: Job) -> None:
        """"No free work": refuse what cannot fit before the trainer plans (calibration costs seconds).

        The requested ε against what the paying account can still spend, for jobs
        whose σ is calibrated to that ε (their plan costs at least PRECHECK_SHARE of
        it: calibration tolerances are below 5 %); under RDP composition, or with a
        job's own σ, the ledger's admission alone decides. The message states the
        job's own request only, never the account's numbers. The run-time estimate is the trainer's
        (`plan` refuses before calibrating; see pandacead_opacus.trainer.check_runtime).
        """
        led = self.ledger()
        if getattr(led, "composition", "basic") != "basic" or job.dp.noise_multiplier is not None:
            return
        try:
            remaining = led.budget(job.user_id).epsilon_remaining
        except Exception:
            return  # the reservation's own admission check decides (and fails closed)
        if job.dp.epsilon * PRECHECK_SHARE > remaining * (1 + SLACK) + 1e-12:
            raise JobRejected(
                f"Job {job.job_id} asks for ε={job.dp.epsilon:g}, more than account {job.user_id} can still spend;"
                " nothing was run or charged.",
                ["budget: the requested ε does not fit the paying account's remaining budget"],
            )

    def plan(self, job: Job, trainer: Any) -> PrivacyPlan:
        plan = self._trainer_call(trainer, "plan", job, None, None)
        plan.check()
        if plan.epsilon > job.dp.epsilon * (1 + SLACK):
            raise JobRejected(
                f"The job would spend ε={plan.epsilon:.4g}, more than the ε={job.dp.epsilon:g} it requested.",
                [f"dp.epsilon: planned ε {plan.epsilon:.6g} > requested {job.dp.epsilon:g}"],
            )
        return plan

    def check_budget(self, job: Job, plan: PrivacyPlan) -> None:
        """Every budget hook may veto; an exception in one is a veto (fail closed)."""
        hook = self.plugins.hook.pandacead_check_budget
        for impl in reversed(hook.get_hookimpls()):
            try:
                veto = impl.function(job=job, plan=plan, ledger=self.ledger())
            except Exception as exc:
                raise JobRejected(
                    f"The budget check {impl.plugin_name} failed ({type(exc).__name__}: {exc}); the job is refused.",
                    [f"budget: check {impl.plugin_name} raised {type(exc).__name__}"],
                ) from None
            if veto:
                raise JobRejected(str(veto), [f"budget: {veto}"])

    def train(self, job: Job, trainer: Any, plan: PrivacyPlan, row_id: int) -> TrainResult:
        led = self.ledger()
        # Progress rows are for `jobs show` while a job runs: at most one every
        # 0.5 s, the first 0.5 s into training. Each is a durable SQLite commit
        # (an fsync), so a short job writes none while it trains; the last epoch's
        # row is written by the commit's own transaction, after the artifact is out
        # (docs/benchmarks.md: a mock job made 3 commits before its artifact, now 1;
        # 2 in all, the reservation and the commit).
        last = [time.monotonic()]
        self._local.final_progress = None
        self._local.touched = False
        self._local.touched_job = job.job_id
        private_data = not self._dataset_public(job)
        # Per-epoch lines at INFO at most once per `daemon.progress_log_seconds`, the first one that
        # long into training, and the last epoch when an earlier one was at INFO (DEBUG otherwise):
        # a 1000-epoch job does not flood the journal, and a job shorter than that logs no epoch
        # line at INFO (its "trained" line says how it ended; every epoch is in its history file
        # and its final progress row).
        history: list[dict[str, Any]] = []
        last_info = [time.monotonic()]
        logged_epoch = [False]
        throttle = float(self.settings.daemon.get("progress_log_seconds", 10.0))
        history_file = _History(self.settings, row_id, job, trainer.name, plan)  # `jobs logs`

        def progress(p: dict[str, Any]) -> None:
            if not getattr(trainer, "isolated", False) and self.cancel_requested(job.job_id):
                raise self._cancelled(job)  # an in-process trainer stops at its next progress report
            extra: dict[str, Any] = {"job_id": job.job_id, "user_id": job.user_id}
            history_file.write({"type": "progress", "at": time.time(), **p})
            if (p.get("stage") == "data_loaded" or p.get("epoch") is not None) and not self._local.touched:
                # From here on the job is charged whatever happens (docs/privacy.md). Durable for
                # private data: a job row with progress is one whose trainer read the data.
                self._local.touched = True
                log.info("job %s: the trainer reads the data", job.job_id, extra=extra)
                if private_data:
                    with contextlib.suppress(Exception):
                        led.job_progress(row_id, {"stage": "data_loaded", "at": utcnow()})
                if p.get("epoch") is None:
                    return
            if p.get("epoch") is None:
                log.info("job %s: %s", job.job_id, p.get("stage") or p.get("message") or p, extra=extra)
                return
            history.append({k: p.get(k) for k in ("epoch", "loss", "epsilon", "epsilon_exact", "steps") if k in p})
            now_m = time.monotonic()
            final = p.get("epoch") == p.get("epochs")
            level = logging.DEBUG
            if now_m - last_info[0] >= throttle or (final and logged_epoch[0]):
                level, last_info[0], logged_epoch[0] = logging.INFO, now_m, True
            fields = {"epoch": p.get("epoch"), "epochs": p.get("epochs"), "loss": p.get("loss"),
                      "epsilon_so_far": p.get("epsilon"), "epsilon_exact": p.get("epsilon_exact")}
            log.log(
                level, "job %s progress: epoch %s/%s loss %s ε so far %s", job.job_id, p.get("epoch"),
                p.get("epochs"), _fmt(p.get("loss")), _fmt(p.get("epsilon")),
                extra={**extra, **fields, "_json_only": tuple(fields)},
            )
            if final:
                self._local.final_progress = (row_id, {**p, "history": history})
                return
            now = time.monotonic()
            if now - last[0] >= 0.5:
                last[0] = now
                with contextlib.suppress(Exception):
                    led.job_progress(row_id, p)

        try:
            result = self._trainer_call(trainer, "train", job, plan, progress)
        except JobError as exc:
            if getattr(exc, "worker_lost", False) and private_data:
                # The worker died or timed out inside `train`: whether it had read the
                # data is unknown, so it counts as read (fail closed).
                self._local.touched = True
            raise
        finally:
            history_file.close()
        if not (isinstance(result.epsilon, (int, float)) and math.isfinite(result.epsilon) and result.epsilon > 0):
            raise JobFailed(f"Backend {trainer.name} reported an unusable ε ({result.epsilon!r}).")
        if result.epsilon > plan.epsilon * (1 + SLACK) or result.delta > plan.delta * (1 + SLACK):
            raise JobFailed(
                f"Backend {trainer.name} spent ε={result.epsilon:.6g}, δ={result.delta:.3g}, more than planned"
                f" (ε={plan.epsilon:.6g}, δ={plan.delta:.3g}); the result is discarded.",
            )
        return result

    def _take_final_progress(self, row_id: int) -> dict[str, Any] | None:
        """The last epoch's progress of the job this thread trained (for `Ledger.commit`), once."""
        final = getattr(self._local, "final_progress", None)
        if final is None or final[0] != row_id:
            return None
        self._local.final_progress = None
        try:  # a report JSON cannot hold gets no row (as `job_progress` did), never a failed commit
            json.dumps(final[1])
        except (TypeError, ValueError):
            return None
        return dict(final[1])

    def _progress_from_history(self, row_id: int) -> dict[str, Any] | None:
        """The last progress row a finished job's commit would have written, rebuilt from its history
        file (state/history/<row>.jsonl) for a job recovered from its artifact; None if that file lacks
        the final epoch (it is a best-effort view, not a record)."""
        try:
            lines = history_path(self.settings, row_id).read_text(encoding="utf-8").splitlines()
            records = [r for r in map(json.loads, lines) if isinstance(r, dict)]
        except (OSError, ValueError):
            return None
        starts = [i for i, r in enumerate(records) if r.get("type") == "job"]  # one per attempt: the last one's
        records = records[starts[-1] + 1:] if starts else records
        epochs = [r for r in records if r.get("type") == "progress" and r.get("epoch") is not None]
        if not epochs or epochs[-1].get("epoch") != epochs[-1].get("epochs"):
            return None
        keys = ("epoch", "loss", "epsilon", "epsilon_exact", "steps")
        last = {k: v for k, v in epochs[-1].items() if k not in ("type", "at")}
        return {**last, "history": [{k: r.get(k) for k in keys if k in r} for r in epochs]}

    def record_final_progress(self) -> None:
        """Write the last epoch's progress row of the job this thread trained, if it reported one."""
        final = getattr(self._local, "final_progress", None)
        self._local.final_progress = None
        if final is not None:
            with contextlib.suppress(Exception):
                self.ledger().job_progress(*final)

    def _dataset_public(self, job: Job) -> bool:
        info = self.ctx.datasets.get(job.dataset)
        return info is not None and info.public

    def _touched(self, job: Job | None, row_id: int | None) -> bool:
        """Whether this job's trainer read private data (this attempt or, per its ledger row, an earlier one)."""
        if job is None or row_id is None or self._dataset_public(job):
            return False
        if getattr(self._local, "touched", False) and getattr(self._local, "touched_job", None) == job.job_id:
            return True
        rows = self.ledger().query("SELECT progress FROM jobs WHERE id = ?", [row_id])
        return bool(rows and rows[0].get("progress"))

    def released(self, job: Job, result: TrainResult) -> tuple[TrainResult, str | None]:
        """The view of `result` that may leave the host, and how its `n` is known (docs/privacy.md).

        For data declared public everything is public (exact metrics, the true n).
        For private data: no held-out metric (exact ones are not DP), `n` the
        earner's declared public count or None, provenance reduced to library
        versions and the dataset's opaque version id, no timings. Enforced here,
        for every trainer, whatever it returned.
        """
        info = self.ctx.datasets.get(job.dataset)
        if info is None:
            raise JobFailed(f"Dataset {job.dataset!r} of job {job.job_id} is no longer offered.")
        prov = {k: v for k, v in result.provenance.items() if k not in ("dataset_digest", "digest")}
        prov["dataset_version"] = info.commitment
        if info.public:
            return dataclasses.replace(result, provenance=prov), "public"
        # `diverged` (a flag decided on the DP model) and the DP scores a trainer computed with
        # a mechanism its plan charged (a search's noisy validation score): nothing else.
        # A `*_dp` score only for a search (the only plan that prices one), and only as the
        # search releases it: a finite number clamped into [0, 1] or >= 0 (loss).
        metrics = {k: result.metrics[k] for k in DP_METRICS
                   if isinstance(result.metrics.get(k), bool)
                   or (job.search and k.endswith("_dp") and _released_score(k, result.metrics.get(k)))}
        prov = {k: v for k, v in prov.items() if k in RELEASED_PROVENANCE or k.endswith("_version")}
        params = {k: v for k, v in result.training_params.items() if not _timing_key(k)}
        n = info.public_n_train
        return (
            dataclasses.replace(result, accuracy=None, metrics=metrics, n=n, provenance=prov, training_params=params),
            "declared" if n is not None else None,
        )

    def _check_no_digest(self, job: Job, *blobs: bytes) -> None:
        """Fail closed if the plain dataset digest would leave the host in any released byte."""
        info = self.ctx.datasets.get(job.dataset)
        if info is None or info.public:
            return
        hexd = info.digest.split(":", 1)[-1].lower()
        if len(hexd) < 32:
            return
        needles = [hexd.encode(), hexd.upper().encode()]
        with contextlib.suppress(ValueError):
            needles.append(bytes.fromhex(hexd))
        for blob in blobs:
            if any(n in blob for n in needles):
                raise JobFailed(
                    f"Job {job.job_id}'s output would have carried the plain digest of dataset"
                    f" {job.dataset!r}; nothing was published.",
                )

    def sign(self, stmt: dict[str, Any]) -> dict[str, Any]:
        body = statement_bytes(stmt)  # serialised once, for the signature and the envelope
        payload = envelope_payload(stmt, body)
        try:
            sigs = [s for s in self.plugins.hook.pandacead_sign_artifact(payload=payload) if s]
        except Exception as exc:
            raise JobFailed(f"Signing the artifact failed: {type(exc).__name__}: {exc}.") from None
        if not sigs:
            raise JobFailed("No signer is configured; an unsigned artifact is never published.")
        return envelope(stmt, sigs, body)

    def publish_success(
        self, job: Job, trainer: Any, plan: PrivacyPlan, result: TrainResult, started: str, scope: str = ""
    ) -> Path:
        outbox = self.outbox_dir(scope)
        result, n_source = self.released(job, result)
        art = build_artifact(job, trainer.name, result, plan, n_source=n_source)
        data = artifact_bytes(art)
        name = f"{job.job_id}.json"
        pred = provenance(job, trainer.name, result, plan, started, art["created_at"], self.versions)
        env = self.sign(statement(name, data, pred))
        env_bytes = (fastjson.pretty(env) + "\n").encode("utf-8")  # json.dumps(indent=2), byte for byte
        self._check_no_digest(job, data, env_bytes, result.model)
        env_path = outbox / f"{job.job_id}{ENVELOPE_SUFFIX}"
        # The envelope goes first: whoever sees <job_id>.json finds its signature beside it.
        try:
            faults.fail("publish_envelope")
            publish(env_path, env_bytes, sync_dir=False)
            faults.point("envelope_published")
            faults.fail("publish_artifact")
            publish(outbox / name, data, sync_dir=False)
        except OSError as exc:
            # Nothing was released: withdraw the envelope (we hold this job_id's
            # reservation, so it is ours) and try again later.
            with contextlib.suppress(OSError):
                os.unlink(env_path)
            reason = f"cannot publish into {outbox}: {exc.strerror or exc}"
            raise Deferred(
                f"Job {job.job_id} is trained but {reason}; it keeps its reservation and is tried again later",
                exc.errno or errno.EIO, reason,
            ) from None
        try:
            faults.fail("sync_outbox")
            fsync_dir(outbox)
        except OSError as exc:
            reason = f"the outbox {outbox} could not be synced: {exc.strerror or exc}"
            raise Deferred(
                f"Job {job.job_id} is published but {reason}; its spend is committed at the next attempt",
                exc.errno or errno.EIO, reason,
            ) from None
        faults.point("artifact_published")
        return outbox / name

    def publish_error(
        self, job_id: str, status: str, error: str, details: list[str], report_name: str | None = None,
        scope: str = "",
    ) -> Path:
        """Write the error report outbox/<report_name>.error.json (report_name: see
        Ledger.settle_failure). The job's end is already in the ledger: if the outbox
        refuses the report, the file stays spooled and the report is written on a retry."""
        path = self.outbox_dir(scope) / f"{report_name or job_id}{ERROR_SUFFIX}"
        report = error_report(job_id, status, error, details)
        try:
            faults.fail("publish_error")
            publish(path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        except OSError as exc:
            raise Deferred(
                f"The error report {path.name} cannot be written into {self.settings.outbox}:"
                f" {exc.strerror or exc}; it is written on a later attempt",
                exc.errno or errno.EIO,
            ) from None
        return path

    def drop_checkpoints(self, job_id: str) -> None:
        """Remove <job state dir>/checkpoints/<job_id>/, the scratch a trainer resumes a handed-back job from."""
        if job_id and job_id[0].isalnum() and "/" not in job_id:
            root = job_state_dir(self.settings.state, getattr(self._local, "scope", ""))
            shutil.rmtree(root / CHECKPOINTS_DIR / job_id, ignore_errors=True)

    def cleanup(self, spooled: Path, set_aside: bool = False) -> None:
        """Remove the claimed file (special files are moved to state/rejected/ instead)."""
        if set_aside:
            dest = self.settings.rejected_dir
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
            with contextlib.suppress(FileNotFoundError):
                os.rename(spooled, dest / spooled.name)
            return
        try:
            if spooled.is_dir() and not spooled.is_symlink():
                shutil.rmtree(spooled)
            else:
                os.unlink(spooled)
        except FileNotFoundError:
            pass

    # -- the whole run --------------------------------------------------------

    def process(self, spooled: Path, default_user: str | None = None) -> Outcome:
        """Drive one claimed file to exactly one outcome, resuming where a crash left it."""
        led = self.ledger()
        fname = spooled.name
        prior = led.job_by_file(fname)
        scope = spooled_account(spooled) or ""
        self._local.scope = scope
        if prior is not None and prior["status"] in ("rejected", "failed"):
            # Recorded but maybe not published before a crash: publish (again) and clean up.
            self.publish_error(prior["job_id"], prior["status"], prior["error"] or "", prior.get("details") or [],
                               prior.get("report") or prior["job_id"], scope=scope)
            self.cleanup(spooled, set_aside=_is_special(spooled))
            return Outcome(prior["job_id"], prior["status"], prior["user_id"], prior["backend"],
                           error=prior["error"], details=prior.get("details"))
        if prior is not None and prior["status"] == "succeeded":
            led.sync()  # a success commit may not be durable yet (a crash, not a power cut, came after it)
            self.cleanup(spooled)
            return Outcome(prior["job_id"], "succeeded", prior["user_id"], prior["backend"], prior["epsilon"])

        job: Job | None = None
        trainer: Any = None
        row_id: int | None = prior["id"] if prior else None
        outcome_name = safe_stem(original_name(spooled))
        try:
            data = self.read(spooled)
            with contextlib.suppress(JobError):
                outcome_name = job_id_hint(parse_json(data)) or outcome_name
            job = self.parse(data, default_user, scope)
            faults.point("parsed")
            extra = {"job_id": job.job_id, "user_id": job.user_id}
            log.info("job %s validated (user %s, dataset %s)", job.job_id, job.user_id, job.dataset, extra=extra)
            if prior is None:
                self._refuse_if_cancelled(job)
            trainer = self.select(job)
            if prior is not None:
                return self._resume(spooled, job, trainer, prior)
            self.precheck(job)
            plan = self.plan(job, trainer)
            faults.point("planned")
            self.check_budget(job, plan)
            if job.quote is not None:
                from pandacead.quote import check_admission

                check_admission(self.settings, job, trainer.name, plan)
            self._refuse_if_cancelled(job)  # cancelled while it was planned: still nothing touched
            self._require_outbox(job.job_id)
            mark = self._sync_mark()
            row_id = led.reserve(job.job_id, job.user_id, plan, trainer.name, owner=fname, file=fname,
                                 dataset=job.dataset, scope=scope, create_account=not scope,
                                 public=getattr(self.ctx.datasets.get(job.dataset), "public", None))
            self._synced(mark)  # the reservation's fsync made earlier success commits durable
            faults.point("reserved")
            log.info(
                "job %s reserved ε=%.6g δ=%.3g on %s (σ=%s, q=%s, steps=%s)", job.job_id, plan.epsilon,
                plan.delta, trainer.name, _fmt(plan.noise_multiplier), _fmt(plan.sample_rate), plan.steps,
                extra=extra,
            )
            return self._train_and_publish(spooled, job, trainer, plan, row_id)
        except JobError as exc:
            return self._fail(spooled, job, outcome_name, exc, trainer, row_id)
        except HandedBack:
            log.info("job %s handed back: the daemon is stopping; it resumes at the next start", outcome_name)
            if row_id is not None:
                # A graceful hand-back is no failed attempt: `_resume` does not count it (only crashes do).
                with contextlib.suppress(Exception):
                    led.job_event(job.job_id if job else outcome_name, "running", row_id=row_id, error=HANDED_BACK)
            raise
        except Deferred:
            raise
        except sqlite3.OperationalError as exc:
            # Locked or unavailable ledger: the failed transaction changed nothing.
            raise Deferred(
                f"Job {outcome_name} waits: the ledger {self.settings.ledger_path} is unavailable ({exc})",
                errno.EBUSY,
            ) from None
        except Exception as exc:  # an unexpected bug still ends the job cleanly, fail closed
            log.exception("job %s: internal error", outcome_name)
            # The exception's text may quote anything (data included): the admin's log has it.
            err = JobFailed(f"Internal error while processing job {outcome_name} ({type(exc).__name__}).")
            return self._fail(spooled, job, outcome_name, err, trainer, row_id)

    def _train_and_publish(
        self, spooled: Path, job: Job, trainer: Any, plan: PrivacyPlan, row_id: int
    ) -> Outcome:
        extra = {"job_id": job.job_id, "user_id": job.user_id}
        started = utcnow()
        result = self.train(job, trainer, plan, row_id)
        faults.point("trained")
        log.info("job %s trained: ε=%.6g accuracy=%s", job.job_id, result.epsilon, _fmt(result.accuracy), extra=extra)
        try:
            path = self.publish_success(job, trainer, plan, result, started, _scope(spooled))
            log.info("job %s published %s", job.job_id, path.name, extra=extra)
            self._commit(job, result.epsilon, result.delta, row_id, _scope(spooled),
                         progress=self._take_final_progress(row_id), durable=not self.defer_sync)
        except Deferred as exc:
            self._note_waiting(job, row_id, exc.reason)
            raise
        faults.point("committed")
        log.info("job %s committed ε=%.6g δ=%.3g for user %s", job.job_id, result.epsilon, result.delta,
                 job.user_id, extra=extra)
        self.record_final_progress()
        self.drop_checkpoints(job.job_id)
        if self.defer_sync:
            # Until the WAL is fsynced a power cut may lose the commit: the spool file stays, so that
            # the next start finds the job reserved with its artifact out and commits it (`_resume`).
            self._keep_until_synced(spooled)
        else:
            self.cleanup(spooled)
        with contextlib.suppress(OSError):  # a cancel request that came too late
            os.unlink(cancel_path(self.settings, job.job_id, _scope(spooled)))
        out = Outcome(job.job_id, "succeeded", job.user_id, trainer.name, result.epsilon, artifact=path)
        self._notify(job, out)
        faults.point("settled")
        return out

    def _note_waiting(self, job: Job, row_id: int, why: str) -> None:
        """Say in the job's status row why it waits (`pandacead jobs show`); best effort."""
        with contextlib.suppress(Exception):
            self.ledger().job_event(job.job_id, "running", row_id=row_id, error=f"waiting: {why}")

    def _commit(self, job: Job, epsilon: float, delta: float, row_id: int, scope: str = "",
                progress: dict[str, Any] | None = None, durable: bool = True) -> None:
        """Charge a published job (and write its last progress row in the same transaction). Its
        artifact is out: a failure here must never turn into a release, so it defers (the next
        attempt finds the artifact and commits it)."""
        try:
            faults.fail("commit")
            self.ledger().commit(job.job_id, epsilon, delta, row_id=row_id, scope=scope, progress=progress,
                                 durable=durable)
        except Exception as exc:
            reason = f"its spend could not be recorded ({type(exc).__name__}: {exc})"
            raise Deferred(
                f"Job {job.job_id} is published but {reason}; it is committed at the next attempt",
                errno.EBUSY, reason,
            ) from None

    def _resume(self, spooled: Path, job: Job, trainer: Any, prior: dict[str, Any]) -> Outcome:
        """A job a crashed daemon had reserved: commit what it published, or train it again."""
        led = self.ledger()
        extra = {"job_id": job.job_id, "user_id": job.user_id}
        scope = _scope(spooled)
        spend = led.spend(job.job_id, scope)
        row_id = prior["id"]
        if spend is None or spend["owner"] != spooled.name:
            raise JobFailed(f"Job {job.job_id} lost its reservation during a crash; it was not run.")
        if spend["state"] == "committed":
            led.job_event(job.job_id, "succeeded", row_id=row_id, epsilon=spend["epsilon"])  # durable
            self.drop_checkpoints(job.job_id)
            self.cleanup(spooled)
            return Outcome(job.job_id, "succeeded", job.user_id, spend["backend"], spend["epsilon"])
        if spend["state"] == "released":
            raise JobFailed(f"Job {job.job_id} was interrupted and its reservation released.")
        art_path = self.outbox_dir(scope) / f"{job.job_id}.json"
        if art_path.exists() and not verify_artifact(art_path, self.public_keys):
            art = json.loads(art_path.read_bytes())
            if art.get("user_id") == job.user_id and art.get("job_id") == job.job_id:
                log.info("job %s recovered: its artifact was published before a crash", job.job_id, extra=extra)
                # Durable (this path is rare), with the last progress row from the job's history file.
                self._commit(job, float(art["epsilon"]), float(art["dp"]["delta"]), row_id, scope,
                             progress=self._progress_from_history(row_id))
                self.drop_checkpoints(job.job_id)
                self.cleanup(spooled)
                out = Outcome(job.job_id, "succeeded", job.user_id, spend["backend"], art["epsilon"], artifact=art_path)
                self._notify(job, out)
                return out
        try:
            self._require_outbox(job.job_id)  # waiting for the outbox costs no attempt
        except Deferred as exc:
            self._note_waiting(job, row_id, exc.reason)
            raise
        if (prior.get("error") or "") == HANDED_BACK:
            # The last run was handed back, not interrupted: no attempt spent. Clear the mark so that a
            # crash of this run counts.
            led.job_event(job.job_id, "running", row_id=row_id, error=None)
            attempts = int(prior.get("attempts") or 0)
        else:
            attempts = led.bump_attempts(row_id)
        if attempts >= int(self.settings.daemon.get("max_attempts", 3)):
            last = prior.get("error") or ""
            if last.startswith("waiting: "):
                raise JobFailed(
                    f"Job {job.job_id} could not be finished in {attempts} attempts; the last problem: {last[9:]}.",
                    [f"attempts: {attempts}", last],
                )
            raise JobFailed(f"Job {job.job_id} was interrupted {attempts} times and is given up.")
        plan = self.plan(job, trainer)
        if plan.epsilon > spend["epsilon_reserved"] * (1 + SLACK) or plan.delta > spend["delta_reserved"] * (1 + SLACK):
            raise JobFailed(f"Job {job.job_id}: its plan changed since its reservation; it was not run again.")
        log.info("job %s resumed (attempt %d)", job.job_id, attempts + 1, extra=extra)
        return self._train_and_publish(spooled, job, trainer, plan, row_id)

    def _fail(
        self, spooled: Path, job: Job | None, outcome_name: str, exc: JobError, trainer: Any, row_id: int | None
    ) -> Outcome:
        job_id = job.job_id if job else outcome_name
        user_id = job.user_id if job else None
        backend = getattr(trainer, "name", None)
        # Messages may quote hostile input or come from plugins: keep them encodable
        # (a lone surrogate would make SQLite and the UTF-8 report writer raise).
        exc.message = _encodable(exc.message)
        exc.details = [_encodable(str(d)) for d in exc.details]
        extra = {"job_id": job_id, "user_id": user_id}
        led = self.ledger()
        scope = _scope(spooled)
        if job is not None:
            spend = led.spend(job.job_id, scope)
            if spend is not None and spend["state"] == "committed" and spend["owner"] == spooled.name:
                # This file's job is published and charged; what failed came after (clean-up).
                # Never report a charged job as failed: its file is settled on a retry.
                raise Deferred(f"Job {job_id} succeeded but could not be cleaned up: {exc.message}")
        # A job cancelled while it trained is charged too (tools: `jobs cancel`), its own
        # sentence kept: whether it had read the data yet is not known, so fail closed.
        charge = isinstance(exc, Cancelled) or self._touched(job, row_id)
        if charge and not isinstance(exc, Cancelled):
            # The trainer read private data: the job is charged, and what the buyer reads is
            # one sentence that depends on nothing but the job (a divergence is reported as
            # such: it is decided on the DP model alone). The admin's log keeps the detail.
            log.warning("job %s failed after reading the data (charged): %s %s", job_id, exc.message,
                        " | ".join(exc.details)[:4000], extra=extra)
            spend = led.spend(job_id, scope)
            eps = f"ε={spend['epsilon_reserved']:.6g}" if spend else "its reservation"
            if isinstance(exc, Diverged):
                exc.message = (f"Job {job_id} diverged (its DP model became non-finite) and was stopped;"
                               f" it read the data, so {eps} is charged.")
            else:
                exc.message = f"Job {job_id} failed after its training read the data; {eps} is charged."
            exc.status = "failed"
            exc.details = ["charged: the trainer had read the data"]
        try:
            _, report = led.settle_failure(
                job_id, user_id, exc.status, exc.message, exc.details, owner=spooled.name, file=spooled.name,
                backend=backend, row_id=row_id, scope=scope, dataset=job.dataset if job else None,
                charge=charge,
            )
        except sqlite3.OperationalError as err:
            raise Deferred(
                f"Job {job_id} {exc.status} ({exc.message}), but the ledger {self.settings.ledger_path} is"
                f" unavailable to record it ({err}); it is recorded on a later attempt",
                errno.EBUSY,
            ) from None
        faults.point("error_recorded")
        if job is not None and row_id is not None:  # this file's own job (not a replay of another's id)
            self.drop_checkpoints(job.job_id)
        self.publish_error(job_id, exc.status, exc.message, exc.details, report, scope=scope)
        faults.point("error_published")
        log.warning("job %s %s: %s", job_id, exc.status, exc.message, extra=extra)
        self.cleanup(spooled, set_aside=_is_special(spooled))
        out = Outcome(job_id, exc.status, user_id, backend, error=exc.message, details=exc.details)
        self._notify(job, out)
        return out

    def _notify(self, job: Job | None, outcome: Outcome) -> None:
        try:
            self.plugins.hook.pandacead_job_finished(job=job, outcome=outcome.to_dict())
        except Exception as exc:
            log.error("a pandacead_job_finished hook failed: %s", exc)


def _scope(spooled: Path) -> str:
    """The job_id namespace and outbox of a spooled file: its buyer account, or '' (the admin's)."""
    return spooled_account(spooled) or ""


def _released_score(key: str, value: Any) -> bool:
    """A search's noisy score in the form the search releases it (anything else is not released)."""
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
        return False
    return 0.0 <= value <= 1.0 if key.endswith("accuracy_dp") else value >= 0.0


def _timing_key(key: str) -> bool:
    """Training parameters that are measurements of the run (data-dependent), not settings."""
    return "seconds" in key or "timing" in key or key.endswith("_s")


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_special(path: Path) -> bool:
    try:
        import stat as _stat

        return not _stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
