"""Artifacts and error reports: building, hashing (RFC 8785), atomic publishing, verification."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pandacead import fastjson
from pandacead.jobs import ID_PATTERN, Job
from pandacead.schemas import load_schema
from pandacead.signing import statement, verify_envelope

#: The neighbouring relation every ε on this host certifies (docs/privacy.md): datasets
#: differing by one added or removed row. Under it the exact row count is private, so
#: plans use a public count and artifacts carry that count (or null), never the true one.
NEIGHBOURING = "add_remove"

ERROR_SUFFIX = ".error.json"
ENVELOPE_SUFFIX = ".dsse.json"


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON (`rfc8785.dumps`, byte for byte; pandacead.fastjson)."""
    return fastjson.canonical(obj)


def artifact_hash(artifact: dict[str, Any]) -> str:
    """SHA-256 (hex) of the RFC 8785 canonical JSON of the artifact without `hash`."""
    return hashlib.sha256(canonical({k: v for k, v in artifact.items() if k != "hash"})).hexdigest()


def build_artifact(
    job: Job, backend: str, result: Any, plan: Any, created_at: str | None = None,
    n_source: str | None = None,
) -> dict[str, Any]:
    """The artifact of a trained job. `result` must already be the released view
    (`Pipeline.released`): DP or public fields only, see docs/privacy.md."""
    params = {
        "epochs": job.epochs,
        "batch_size": job.batch_size,
        "learning_rate": job.learning_rate,
        "model": {"type": job.model.type, "hidden": list(job.model.hidden)},
        **result.training_params,
    }
    art: dict[str, Any] = {
        "job_id": job.job_id,
        "user_id": job.user_id,
        "backend": backend,
        "model": base64.b64encode(result.model).decode("ascii"),
        "model_format": "safetensors",
        "epsilon": result.epsilon,
        "accuracy": result.accuracy,
        "metrics": result.metrics,
        "n": result.n,
        "n_source": n_source if result.n is not None else None,
        "dp": {
            "enabled": True,
            "neighbouring": NEIGHBOURING,
            "epsilon": job.dp.epsilon,
            "delta": result.delta,
            "clip": job.dp.clip,
            "noise_multiplier": plan.noise_multiplier,
        },
        "seed": job.seed,
        "created_at": created_at or utcnow(),
        "dataset": job.dataset,
        "task": job.task,
        "training_params": params,
    }
    art["hash"] = artifact_hash(art)
    return art


def artifact_bytes(artifact: dict[str, Any]) -> bytes:
    return (fastjson.pretty(artifact) + "\n").encode("utf-8")  # json.dumps(indent=2), byte for byte


def provenance(job: Job, backend: str, result: Any, plan: Any, started: str, finished: str, versions: dict[str, str]) -> dict[str, Any]:
    return {
        "job": job.to_dict(),
        "backend": backend,
        "versions": {**versions, **result.provenance.get("versions", {})},
        "dataset": {"name": job.dataset, **{k: v for k, v in result.provenance.items() if k != "versions"}},
        "privacy": {
            "neighbouring": NEIGHBOURING,
            "epsilon_spent": result.epsilon,
            "delta": result.delta,
            "epsilon_planned": plan.epsilon,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "steps": plan.steps,
            "accountant": plan.accountant,
        },
        "started_at": started,
        "finished_at": finished,
    }


def error_report(job_id: str, status: str, error: str, details: list[str]) -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "error": error, "details": list(details), "created_at": utcnow()}


def safe_stem(name: str) -> str:
    """An outcome name for a file whose job_id is unreadable: the file's stem, made safe."""
    stem = name[:-5] if name.endswith(".json") else name
    if ID_PATTERN.fullmatch(stem):
        return stem
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")[:80] or "job"
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned}-{digest}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp$")


def publish(path: Path, data: bytes, *, sync_dir: bool = True, mode: int = 0o644) -> None:
    """Write `path` atomically: dot-temp file, fsync, rename over, fsync the directory.

    The temp name carries the pid and a random token: two threads (or daemons)
    publishing the same name never write into one temp file, and a temp file
    left by a killed process can be recognised (`stale_temp_files`).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def stale_temp_files(directory: Path) -> list[Path]:
    """Temp files of `publish` whose writing process is gone (killed mid-publish).

    Call it before this process publishes anything: a temp file carrying our
    own pid then comes from an earlier process that had the same pid.
    """
    out = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        m = TMP_PATTERN.match(name)
        if m is None:
            continue
        pid = int(m["pid"])
        if pid == os.getpid():
            out.append(directory / name)
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            out.append(directory / name)
        except PermissionError:
            pass  # alive, someone else's
    return out


def artifact_statement(artifact_name: str, data: bytes, predicate: dict[str, Any]) -> dict[str, Any]:
    return statement(artifact_name, data, predicate)


def verify_artifact(
    path: Path, keys: dict[str, Any], envelope_path: Path | None = None,
    check_schema: bool = True,
) -> list[str]:
    """Every reason the artifact at `path` cannot be trusted; empty when it verifies."""
    problems: list[str] = []
    try:
        data = path.read_bytes()
        art = json.loads(data)
    except OSError as exc:
        return [f"cannot read {path}: {exc.strerror}"]
    except ValueError:
        return [f"{path} is not JSON"]
    if not isinstance(art, dict):
        return [f"{path} is not a JSON object"]
    if art.get("hash") != artifact_hash(art):
        problems.append("the artifact's hash field does not match its content")
    if check_schema:
        from jsonschema import Draft202012Validator

        for err in Draft202012Validator(load_schema("artifact")).iter_errors(art):
            where = ".".join(map(str, err.absolute_path)) or "(artifact)"
            problems.append(f"schema: {where}: {err.message[:160]}")
    env_path = envelope_path or path.with_name(path.name[: -len(".json")] + ENVELOPE_SUFFIX)
    try:
        env = json.loads(env_path.read_bytes())
    except OSError:
        return [*problems, f"the signature envelope {env_path.name} is missing"]
    except ValueError:
        return [*problems, f"the signature envelope {env_path.name} is not JSON"]
    stmt, sig_problems = verify_envelope(env, keys)
    problems.extend(sig_problems)
    if stmt is not None:
        subjects = stmt.get("subject") if isinstance(stmt, dict) else None
        digest = hashlib.sha256(data).hexdigest()
        # The digest binds the envelope to the bytes; a renamed file still verifies
        # (`signed_name` tells under which name it was signed).
        ok = isinstance(subjects, list) and any(
            isinstance(s, dict) and isinstance(s.get("digest"), dict) and s["digest"].get("sha256") == digest
            for s in subjects
        )
        if not ok:
            problems.append(f"the envelope does not name {path.name} with its sha256 {digest[:16]}…")
    return problems


def signed_name(path: Path, envelope_path: Path | None = None) -> str | None:
    """The subject name under which the envelope signed the bytes at `path` (None if none matches)."""
    import base64

    env_path = envelope_path or path.with_name(path.name[: -len(".json")] + ENVELOPE_SUFFIX)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        stmt = json.loads(base64.b64decode(json.loads(env_path.read_bytes())["payload"]))
        for s in stmt.get("subject") or []:
            if isinstance(s, dict) and (s.get("digest") or {}).get("sha256") == digest:
                return str(s.get("name"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


Signer = Callable[[bytes], list[dict[str, str]]]
