"""The privacy ledger: datasets' and accounts' (ε, δ) budgets, one spend per job, an audit log.

`core` holds the SQLite ledger (transactions, admission, migrations);
`policy` says what the configuration registers about each dataset (owner,
public or private, budget). The public face is unchanged:
`from pandacead.ledger import Ledger, SLACK`.
"""

from pandacead.ledger.core import MIGRATIONS, SLACK, Budget, Ledger, _job_row, now  # noqa: F401 (_job_row: cli)
from pandacead.ledger.policy import DatasetPolicy, policies_from_settings

__all__ = ["MIGRATIONS", "SLACK", "Budget", "DatasetPolicy", "Ledger", "now", "policies_from_settings"]
