"""Poisson batches by direct tensor indexing — the batches Opacus's Poisson loader draws, without a DataLoader.

Opacus's ``DPDataLoader`` (``make_private(poisson_sampling=True)``) draws each
batch with ``UniformWithReplacementSampler``: every row enters independently
with probability ``rate`` (``1 / ceil(n / B)``, see
`pandacead_opacus.privacy.poisson_schedule`), from one ``torch.rand(n,
generator=g)`` per step, ``steps_per_epoch`` times per epoch. Then a
``DataLoader`` collates the rows one ``__getitem__`` at a time — 31–96 % of
a small model's training time on CPU. `poisson_batches` draws the same masks
from the same generator, in the same order, and returns index tensors, so
``X[idx]`` gives the very batches Opacus's loader would have given
(tests/test_opacus_fastpath.py checks it against Opacus's sampler).

The generator is the job's secret sampling generator
(`pandacead_opacus.training.secret_generators`), never the buyer's seed; it
stays a ``torch.Generator`` so its state can be checkpointed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def poisson_indices(n: int, rate: float, generator: Any) -> Any:
    """One Poisson batch: the indices of the rows a ``torch.rand(n) < rate`` mask selects (int64 tensor)."""
    import torch

    mask = torch.rand(n, generator=generator) < rate
    return mask.nonzero(as_tuple=False).reshape(-1)


def poisson_batches(n: int, rate: float, steps: int, generator: Any) -> Iterator[Any]:
    """`steps` Poisson batches over `n` rows at `rate`, exactly as Opacus's sampler draws them."""
    for _ in range(int(steps)):
        yield poisson_indices(n, rate, generator)
