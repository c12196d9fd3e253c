"""The training device: which one (`[trainer] device`), how a worker's memory is limited, what fits.

* ``device = "auto" | "cpu" | "cuda" | "cuda:N"``. "auto" is CUDA when torch
  sees a GPU, else the CPU. Naming a GPU that is not there fails the job; it
  never falls back to the CPU silently.
* **Memory limit.** On the CPU a worker runs under ``RLIMIT_AS`` =
  ``memory_limit_mb`` (the kernel refuses the allocation: a clean
  MemoryError). CUDA reserves terabytes of virtual address space when it
  initialises, so under ``RLIMIT_AS`` it cannot start: a worker that may use
  CUDA gets a resident-memory watch instead (the worker's process group,
  rank processes included, is killed when its RSS passes the limit), and the
  device's own memory is capped with
  ``torch.cuda.set_per_process_memory_fraction(cuda_memory_fraction)``.
* **Admission.** `estimate_training_bytes` prices a job's memory from its
  model and physical batch before anything runs (no data touched: the
  architecture and the public schedule are all it needs); a job that does
  not fit is refused (`JobRejected`), never left to crash.

No torch import at module level: the daemon and the worker's start-up use
this module without it.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pandacead.errors import ConfigError, JobFailed

log = logging.getLogger("pandacead.devices")

DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
#: Memory a worker needs before the job's own tensors: the Python runtime,
#: torch and opacus on the CPU; the CUDA context and allocator slack on a GPU.
RUNTIME_OVERHEAD_MB = {"cpu": 512, "cuda": 512}
#: Seconds between two looks at the worker's resident memory (CUDA workers).
RSS_WATCH_INTERVAL = 0.25


def check_config(trainer: dict[str, Any], cfg: Path) -> None:
    device = trainer.get("device", "auto")
    if not isinstance(device, str) or not DEVICE_RE.match(device):
        raise ConfigError(f"trainer.device in {cfg} must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", not {device!r}.")
    ws = trainer.get("world_size", 1)
    if isinstance(ws, bool) or not isinstance(ws, int) or ws < 1:
        raise ConfigError(f"trainer.world_size in {cfg} must be an integer >= 1, not {ws!r}.")
    frac = trainer.get("cuda_memory_fraction", 0.9)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
        raise ConfigError(f"trainer.cuda_memory_fraction in {cfg} must be in (0, 1], not {frac!r}.")
    for key in ("max_physical_batch_size", "device_memory_mb"):
        v = trainer.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"trainer.{key} in {cfg} must be an integer >= 0, not {v!r}.")


def cuda_present() -> bool:
    """Whether this host has NVIDIA device nodes (cheap: no torch, no CUDA initialisation)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def may_use_cuda(device: str, cuda_seen: bool | None = None) -> bool:
    """Whether a worker configured for `device` may initialise CUDA."""
    if device == "cpu":
        return False
    if device.startswith("cuda"):
        return True
    return cuda_present() if cuda_seen is None else cuda_seen


def resolve_device(device: str) -> str:
    """The torch device to train on ("cpu", "cuda:N") for a configured `device`; fails if absent."""
    if device == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if device == "auto":
        return "cuda:0" if available else "cpu"
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    count = torch.cuda.device_count() if available else 0
    if index >= count:
        raise JobFailed(
            f"[trainer] device = {device!r} but this host has {count} CUDA device(s); "
            "the job is not moved to the CPU silently.",
            [f"trainer.device: {device!r}, torch.cuda.device_count() = {count}"],
        )
    return f"cuda:{index}"


# --------------------------------------------------------------------------- worker memory limit


def memory_limit(trainer: dict[str, Any], cuda_seen: bool | None = None) -> dict[str, Any]:
    """How a worker with these [trainer] settings is limited: {"kind": "none"|"rlimit_as"|"rss_watch", "bytes"}."""
    mb = int(trainer.get("memory_limit_mb", 0) or 0)
    if mb <= 0:
        return {"kind": "none", "bytes": 0}
    kind = "rss_watch" if may_use_cuda(str(trainer.get("device", "auto")), cuda_seen) else "rlimit_as"
    return {"kind": kind, "bytes": mb * 1024 * 1024}


def apply_memory_limit(trainer: dict[str, Any]) -> dict[str, Any]:
    """Apply `memory_limit` to this (worker) process; returns what was applied."""
    limit = memory_limit(trainer)
    if limit["kind"] == "rlimit_as":
        resource.setrlimit(resource.RLIMIT_AS, (limit["bytes"], limit["bytes"]))
    elif limit["kind"] == "rss_watch":
        threading.Thread(target=_watch_rss, args=(limit["bytes"],), name="rss-watch", daemon=True).start()
    return limit


def group_rss_bytes(pgid: int | None = None) -> int:
    """Resident memory of every process in the process group `pgid` (the worker and its rank processes)."""
    pgid = os.getpgrp() if pgid is None else pgid
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(stat).read_text()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) == pgid:  # fields: state ppid pgrp ... ; rss is field 24 overall
                total += int(fields[21]) * page
    return total


def _watch_rss(limit: int) -> None:
    pgid = os.getpgrp()
    while True:
        time.sleep(RSS_WATCH_INTERVAL)
        rss = group_rss_bytes(pgid)
        if rss > limit:
            with contextlib.suppress(Exception):
                sys.stderr.write(
                    f"pandacead worker {os.getpid()}: resident memory {rss >> 20} MB over the limit "
                    f"{limit >> 20} MB; killed\n")
                sys.stderr.flush()
            os.killpg(pgid, signal.SIGKILL)


def cap_cuda_memory(device: str, fraction: float) -> None:
    """torch.cuda.set_per_process_memory_fraction for a CUDA `device` (a no-op on the CPU)."""
    if not device.startswith("cuda"):
        return
    import torch

    torch.cuda.set_per_process_memory_fraction(float(fraction), torch.device(device))


# --------------------------------------------------------------------------- admission


def physical_batch(expected_batch_size: float, world_size: int = 1, max_physical_batch_size: int = 0) -> int:
    """The largest batch one process holds at once, with overwhelming probability.

    A Poisson batch of mean μ exceeds μ + 6√μ + 6 with probability below 1e-8;
    BatchMemoryManager caps it at `max_physical_batch_size`.
    """
    mu = float(expected_batch_size) / max(1, int(world_size))
    bound = int(math.ceil(mu + 6 * math.sqrt(mu) + 6))
    return min(bound, int(max_physical_batch_size)) if max_physical_batch_size else bound


def estimate_training_bytes(
    n_params: int, n_activations: int, batch: int, grad_sample_mode: str = "hooks"
) -> int:
    """Bytes (float32) one process needs for a DP-SGD step on `batch` rows.

    Parameters, gradient, summed clipped gradient, noise and optimizer state
    (5·P); activations and their gradients (2·b·A, twice for safety); and
    per-sample gradients (b·P) unless ghost clipping computes their norms
    without materialising them.
    """
    per_sample = 0 if grad_sample_mode == "ghost" else batch * n_params
    floats = 5 * n_params + per_sample + 4 * batch * n_activations
    return 4 * int(floats)


def available_bytes(trainer: dict[str, Any], device: str) -> int | None:
    """What a job may use on `device` under these settings, or None when there is no limit to check."""
    explicit = int(trainer.get("device_memory_mb", 0) or 0)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if explicit:
        total = explicit * 1024 * 1024
    elif kind == "cuda":
        import torch

        props = torch.cuda.get_device_properties(torch.device(device))
        total = int(props.total_memory * float(trainer.get("cuda_memory_fraction", 0.9)))
    else:
        mb = int(trainer.get("memory_limit_mb", 0) or 0)
        if mb <= 0:
            return None
        total = mb * 1024 * 1024
    return max(0, total - RUNTIME_OVERHEAD_MB[kind] * 1024 * 1024)
