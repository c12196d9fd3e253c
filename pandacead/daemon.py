"""The long-running daemon: watch inbox/, claim files, run them through the pipeline."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pandacead.accounts import buyer_inboxes
from pandacead.app import App
from pandacead.artifacts import stale_temp_files
from pandacead.config import Settings, load_settings
from pandacead.errors import ConfigError, HandedBack
from pandacead.pipeline import Deferred, Outcome, Pipeline
from pandacead.sdnotify import Notifier
from pandacead.spool import ClaimError, Spool, being_written, is_candidate, scan
from pandacead.worker import WorkerPool

log = logging.getLogger("pandacead.daemon")

# A SIGTERM/SIGINT that arrives before the Daemon exists (while the CLI loads
# settings and modules) is remembered here, so that it stops the daemon
# cleanly instead of killing the process with the default action.
_early_stop = threading.Event()


def _early_term(signum: int, frame: Any) -> None:
    _early_stop.set()


def install_early_signals() -> None:
    """Catch SIGTERM/SIGINT from the first moment `run` starts (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _early_term)
        signal.signal(signal.SIGINT, _early_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload before the daemon runs has nothing to reload


class _Events:
    """What the inbox watch saw: names written and closed, or renamed in. Only a nudge; the scan decides."""

    def __init__(self, wake: threading.Event, root: Path | None = None):
        self.wake = wake
        self.root = root
        self.closed: set[str] = set()
        self.lock = threading.Lock()

    def note(self, name: str, closed: bool) -> None:
        if not is_candidate(name.rpartition("/")[2]):
            return
        if closed:
            with self.lock:
                self.closed.add(name)
        self.wake.set()

    def dispatch(self, event: Any) -> None:
        """The watchdog handler (the fallback watch). Keys: `name` in inbox/, `account/name` in a buyer's."""
        path = getattr(event, "dest_path", "") or event.src_path
        p = Path(path if isinstance(path, str) else path.decode())
        name = p.name
        if self.root is not None and p.parent != self.root:
            if p.parent.parent != self.root or not is_candidate(name):
                return  # deeper than a buyer inbox: nothing the scan takes
            name = f"{p.parent.name}/{name}"
        self.note(name, event.event_type in ("closed", "moved"))

    def take_closed(self) -> set[str]:
        with self.lock:
            out, self.closed = self.closed, set()
        return out


def _shorten_move_pairing() -> None:
    """Make watchdog's inotify backend hand over unpaired renames after 2 ms, not 0.5 s.

    watchdog holds each IN_MOVED_FROM up to `delay` seconds to pair it with an
    IN_MOVED_TO, in a FIFO queue. Every claim is a rename out of inbox/ that
    never pairs, so with the default the next dropped file's event reached the
    daemon 0.5 s late (a 25 ms mock job took 500 ms from drop to artifact,
    docs/benchmarks.md). Renames within one directory arrive in one inotify
    read and are grouped microseconds apart, so 2 ms still pairs them; an event that misses its pair only makes
    the file wait for the settle time. Nothing else depends on the pairing:
    events only wake the loop, the scan decides.
    """
    try:
        from watchdog.observers import inotify_move_event_grouper as grouper
    except ImportError:  # other platforms / watchdog versions: the default stands
        return
    cls = getattr(grouper, "InotifyMoveEventGrouper", None)
    if cls is not None and getattr(cls, "delay", 0) > 0.002:
        cls.delay = 0.002


def _inbox_events() -> list[Any] | None:
    """The watchdog events the daemon acts on: a file closed after writing, created, or renamed
    (within the inbox or into it). With this filter the inotify watch asks the kernel for
    IN_CLOSE_WRITE, IN_CREATE and IN_MOVE only, not every IN_OPEN, IN_MODIFY, IN_ACCESS and
    IN_CLOSE_NOWRITE (each scan of inbox/ opened and closed the directory, each write of a job
    file modified it, each claim moved one out): every kernel event woke watchdog's threads,
    whose GIL hand-offs slowed the job thread (docs/benchmarks.md, (a))."""
    try:
        from watchdog.events import (
            DirCreatedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileMovedEvent,
        )
    except ImportError:  # pragma: no cover - older watchdog: every event, as before
        return None
    return [FileClosedEvent, FileCreatedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent]


def _schedule(observer: Any, handler: Any, path: Path) -> None:
    events = _inbox_events()
    if events is not None:
        try:
            observer.schedule(handler, str(path), recursive=False, event_filter=events)
            return
        except TypeError:  # watchdog < 4 has no event_filter
            pass
    observer.schedule(handler, str(path), recursive=False)


class _InboxWatch:
    """The inbox watch: watchdog's inotify wrapper (`InotifyFD`), read by one thread of ours.

    watchdog's `Observer` runs three threads per watch on Linux (the inotify reader, the emitter
    that pairs renames, the dispatcher): every kernel event crossed three thread hand-offs, each
    needing the GIL the job thread holds, before it woke the loop (0.8 ms from a drop to the
    loop's wake-up, and about 0.7 ms of CPU per job, docs/benchmarks.md (a), round five). Here one
    thread blocks in watchdog's `read_events` and turns each event into a nudge (`_Events.note`).
    The kernel is asked for files closed after writing, created, or renamed into a watched
    directory (IN_CLOSE_WRITE, IN_CREATE, IN_MOVED_TO): a claim (a rename out) or a removal
    wakes nobody. Events are only nudges; the periodic scan decides, so a lost event (a queue
    overflow) costs at most `rescan_interval`.
    """

    def __init__(self, events: _Events, wake: threading.Event):
        from watchdog.observers.inotify_c import CallbackId, InotifyFD, Mask
        from watchdog.observers.inotify_c import InotifyConstants as C

        self.events = events
        self.wake = wake
        self.mask = Mask(C.IN_CLOSE_WRITE | C.IN_CREATE | C.IN_MOVED_TO | C.IN_DONT_FOLLOW | C.IN_ONLYDIR)
        self.callback_id = CallbackId(0)  # one callback (this object) per watched directory
        self.fd = InotifyFD()  # an instance of our own, not watchdog's shared (started) one
        # InotifyFD starts as if a reader were inside `read_events` (`_is_reading`): a `close` before
        # our thread's first read would leave the descriptors to a reader that then never closes
        # them. Not reading yet: `close` closes them itself (the reader sets it while it reads).
        lock = getattr(self.fd, "_lock", None)
        if lock is not None and hasattr(self.fd, "_is_reading"):
            with lock:
                self.fd._is_reading = False
        self.prefix: dict[int, str] = {}  # watch descriptor -> key prefix: '' (inbox/) or 'account/'
        self.lost: set[str] = set()  # prefixes whose watch the kernel removed (a directory removed)
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="inbox-watch", daemon=True)

    def watch(self, path: Path, prefix: str = "") -> None:
        wd = self.fd.add_callback(os.fsencode(path), self.mask, self, self.callback_id)
        self.prefix[int(wd)] = prefix

    def start(self) -> None:
        self.thread.start()

    # watchdog's WatchCallback protocol, called from our thread by `handle_event`
    def on_event(self, event: Any) -> None:
        prefix = self.prefix.get(int(event.wd))
        if prefix is None or not event.name:
            return
        name = os.fsdecode(event.name)
        if event.is_directory:
            if prefix == "":  # a new buyer inbox: the scan finds it and watches it
                self.wake.set()
            return
        self.events.note(prefix + name, event.is_close_write or event.is_moved_to)

    def on_watch_deleted(self, wd: Any) -> None:
        prefix = self.prefix.pop(int(wd), None)
        if prefix:  # a buyer inbox removed: if it is made again, the next scan watches the new one
            self.lost.add(prefix)
            self.wake.set()

    def take_lost(self) -> set[str]:
        lost, self.lost = self.lost, set()
        return lost

    def on_queue_overflow(self) -> None:
        self.wake.set()  # events were lost: the scan finds every file anyway

    def _run(self) -> None:
        while not self.stopped:
            try:
                events = self.fd.read_events()
            except OSError as exc:
                if not self.stopped:
                    log.warning("the inbox watch stopped (%s); relying on periodic scans", exc)
                return
            if not events:
                if self.stopped:
                    return
                time.sleep(0.01)  # nothing read and not stopped (a descriptor closed under us): no spin
            for event in events:
                try:
                    self.fd.handle_event(event)
                except Exception:  # a nudge lost: the scan still finds the file
                    log.debug("inbox event %r not handled", event, exc_info=True)

    def stop(self) -> None:
        self.stopped = True
        with contextlib.suppress(Exception):
            self.fd.close()  # wakes the reading thread, which then closes the descriptors
        if self.thread.ident is not None:
            self.thread.join(timeout=5)


#: Seconds without a job in flight after which the daemon fsyncs the ledger's WAL itself, making
#: the last success commits durable and removing their spool files. The next job's reservation
#: does it for free when it comes sooner (a stream of jobs pays one fsync per job, not two).
SYNC_DELAY = 0.05
#: The same while jobs are in flight. With `workers` ≥ 2 a job that reserved before another one
#: committed does not make that commit durable: without this the commit stayed unsynced, its spool
#: file kept, and the loop woke every 10 ms (`_wait_time`), for the whole training of that job.
BUSY_SYNC_DELAY = 0.5


class Daemon:
    def __init__(self, settings: Settings, *, once: bool = False, notifier: Notifier | None = None):
        self.settings = settings
        self.once = once
        self.notifier = notifier or Notifier()
        self.wake = threading.Event()
        self.stop_requested = False
        self.reload_requested = False
        self.in_flight: dict[Future[Outcome], Path] = {}
        self.outcomes: list[Outcome] = []
        self.closed_ready: set[str] = set()
        self.first_seen: dict[str, tuple[int, float]] = {}
        # Spooled files whose processing was deferred or crashed: when to try again, and how often it failed.
        self.retry_at: dict[Path, float] = {}
        self.tries: dict[Path, int] = {}
        self.given_up: set[Path] = set()  # --once only: left in the spool for the next start
        self.claim_errors: dict[str, str] = {}
        self.outbox_blocked: str | None = None
        self._backlog: list[Path] = []
        self.pool: WorkerPool | None = None
        self.spool: Spool | None = None
        self.executor: ThreadPoolExecutor | None = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_term)
            signal.signal(signal.SIGINT, self._on_term)
            signal.signal(signal.SIGHUP, self._on_hup)
        if _early_stop.is_set():  # a stop that arrived while the CLI was starting
            _early_stop.clear()
            self.stop_requested = True
        # Entries of the last inbox scan not yet looked at: a backlog is claimed from one
        # scan instead of rescanning the whole inbox per claim (which made draining quadratic).
        self._scanned: list[Any] = []
        self._next_scan = 0.0
        self._last_status: tuple[str, float] = ("", 0.0)
        self._last_ping = -math.inf

    # -- signals --------------------------------------------------------------

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        self.wake.set()

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.reload_requested = True
        self.wake.set()

    # -- main -----------------------------------------------------------------

    def run(self) -> int:
        import faulthandler

        faulthandler.enable()  # systemd's watchdog sends SIGABRT: the stacks go to the journal
        s = self.settings
        if not s.ledger_path.exists() or not s.inbox.is_dir() or not s.outbox.is_dir():
            raise ConfigError(f"{s.home} is not a pandacead home (no ledger or inbox); run `pandacead init --home {s.home}`.")
        observer = None
        # Signals were installed in __init__; a stop requested during any start-up step is
        # honoured after that step, and shutdown copes with whatever was started.
        try:
            self.notifier.status("starting: loading plugins, key and datasets")
            app = App(s)
            self.app = app
            spool = Spool(s.spool)
            spool.acquire()
            self.spool = spool
            workers = int(s.daemon.get("workers", 1))
            # `--once` does not warm workers: on an empty inbox there is nothing to warm them for,
            # and a job starts its worker itself (the imports cost the same either way).
            pool = WorkerPool(
                s.home, size=workers, max_jobs=int(s.trainer.get("worker_max_jobs", 50)),
                warm=None if self.once else self._warm_request(app),
                warm_timeout=float(s.trainer.get("warm_timeout", 300)),
            )
            self.pool = pool
            if pool.warm_request is not None and not self.stop_requested:
                pool.prewarm()  # in the background: the first job must not pay torch's imports
            assert app.ctx is not None
            pipeline = Pipeline(s, app.plugins, app.ctx, spool.owner, pool=pool, public_keys=app.public_keys,
                                noise_key=app.noise_key)
            self.pipeline = pipeline
            pipeline.defer_sync = True  # one durable commit per job: the flush below settles the last ones
            pipeline.ledger()  # migrations done before READY
            self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
            observer = self._start_observer()
            log.info(
                "pandacead daemon %s started: home %s, inbox %s, trainers %s",
                spool.owner, s.home, s.inbox, ", ".join(sorted(app.plugins.trainers)),
            )
            self._write_status([])
            outboxes = [s.outbox] + [s.outbox / acct for acct, _ in buyer_inboxes(s.inbox)]
            for tmp in [t for o in outboxes if o.is_dir() for t in stale_temp_files(o)]:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    log.info("removed %s, left by a process killed while publishing", tmp.name)
            adopted = spool.adopt_orphans()
            if adopted:
                log.warning("adopted %d job file(s) left by a daemon that stopped", len(adopted))
            self._backlog = spool.pending()
            if self._backlog:
                log.info("settling %d job file(s) left in the spool", len(self._backlog))
            if not self.stop_requested:
                self._tick(first=True)
                self.notifier.ready(status=self._status())
            while not self.stop_requested:
                self._feed_watchdog()
                if self.reload_requested:
                    self._reload()
                self._tick()
                if self.pipeline.unsynced_since(self._sync_delay()):
                    # No reservation came for a while to fsync the WAL (nothing ran, or the running
                    # job reserved before the last commit), so do it now.
                    self.pipeline.flush_unsynced()
                if self.once and self._idle():
                    break
                self.wake.wait(timeout=self._wait_time())
                self.wake.clear()
            if self.given_up and not self.stop_requested:
                log.error(
                    "%d job file(s) could not be settled and stay in the spool for the next start: %s",
                    len(self.given_up), ", ".join(sorted(p.name for p in self.given_up)),
                )
                return 1
            return 0
        finally:
            self._shutdown(observer)

    def _warm_request(self, app: App) -> dict[str, Any] | None:
        """What the worker pool warms up at start and after replacing a worker, or None.

        `[trainer] prewarm`: "auto" (default) or true warms the default backend when it
        runs in workers (opacus, syft); a list names the backends; false turns it off.
        """
        want = self.settings.trainer.get("prewarm", "auto")
        if want is False or os.environ.get("MOCK_DP") == "1" or app.ctx is None:
            return None
        trainers = app.plugins.trainers
        if isinstance(want, list):
            names = [str(n) for n in want]
        else:
            from pandacead.default_selection import default_backend

            names = [default_backend(trainers, self.settings)]
        names = [n for n in names if getattr(trainers.get(n), "isolated", False)]
        if not names:
            return None
        return {"trainers": names, "ctx": app.ctx.to_dict()}

    def _status(self) -> str:
        return f"{len(self.in_flight)} job(s) running, {len(self.outcomes)} done"

    def _idle(self) -> bool:
        return (
            not self.in_flight and not self._backlog and not self.retry_at and not self._scanned
            and not [k for k, _, _, _ in self._inbox_entries() if k not in self.claim_errors]
        )

    def _inbox_entries(self) -> list[tuple[str, str | None, Path, Any]]:
        """(key, account, directory, entry) for every candidate in inbox/ and in the buyers' inboxes.

        The admin's inbox comes first and its keys are the bare names, as before
        buyer inboxes existed; a buyer's file is keyed `account/name`.
        """
        inbox = self.settings.inbox
        out: list[tuple[str, str | None, Path, Any]] = [(e.name, None, inbox, e) for e in scan(inbox)]
        buyers = buyer_inboxes(inbox)
        # Watched before they are listed: a file that comes after the listing then has its event.
        self._watch_buyers([d for _, d in buyers])
        for account, d in buyers:
            out.extend((f"{account}/{e.name}", account, d, e) for e in scan(d))
        return out

    def _wait_time(self) -> float:
        t = float(self.settings.daemon.get("rescan_interval", 2.0))
        if self.first_seen:
            t = min(t, float(self.settings.daemon.get("settle_seconds", 0.5)) / 2 + 0.01)
        if self.retry_at:
            t = min(t, min(self.retry_at.values()) - time.monotonic())
        pending = self.pipeline.unsynced_since(0.0) if hasattr(self, "pipeline") else False
        if pending:
            t = min(t, max(0.0, pending + self._sync_delay() - time.monotonic()))
        wd = self.notifier.watchdog_interval()
        if wd:
            t = min(t, wd / 2)  # WATCHDOG=1 comes from this loop, so it must turn often enough
        return max(0.01, t)

    def _sync_delay(self) -> float:
        """How old the oldest commit not yet durable may get before the loop fsyncs the WAL itself."""
        return BUSY_SYNC_DELAY if self.in_flight else SYNC_DELAY

    def _start_observer(self) -> Any:
        handler = _Events(self.wake, self.settings.inbox)
        self.events = handler
        try:
            watch = _InboxWatch(handler, self.wake)
            try:
                # The admin's inbox may be a link to where it lives (another disk): the watch is
                # on that directory (IN_DONT_FOLLOW | IN_ONLYDIR refuses a link). Buyer inboxes
                # under it are never followed (`buyer_inboxes` skips links).
                watch.watch(Path(os.path.realpath(self.settings.inbox)))
                watch.start()
            except BaseException:
                watch.stop()  # closes the inotify instance and its pipe (not leaked)
                raise
        except (ImportError, AttributeError, TypeError):  # not Linux, or a watchdog without InotifyFD
            pass
        except OSError as exc:
            log.warning("cannot watch %s (%s); relying on periodic scans", self.settings.inbox, exc)
            return None
        else:
            self._observer = watch
            return watch
        observer: Any
        try:
            from watchdog.observers import Observer
        except Exception as exc:  # pragma: no cover
            log.warning("watchdog is unavailable (%s); relying on periodic scans", exc)
            return None
        _shorten_move_pairing()
        observer = Observer()
        watchdog_handler: Any = handler  # duck-typed: watchdog only calls dispatch()
        # Not recursive (a hostile inbox may hold symlinks to directories): each buyer inbox
        # gets its own watch when a scan first finds it (`_watch_buyers`).
        _schedule(observer, watchdog_handler, self.settings.inbox)
        observer.daemon = True
        try:
            observer.start()
        except OSError as exc:
            log.warning("cannot watch %s (%s); relying on periodic scans", self.settings.inbox, exc)
            return None
        self._observer = observer
        return observer

    def _watch_buyers(self, dirs: list[Path]) -> None:
        """Watch buyer inboxes the observer does not watch yet (best effort: the scan finds files anyway)."""
        observer = getattr(self, "_observer", None)
        if observer is None:
            return
        watched: set[Path] = self.__dict__.setdefault("_watched", set())
        if isinstance(observer, _InboxWatch):
            for prefix in observer.take_lost():  # removed since: a directory made again is a new one
                watched.discard(self.settings.inbox / prefix.rstrip("/"))
        for d in dirs:
            if d in watched:
                continue
            watched.add(d)
            try:
                if isinstance(observer, _InboxWatch):
                    observer.watch(d, f"{d.name}/")
                else:
                    _schedule(observer, self.events, d)
            except Exception as exc:
                log.warning("cannot watch %s (%s); relying on periodic scans", d, exc)

    def _capacity(self) -> int:
        return int(self.settings.daemon.get("workers", 1)) - len(self.in_flight)

    def _submit(self, spooled: Path) -> None:
        assert self.executor is not None  # only called once start-up made it
        fut = self.executor.submit(self.pipeline.process, spooled)
        self.in_flight[fut] = spooled
        fut.add_done_callback(lambda f: self.wake.set())

    def _reap(self) -> None:
        for fut in [f for f in self.in_flight if f.done()]:
            spooled = self.in_flight.pop(fut)
            try:
                self.outcomes.append(fut.result())
                self.tries.pop(spooled, None)
            except (HandedBack, CancelledError):
                pass  # stopping: the file stays spooled and resumes at the next start
            except Deferred as exc:
                self._defer(spooled, exc.message)
            except Exception as exc:
                log.exception("processing %s crashed", spooled.name)
                self._defer(spooled, f"processing {spooled.name} crashed ({type(exc).__name__}: {exc})")
        if self.outcomes:
            self.outcomes = self.outcomes[-1000:]

    def _defer(self, spooled: Path, why: str) -> None:
        """Keep a file we could not settle in the spool and try it again later (exponential backoff)."""
        d = self.settings.daemon
        tries = self.tries.get(spooled, 0) + 1
        self.tries[spooled] = tries
        if self.once and tries >= int(d.get("once_retries", 3)):
            log.error("%s; giving up on %s for this run", why, spooled.name)
            self.given_up.add(spooled)
            return
        base = float(d.get("retry_seconds", 5.0))
        delay = min(float(d.get("retry_max_seconds", 300.0)), base * 2 ** (tries - 1))
        self.retry_at[spooled] = time.monotonic() + delay
        log.error("%s; the job file stays in the spool, next try in %.3g s", why, delay)

    def _outbox_gate(self) -> bool:
        """False while the outbox cannot take outcomes: new files then stay in the inbox."""
        problem = self.pipeline.outbox_problem()
        if problem != self.outbox_blocked:
            if problem:
                log.error("%s: not taking new jobs until it is fixed", problem[0].upper() + problem[1:])
            else:
                log.warning("the outbox is usable again; taking jobs")
                now = time.monotonic()
                self.retry_at = {p: min(t, now) for p, t in self.retry_at.items()}
            self.outbox_blocked = problem
        return problem is None

    def _tick(self, first: bool = False) -> None:
        self._reap()
        while self._backlog and self._capacity() > 0:
            self._submit(self._backlog.pop(0))
        if self.retry_at and not self.stop_requested:
            now_m = time.monotonic()
            for path, due in sorted(self.retry_at.items(), key=lambda kv: kv[1]):
                if self._capacity() <= 0 or due > now_m:
                    break
                del self.retry_at[path]
                if os.path.lexists(path):
                    self._submit(path)
                else:
                    self.tries.pop(path, None)
        if self._capacity() <= 0 or self.stop_requested:
            return
        if not self.once and not self._outbox_gate():
            self.notifier.status(f"waiting: {self.outbox_blocked}")
            self._last_status = ("", 0.0)  # the next job status is sent, whatever it says
            return
        s = self.settings
        closed = self.events.take_closed() if hasattr(self, "events") else set()
        self.closed_ready |= closed
        settle = float(s.daemon.get("settle_seconds", 0.5))
        now = time.time()
        entries, self._scanned = self._scanned, []
        if not entries or time.monotonic() >= self._next_scan:
            entries = self._inbox_entries()
            self._next_scan = time.monotonic() + float(s.daemon.get("rescan_interval", 2.0))
            present = {k for k, _, _, _ in entries}
            self.closed_ready &= present
            self.first_seen = {k: v for k, v in self.first_seen.items() if k in present}
            self.claim_errors = {k: v for k, v in self.claim_errors.items() if k in present}
        for i, (key, account, where, e) in enumerate(entries):
            if self._capacity() <= 0:
                self._scanned = entries[i:]  # the rest of this scan, for the next ticks
                break
            if e.kind == "file":
                seen = self.first_seen.get(key)
                stable = seen is not None and seen[0] == e.size and now - seen[1] >= settle
                if seen is None or seen[0] != e.size:
                    self.first_seen[key] = (e.size, now)
                ready = key in self.closed_ready or now - e.mtime >= settle or stable
                if not ready or being_written(where / e.name):
                    continue
            try:
                assert self.spool is not None
                spooled = self.spool.claim(where, e.name, account)
            except ClaimError as exc:
                if self.claim_errors.get(key) != str(exc):  # (ClaimError quotes the name with repr)
                    log.error("%s; it stays in the inbox", exc)
                self.claim_errors[key] = str(exc)
                continue
            self.claim_errors.pop(key, None)
            self.closed_ready.discard(key)
            self.first_seen.pop(key, None)
            if spooled is None:
                continue  # another daemon took it
            from pandacead import faults

            faults.point("claimed")
            log.info("claimed %s", key if key.isprintable() else ascii(key)[1:-1])
            self._submit(spooled)
        self._send_status()

    def _feed_watchdog(self) -> None:
        """WATCHDOG=1 when systemd watches (WATCHDOG_USEC), at most four times per interval (the loop
        turns at least twice per interval, `_wait_time`); it was one datagram per turn of the loop."""
        wd = self.notifier.watchdog_interval()
        if not wd:
            return
        now = time.monotonic()
        if now - self._last_ping >= wd / 4:
            self._last_ping = now
            self.notifier.watchdog()

    def _send_status(self) -> None:
        """STATUS= for `systemctl status`: when it changed, at most 4 a second while jobs run (a socket
        and a datagram each; a burst of short jobs sent several per job), at once when all are done."""
        text = self._status()
        now = time.monotonic()
        if text == self._last_status[0] or (self.in_flight and now - self._last_status[1] < 0.25):
            return
        self._last_status = (text, now)
        self.notifier.status(text)

    #: Settings a running daemon cannot change (its directories, its worker threads, its key).
    RESTART_ONLY = ("paths.inbox", "paths.outbox", "paths.state", "daemon.workers", "signing.key")

    def _reload(self) -> None:
        self.reload_requested = False
        self.notifier.reloading(status="reloading configuration")
        try:
            settings = load_settings(self.settings.home)
            from pandacead.logs import setup_logging

            setup_logging(settings.data["logging"]["level"], settings.data["logging"]["format"])
            kept = [k for k in self.RESTART_ONLY if _get(settings.data, k) != _get(self.settings.data, k)]
            for key in kept:  # applying these needs a restart: say so, and keep running on the old value
                section, _, name = key.partition(".")
                settings.data[section][name] = _get(self.settings.data, key)
            plugins_changed = self.app.reload(settings)
            self.settings = settings
            self.pipeline.settings = settings
            assert self.app.ctx is not None
            self.pipeline.ctx = self.app.ctx
            if plugins_changed:
                # New jobs see only what the new allow/deny admits; workers (which load plugins
                # themselves) are replaced after their current job.
                self.pipeline.plugins = self.app.plugins
                if self.pool is not None:
                    self.pool.recycle()
                log.warning("plugins reloaded: trainers now %s", ", ".join(sorted(self.app.plugins.trainers)))
            self._write_status(kept)
            if kept:
                log.error(
                    "configuration reloaded from %s, except %s: changing %s needs a restart (`systemctl restart"
                    " pandacead`); until then the previous value stays in force",
                    settings.home, ", ".join(kept), "it" if len(kept) == 1 else "them",
                )
            else:
                log.info("configuration reloaded from %s", settings.home)
        except Exception as exc:
            log.error("reload failed, keeping the previous configuration: %s", exc)
        self.notifier.ready(status=self._status())

    def _write_status(self, restart_needed: list[str]) -> None:
        """state/daemon.json: what `pandacead plugins` and `jobs list` report about the running daemon."""
        import json

        from pandacead.artifacts import publish

        with contextlib.suppress(Exception):
            body = {"owner": self.spool.owner if self.spool else None, "reloaded_at": time.time(),
                    "restart_needed": restart_needed, "trainers": sorted(self.app.plugins.trainers)}
            publish(self.settings.state / STATUS_FILE, (json.dumps(body) + "\n").encode())

    def _shutdown(self, observer: Any) -> None:
        """Stop whatever start-up got to: finish or hand back running jobs, stop workers, free the spool."""
        self.notifier.stopping(status="stopping: finishing in-flight jobs")
        if observer is not None:
            with contextlib.suppress(Exception):
                observer.stop()
        deadline = time.monotonic() + float(self.settings.daemon.get("drain_timeout", 60.0))
        while self.in_flight and time.monotonic() < deadline:
            self._feed_watchdog()
            self.wake.wait(timeout=0.05)
            self.wake.clear()
            self._reap()
        if self.pool is not None and (self.in_flight or self.stop_requested):
            if self.in_flight:
                log.warning("%d job(s) still running at shutdown; handing them back to the spool", len(self.in_flight))
            self.pool.hand_back()  # also cancels warm-ups in progress
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        self._reap()
        if self.pool is not None:
            self.pool.close()
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            with contextlib.suppress(Exception):
                pipeline.flush_unsynced()
        if self.spool is not None:
            self.spool.release()
            log.info("pandacead daemon %s stopped", self.spool.owner)


STATUS_FILE = "daemon.json"


def _get(data: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return (data.get(section) or {}).get(key)


def restart_needed(settings: Settings) -> list[str]:
    """Settings the running daemon's last reload could not apply (from state/daemon.json), else []."""
    import json

    try:
        body = json.loads((settings.state / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [str(k) for k in body.get("restart_needed") or []]


def run(settings: Settings, once: bool = False) -> int:
    return Daemon(settings, once=once).run()
