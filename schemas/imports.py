"""The rows `jobctl import` takes for the kinds that write ledgers or start jobs, not directory rows.

The directory kinds (retailers, credit accounts, orders, companies, members, customers) are
`schemas.directory`'s models; these three are the import's own, validated the same way (pydantic,
`extra="forbid"`, the business's own ids as `tables.EXTERNAL_ID`). Their writers are
`services/import_ledgers.py`, through the ledgers and the churn service.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.tables import EXTERNAL_ID
from schemas.text import Reason

ExternalId = Annotated[str, StringConstraints(strip_whitespace=True, pattern=EXTERNAL_ID)]
"""The business's own id of a row (1-128 characters: letters, digits and `_.:@/-`, no spaces)."""

Amount = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2)]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreditTransactionIn(_Row):
    """One line of a retailer's credit history as another system exported it.

    A DEBIT is money owed, written as an opening debit (`ledger.import_debit`): `amount`, of which
    `cleared_amount` was already paid, due on `due_date`; reminders and guardrails pick it up like
    any other. A CREDIT is a payment received, recorded as a payment (`ledger.record_credit`):
    allocated to the retailer's oldest open debits. Each is written once, under the reference
    `import:{external_id}`."""

    external_id: ExternalId = Field(description="the transaction's id in the source system")
    retailer_external_id: ExternalId
    type: Literal["DEBIT", "CREDIT"]
    amount: Amount
    due_date: date | None = None
    cleared_amount: Amount = Decimal("0")
    notes: Reason | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.amount <= 0:
            raise ValueError("amount must be positive")
        if self.type == "DEBIT" and self.due_date is None:
            raise ValueError("a DEBIT needs a due_date")
        if self.cleared_amount > self.amount:
            raise ValueError(f"cleared_amount {self.cleared_amount} is more than the amount {self.amount}")
        if self.type == "CREDIT" and self.cleared_amount:
            raise ValueError("a CREDIT has no cleared_amount (it is a payment; its allocation is recomputed)")
        return self


CaseTrigger = Literal["payment_failed", "cancel_at_period_end", "manual"]


class RecoveryCaseIn(_Row):
    """An open churn case: the company's member (by the company's own member id) and why it opened.

    The case's cadence starts when it is imported (`opened_at` is checked, not used for the clock:
    a case opened weeks ago elsewhere would otherwise send every nudge it missed at once and be
    terminated on the spot)."""

    company_id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    member_external_id: ExternalId
    trigger: CaseTrigger
    opened_at: datetime | None = None


class LoyaltyBalanceIn(_Row):
    """A customer's points balance in the source system: written once as the opening `adjusted`
    ledger row (reference `import:{customer_external_id}`), so the balance stays the ledger's sum."""

    customer_external_id: ExternalId
    points: int = Field(ge=0, le=2**31 - 1)
