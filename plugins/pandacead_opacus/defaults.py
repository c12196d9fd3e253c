"""Training defaults per model family, for jobs that leave them out.

A job that omits ``epochs``, ``batch_size`` or ``learning_rate`` on a dataset
with declared bounds (`pandacead.preprocessing`: features in [-1, 1]) gets
the values below instead of the schema's generic 10 / 32 / 0.01, which leave
a DP-SGD model near chance at ε ≈ 1. Datasets without declared bounds keep
the schema defaults (their scale is unknown).

How they were chosen — on public data only, at ε = 1, δ = 1/n^1.1, with the
numpy DP-SGD simulation of bench/utility.py's tuning notes: scikit-learn's
public ``breast_cancer`` and ``digits`` (bundled with scikit-learn, not any
earner's data), on a split the benchmark's reported rows are not drawn from,
scaled by declared bounds. The gradient is clipped to 1 and averaged over an
expected batch, so a step moves the weights by about ``learning_rate``; a
batch of a third of the rows (at most 256) with ~30 epochs balanced noise
against the number of steps best. Below ``SMALL_N`` public training rows the
noise of a third-of-the-rows batch swamps its signal (scikit-learn's public
``wine``, 142 rows: 0.84 ± 0.09 at ε = 1 with 90 steps of a third, 0.94 ± 0.03
with 10 full-batch steps, seeds the benchmark does not report), so small
datasets train full-batch with fewer steps, about 90·(n/SMALL_N)² of them —
the noise per step over the batch grows as 1/n while each step's signal does
not, so the useful number of steps falls faster than n. These are defaults,
not tuned per dataset: every job may set its own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pandacead.jobs import Job
from pandacead.trainers import DatasetInfo

#: family -> (epochs, learning_rate); batch size from `batch_size_for`.
FAMILY_DEFAULTS: dict[str, tuple[int, float]] = {
    "linear": (30, 2.0),
    "mlp": (30, 0.5),
    "cnn": (30, 0.5),
}


#: Below this many public training rows: full-batch steps, fewer of them (see above).
SMALL_N = 384


def batch_size_for(n_train: int) -> int:
    if n_train < SMALL_N:
        return int(max(1, n_train))
    return int(min(256, max(16, n_train // 3)))


def epochs_for(family_epochs: int, n_train: int) -> int:
    """The family's epochs, or for a small dataset's full-batch steps max(10, 90·(n/SMALL_N)²) of them."""
    if n_train >= SMALL_N:
        return family_epochs
    return int(min(family_epochs * 3, max(10, round(90 * (n_train / SMALL_N) ** 2))))


def with_defaults(job: Job, info: DatasetInfo) -> tuple[Job, dict[str, Any]]:
    """(job with family defaults for what it left out, {field: value used}); unchanged if none apply."""
    if not job.defaulted or not info.source.get("preprocessing"):
        return job, {}
    epochs, lr = FAMILY_DEFAULTS.get(job.model.type, FAMILY_DEFAULTS["linear"])
    # The PUBLIC row count (the true n of private data is private; the batch size is released).
    n_public = info.require_public_n_train()
    values = {"epochs": epochs_for(epochs, n_public), "batch_size": batch_size_for(n_public), "learning_rate": lr}
    used = {k: v for k, v in values.items() if k in job.defaulted}
    return replace(job, **used), used
