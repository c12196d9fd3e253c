"""Epoch checkpoints of a DP-SGD run, so that a handed-back job resumes where it stopped.

A checkpoint is everything the rest of the run depends on, taken at the end of
a completed epoch: the model's weights, the optimizer's state, the
accountant's history and every random state the run draws from — the Poisson
sampler's generator, the noise generator, torch's global generator, numpy's
and Python's. Restored, the remaining epochs draw exactly what an
uninterrupted run would have drawn, so the resumed job releases the same model
bytes and the same ε: a restart neither costs privacy nor leaks a second,
differently-noised model.

Format: one safetensors file (never a pickle), its JSON part in the
safetensors metadata, written to a temporary file and renamed into place, so
a crash mid-write leaves the previous checkpoint. It lives at
``<state>/checkpoints/<job_id>/epoch.safetensors`` (mode 0600: the random
states are as secret as the noise they generate) and is bound to the job by a
fingerprint of the job, its plan and its secret noise seed: a checkpoint of
anything else is ignored and removed. The trainer removes it when the run
completes; the pipeline removes the directory when the job ends any other way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "pandacead-opacus-checkpoint/1"
FILE_NAME = "epoch.safetensors"
DIR_NAME = "checkpoints"


def job_dir(state_dir: str | os.PathLike[str], job_id: str) -> Path:
    """Where the checkpoints of `job_id` live (job ids are safe file names, DESIGN.md)."""
    return Path(state_dir) / DIR_NAME / job_id


def remove(state_dir: str | os.PathLike[str], job_id: str) -> None:
    """Remove every checkpoint of `job_id`; nothing to do if there is none."""
    shutil.rmtree(job_dir(state_dir, job_id), ignore_errors=True)


def fingerprint(job: dict[str, Any], plan: dict[str, Any], noise_seed: int) -> str:
    """Binds a checkpoint to one job, one plan and one secret seed (plus the library versions)."""
    import opacus
    import torch

    # Timings in the plan's details (calibration_seconds) differ between two plannings of the same job.
    details = {k: v for k, v in (plan.get("details") or {}).items() if not k.endswith("_seconds")}
    plan = {**plan, "details": details}
    blob = json.dumps(
        {"format": FORMAT, "job": job, "plan": plan, "noise_seed": int(noise_seed),
         "torch": str(torch.__version__), "opacus": str(opacus.__version__)},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class Checkpoint:
    """The checkpoint of one job's run: `restore` at the start, `save` after each epoch, `discard` at the end."""

    def __init__(self, state_dir: str | os.PathLike[str], job: dict[str, Any], plan: dict[str, Any], noise_seed: int):
        self.dir = job_dir(state_dir, str(job["job_id"]))
        self.path = self.dir / FILE_NAME
        self.fingerprint = fingerprint(job, plan, noise_seed)

    # ------------------------------------------------------------------ save

    def save(
        self, *, epoch: int, steps: int, model: Any, optimizer: Any, accountant: Any,
        generators: dict[str, Any], losses: list[float | None],
    ) -> None:
        import torch
        from safetensors.torch import save_file

        tensors: dict[str, Any] = {}
        for name, t in model.state_dict().items():
            tensors[f"model.{name}"] = t.detach().clone().contiguous()
        opt = optimizer.state_dict()
        opt_json: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
        for idx, st in opt["state"].items():
            plain = {}
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{idx}.{key}"] = value.detach().clone().contiguous()
                else:
                    plain[key] = value
            opt_json["state"][str(idx)] = plain
        for name, gen in generators.items():
            tensors[f"rng.{name}"] = gen.get_state().clone()
        tensors["rng.torch_global"] = torch.get_rng_state().clone()
        np_state = np.random.get_state()
        tensors["rng.numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy())
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": int(epoch),
            "steps": int(steps),
            "history": [list(h) for h in accountant.history],
            "optimizer": opt_json,
            "generators": sorted(generators),
            "numpy": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python_random": _py_state(random.getstate()),
            "losses": losses,
        }
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.dir / f".{FILE_NAME}.{os.getpid()}.tmp"
        save_file(tensors, str(tmp), metadata={"pandacead.checkpoint": json.dumps(meta, allow_nan=False)})
        os.chmod(tmp, 0o600)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ restore

    def load(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(metadata, tensors) of this job's checkpoint, or None (none, unreadable or another job's: removed)."""
        from safetensors import safe_open

        if not self.path.is_file():
            return None
        try:
            tensors: dict[str, Any] = {}
            with safe_open(str(self.path), framework="pt") as fh:  # type: ignore[no-untyped-call]
                meta = json.loads((fh.metadata() or {})["pandacead.checkpoint"])
                for key in fh.keys():
                    tensors[key] = fh.get_tensor(key)
        except Exception:
            self.discard()
            return None
        if meta.get("format") != FORMAT or meta.get("fingerprint") != self.fingerprint:
            self.discard()
            return None
        return meta, tensors

    def restore(self, *, model: Any, optimizer: Any, accountant: Any, generators: dict[str, Any]) -> dict[str, Any] | None:
        """Put the run back in the state it had after its last saved epoch; the metadata, or None."""
        import torch

        loaded = self.load()
        if loaded is None:
            return None
        meta, tensors = loaded
        if sorted(generators) != meta["generators"]:
            self.discard()
            return None
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(state, strict=True)
        opt_state: dict[str, Any] = {"param_groups": meta["optimizer"]["param_groups"], "state": {}}
        for idx, plain in meta["optimizer"]["state"].items():
            st = dict(plain)
            prefix = f"optim.{idx}."
            for key, value in tensors.items():
                if key.startswith(prefix):
                    st[key[len(prefix):]] = value
            opt_state["state"][int(idx)] = st
        optimizer.load_state_dict(opt_state)
        accountant.history = [tuple(h) for h in meta["history"]]
        for name, gen in generators.items():
            gen.set_state(tensors[f"rng.{name}"])
        torch.set_rng_state(tensors["rng.torch_global"])
        kind, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(_py_state_back(meta["python_random"]))
        return meta

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _py_state(state: Any) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_back(data: list[Any]) -> Any:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)
