"""The privacy ledger: datasets' and accounts' (ε, δ) budgets, one spend per job, an audit log.

`core` holds the SQLite ledger (transactions, admission, migrations);
`policy` says what the configuration registers about each dataset (owner,
public or private, budget). The public face is unchanged:
`from pandacead.ledger import Ledger, SLACK`.

The names are loaded on first use (PEP 562), so that importing one
submodule (`pandacead.ledger.filter_state`, which the click-free `budget
show` of pandacead/budget_read.py needs) does not import `core`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pandacead.ledger.core import MIGRATIONS, SLACK, Budget, Ledger, _job_row, now  # noqa: F401
    from pandacead.ledger.policy import DatasetPolicy, policies_from_settings

__all__ = ["MIGRATIONS", "SLACK", "Budget", "DatasetPolicy", "Ledger", "now", "policies_from_settings"]

_FROM = {
    "MIGRATIONS": "core", "SLACK": "core", "Budget": "core", "Ledger": "core", "_job_row": "core", "now": "core",
    "DatasetPolicy": "policy", "policies_from_settings": "policy",
}


def __getattr__(name: str) -> Any:
    sub = _FROM.get(name)
    if sub is None:
        raise AttributeError(f"module 'pandacead.ledger' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"pandacead.ledger.{sub}"), name)
    globals()[name] = value
    return value
