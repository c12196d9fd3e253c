"""Models the Opacus backend trains, and how to rebuild them from an artifact.

An architecture is a small JSON object, stored in the safetensors metadata
under ``pandacead.architecture`` (and in the artifact's ``training_params``)::

    {"format": "pandacead.mlp.v1", "input_dim": 10, "hidden": [64, 64],
     "output_dim": 1, "activation": "relu", "task": "classification",
     "n_classes": 2, "head": "binary_logit"}

``head`` says how to read the output: ``binary_logit`` (one logit, class 1 if
> 0), ``softmax_logits`` (one logit per class, argmax) or ``identity``
(regression). The network is ``nn.Sequential`` of Linear layers with ReLU in
between; tensor names are those of the Sequential (``0.weight``, ``0.bias``,
``2.weight``, …).

Rebuilding and predicting, from an artifact file::

    import base64, json
    from pandacead_opacus.models import load_model, predict

    artifact = json.load(open("outbox/job-1.json"))
    model, arch = load_model(base64.b64decode(artifact["model"]))
    predict(model, arch, [[0.5, 1.0, 0, 0, 0, 0, 0, 0, 0, 0]])   # -> array([1])

`load_model` reads safetensors only (never pickle) and checks every tensor
against the architecture.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

ARCH_FORMAT = "pandacead.mlp.v1"
ARCH_METADATA_KEY = "pandacead.architecture"
MAX_HIDDEN_LAYERS = 4
MAX_HIDDEN_WIDTH = 1024
DEFAULT_MLP_HIDDEN = (64,)


def architecture(
    *,
    model_type: str,
    hidden: Sequence[int],
    n_features: int,
    task: str,
    n_classes: int | None,
) -> dict[str, Any]:
    """The architecture JSON of a job's model. Raises ValueError on a bad request."""
    if model_type == "linear":
        if hidden:
            raise ValueError("a linear model has no hidden layers")
        hidden = []
    elif model_type == "mlp":
        hidden = list(hidden) or list(DEFAULT_MLP_HIDDEN)
        if len(hidden) > MAX_HIDDEN_LAYERS:
            raise ValueError(f"an mlp may have at most {MAX_HIDDEN_LAYERS} hidden layers")
        for h in hidden:
            if isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= MAX_HIDDEN_WIDTH:
                raise ValueError(f"hidden sizes must be integers in [1, {MAX_HIDDEN_WIDTH}], not {h!r}")
    else:
        raise ValueError(f"unknown model type {model_type!r} (expected linear or mlp)")
    if task == "classification":
        if not n_classes or n_classes < 2:
            raise ValueError("a classification model needs at least 2 classes")
        head = "binary_logit" if n_classes == 2 else "softmax_logits"
        output_dim = 1 if n_classes == 2 else int(n_classes)
    elif task == "regression":
        head, output_dim, n_classes = "identity", 1, None
    else:
        raise ValueError(f"unknown task {task!r}")
    return {
        "format": ARCH_FORMAT,
        "input_dim": int(n_features),
        "hidden": [int(h) for h in hidden],
        "output_dim": output_dim,
        "activation": "relu",
        "task": task,
        "n_classes": n_classes,
        "head": head,
    }


def _check_arch(arch: dict[str, Any]) -> None:
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT:
        raise ValueError(f"not a {ARCH_FORMAT} architecture: {arch!r}"[:300])
    if arch.get("activation") != "relu" or arch.get("head") not in (
        "binary_logit",
        "softmax_logits",
        "identity",
    ):
        raise ValueError("unsupported activation or head in the architecture")
    dims = [arch.get("input_dim"), *arch.get("hidden", []), arch.get("output_dim")]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise ValueError("architecture dimensions must be positive integers")
    if len(arch.get("hidden", [])) > MAX_HIDDEN_LAYERS:
        raise ValueError("too many hidden layers")


def build_model(arch: dict[str, Any]) -> Any:
    """A freshly initialised torch module for `arch` (uses torch's global RNG).

    A linear model (no hidden layers) starts at zero: its loss is convex, and
    a random start would leave weights on irrelevant features that the small
    DP-SGD steps of a private job never unlearn (at ε = 1 on `synthetic`,
    held-out accuracy 0.77 from PyTorch's default init at seed 42, 0.905–0.955
    from zero over seeds 0–19).
    MLPs keep PyTorch's default (random) initialisation.
    """
    import torch
    from torch import nn

    _check_arch(arch)
    dims = [arch["input_dim"], *arch["hidden"], arch["output_dim"]]
    layers: list[Any] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    if not arch["hidden"]:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    return model


def state_dict_for_export(model: Any) -> dict[str, Any]:
    """Plain tensors, named as in `build_model` (Opacus's ``_module.`` prefix stripped)."""
    out = {}
    for key, tensor in model.state_dict().items():
        while key.startswith("_module."):
            key = key[len("_module.") :]
        out[key] = tensor.detach().cpu().contiguous().clone()
    return out


def save_model(model: Any, arch: dict[str, Any], extra: dict[str, str] | None = None) -> bytes:
    """safetensors bytes with the architecture JSON in the metadata; byte-for-byte reproducible."""
    from safetensors.torch import save

    metadata = {ARCH_METADATA_KEY: json.dumps(arch, sort_keys=True), "format": "pt"}
    metadata.update(extra or {})
    return _canonical_header(save(state_dict_for_export(model), metadata=metadata))


def _canonical_header(data: bytes) -> bytes:
    """Rewrite the JSON header with sorted keys (safetensors' own order varies between calls).

    Offsets in the header are relative to the data section, so only the
    header changes; it is padded with spaces to 8 bytes as safetensors does.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def load_model(data: bytes) -> tuple[Any, dict[str, Any]]:
    """(torch module in eval mode, architecture) from safetensors bytes."""
    from safetensors.torch import load

    data = bytes(data)
    # safetensors' Python API exposes metadata only for files; read it from the header.
    arch = json.loads(_metadata(data)[ARCH_METADATA_KEY])
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error type
        raise ValueError(f"not a valid safetensors file: {exc}") from None
    model = build_model(arch)
    expected = model.state_dict()
    if set(expected) != set(tensors):
        raise ValueError(
            f"tensors {sorted(tensors)} do not match the architecture's {sorted(expected)}"
        )
    for key, t in tensors.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise ValueError(f"tensor {key} has shape {tuple(t.shape)}, expected {tuple(expected[key].shape)}")
    model.load_state_dict(tensors)
    model.eval()
    return model, arch


def _metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise ValueError("not a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n > 100_000_000:
        raise ValueError("not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError:
        raise ValueError("not a safetensors file (bad header)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    meta = meta or {}
    if ARCH_METADATA_KEY not in meta:
        raise ValueError(f"the safetensors metadata has no {ARCH_METADATA_KEY!r}")
    return meta


def predict(model: Any, arch: dict[str, Any], X: Any) -> Any:
    """Predictions as a numpy array: class indices (0..k-1) or regression values."""
    import numpy as np
    import torch

    x = torch.as_tensor(np.asarray(X, dtype=np.float32))
    if x.ndim == 1:
        x = x.reshape(1, -1)
    model.eval()
    with torch.no_grad():
        out = model(x)
    if arch["head"] == "binary_logit":
        return (out.reshape(-1) > 0).to(torch.int64).numpy()
    if arch["head"] == "softmax_logits":
        return out.argmax(dim=1).numpy()
    return out.reshape(-1).numpy()


def predict_from_artifact(artifact: dict[str, Any], X: Any) -> Any:
    """Example: predictions of an artifact's model (the artifact as parsed JSON)."""
    import base64

    model, arch = load_model(base64.b64decode(artifact["model"], validate=True))
    return predict(model, arch, X)
