"""Built-in budget check: a quick look at the ledger before the (authoritative) atomic reservation.

The reservation (`Ledger.reserve`) is what decides: in one transaction it
charges the paying account and the dataset the job touches (a private
dataset's budget of 0 admits nothing; public datasets need none). This check
only refuses early what never fits the account.
"""

from __future__ import annotations

from typing import Any

from pandacead.hookspecs import hookimpl
from pandacead.ledger import SLACK


@hookimpl
def pandacead_check_budget(job: Any, plan: Any, ledger: Any) -> str | None:
    if plan.epsilon > job.dp.epsilon * (1 + SLACK):
        return (
            f"The job's privacy cost ε={plan.epsilon:.6g} exceeds its requested ε={job.dp.epsilon:.6g}."
        )
    if plan.delta > job.dp.delta * (1 + SLACK):
        return f"The job's δ={plan.delta:.3g} exceeds its requested δ={job.dp.delta:.3g}."
    b = ledger.budget(job.user_id)
    if b.epsilon_budget <= 0:
        return f"User {job.user_id} has no privacy budget on this host."
    return None
