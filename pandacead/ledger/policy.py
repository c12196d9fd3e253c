"""What a host registers about each dataset: its owner, whether it is public, its (ε, δ) budget.

The configuration is the source of a dataset's registration
(`[datasets.NAME] owner, public, epsilon_budget, delta_budget`, with
`[budget] dataset_epsilon / dataset_delta` for datasets that name no budget).
The ledger keeps its own copy of the budget so that `pandacead budget set
--dataset` can change it; a later edit of the configuration wins again
(see `effective_budget`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# Built-in datasets that are public by declaration: generated, no data subjects.
BUILTIN_PUBLIC = frozenset({"synthetic"})


@dataclass(frozen=True)
class DatasetPolicy:
    dataset: str
    owner: str | None
    public: bool
    epsilon_budget: float
    delta_budget: float
    configured: bool = True  # False: not in the configuration (the defaults apply)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _amount(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name} must be a finite number >= 0, not {value!r}")
    return float(value)


def policy_for(
    name: str, spec: dict[str, Any] | None, default_epsilon: float, default_delta: float
) -> DatasetPolicy:
    """The policy of one dataset from its `[datasets.NAME]` table (None: not configured)."""
    spec = spec or {}
    where = f"datasets.{name}"
    public = spec.get("public", name in BUILTIN_PUBLIC)
    if not isinstance(public, bool):
        raise ValueError(f"{where}: public must be true or false, not {public!r}")
    owner = spec.get("owner")
    if owner is not None and not isinstance(owner, str):
        raise ValueError(f"{where}: owner must be a string, not {owner!r}")
    eps = _amount(spec.get("epsilon_budget", default_epsilon), "epsilon_budget", where)
    delta = _amount(spec.get("delta_budget", default_delta), "delta_budget", where)
    if delta >= 1:
        raise ValueError(f"{where}: delta_budget must be below 1, not {delta!r}")
    return DatasetPolicy(name, owner, public, eps, delta, configured=bool(spec) or name in BUILTIN_PUBLIC)


def policies_from_settings(settings: Any) -> tuple[dict[str, DatasetPolicy], float, float]:
    """(policies of the configured and built-in datasets, default ε, default δ) from Settings."""
    b = settings.budget
    d_eps = float(b.get("dataset_epsilon", 10.0))
    d_delta = float(b.get("dataset_delta", 1e-3))
    out = {name: policy_for(name, None, d_eps, d_delta) for name in BUILTIN_PUBLIC}
    for name, spec in (settings.datasets or {}).items():
        if isinstance(spec, dict):
            out[name] = policy_for(name, spec, d_eps, d_delta)
    return out, d_eps, d_delta


def effective_budget(row: dict[str, Any] | None, policy: DatasetPolicy) -> tuple[float, float]:
    """The (ε, δ) budget in force: the ledger's, unless the configuration changed since it was set.

    The ledger remembers the configured values it last saw (`config_epsilon`,
    `config_delta`). When the configuration still says the same, an admin's
    `budget set --dataset` stands; when the configuration changed, the
    configuration is the newer decision and wins.
    """
    if row is None:
        return policy.epsilon_budget, policy.delta_budget
    if row["config_epsilon"] != policy.epsilon_budget or row["config_delta"] != policy.delta_budget:
        return policy.epsilon_budget, policy.delta_budget
    return float(row["epsilon_budget"]), float(row["delta_budget"])
