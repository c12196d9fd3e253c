"""Public, hash-pinned feature extractors: the DP training sees only their output.

An earner pairs a dataset with a feature extractor that is public (trained on
public or synthetic data, or published), pinned by the SHA-256 of its file::

    [datasets.digits]
    extractor = { path = "digits8-extractor.safetensors", sha256 = "9f2c…" }

The file is a pandacead model (safetensors with a ``pandacead.architecture``
in its metadata, an ``mlp`` or ``cnn`` with at least one hidden layer); the
features are its last hidden layer's activations, each row scaled to unit L2
norm (so every row's features have the same, public, norm). The input is the
dataset's declared-bounds scaling (`pandacead.preprocessing`).

The digest is checked when the dataset is registered, when a job is planned
(a mismatch refuses the job before any data is read) and again before use.
The digest and architecture go into the artifact's provenance: they are public.
The released model embeds the extractor's tensors so a buyer predicts from
raw values.

Only hashlib/json here; torch is imported by `apply` (in the worker) only.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExtractorError", "describe", "verify", "apply", "read_bytes", "FEATURES"]

#: How features are read from the extractor network (the only mode so far).
FEATURES = "penultimate-l2"
_SHA256 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


class ExtractorError(ValueError):
    """The extractor is missing, malformed or not the pinned file (one sentence)."""


def _path(spec: dict[str, Any], base_dir: Path | str) -> Path:
    p = Path(str(spec["path"])).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def _header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise ExtractorError("the extractor is not a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n > 100_000_000:
        raise ExtractorError("the extractor is not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
        arch = json.loads(header["__metadata__"]["pandacead.architecture"])
    except (ValueError, KeyError, TypeError):
        raise ExtractorError("the extractor's safetensors metadata has no pandacead.architecture") from None
    if not isinstance(arch, dict):
        raise ExtractorError("the extractor's architecture is not an object")
    return arch


def read_bytes(ext: dict[str, Any], base_dir: Path | str) -> bytes:
    """The extractor file's bytes, refused unless they hash to the pinned sha256."""
    path = _path(ext, base_dir)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractorError(f"the extractor file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != ext["sha256"].removeprefix("sha256:"):
        raise ExtractorError(
            f"the extractor file {str(path)!r} has sha256 {digest}, not the pinned {ext['sha256']}"
        )
    return data


def describe(name: str, spec: Any, base_dir: Path | str, input_dim: int) -> dict[str, Any]:
    """The public description of a dataset's extractor: {path, sha256, architecture, output_dim, features}."""
    if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
        raise ExtractorError("extractor must be a table { path = \"file.safetensors\", sha256 = \"<hex>\" }")
    sha = spec.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha.lower()):
        raise ExtractorError("extractor needs its pinned sha256 (64 hex digits) next to its path")
    unknown = sorted(set(spec) - {"path", "sha256"})
    if unknown:
        raise ExtractorError(f"extractor has an unknown key {unknown[0]!r} (expected path and sha256)")
    ext = {"path": spec["path"], "sha256": sha.lower().removeprefix("sha256:")}
    arch = _header(read_bytes(ext, base_dir))
    hidden = arch.get("hidden") or []
    if arch.get("format") not in ("pandacead.mlp.v1", "pandacead.cnn.v1") or not hidden:
        raise ExtractorError("the extractor must be a pandacead mlp or cnn with at least one hidden layer")
    if arch.get("input_dim") != input_dim:
        raise ExtractorError(
            f"the extractor takes {arch.get('input_dim')} inputs, the dataset's rows have {input_dim}"
        )
    return {**ext, "architecture": arch, "output_dim": int(hidden[-1]), "features": FEATURES}


def verify(ext: dict[str, Any], base_dir: Path | str) -> None:
    """Raise ExtractorError unless the file still hashes to the pinned sha256."""
    read_bytes(ext, base_dir)


def feature_module(data: bytes) -> Any:
    """The torch module rows -> features: the network without its last layer, then L2 row scaling."""
    import torch
    from pandacead_opacus import models
    from torch import nn

    net, _ = models.load_model(data)

    class _L2(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    return nn.Sequential(*list(net)[:-1], _L2()).eval()


def apply(ext: dict[str, Any], X: np.ndarray, base_dir: Path | str) -> np.ndarray:
    """Features (float64) of preprocessed rows `X`, after checking the pinned digest."""
    import torch

    module = feature_module(read_bytes(ext, base_dir))
    out = []
    with torch.no_grad():
        for i in range(0, len(X), 4096):
            out.append(module(torch.as_tensor(np.asarray(X[i : i + 4096], dtype=np.float32))).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, ext["output_dim"]))
