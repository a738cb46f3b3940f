"""`jobctl import`'s writers for the kinds that are not directory rows: each goes through the code
that owns what it writes, never a raw INSERT into a ledger.

- `credit_transactions`: a DEBIT is an opening debit (`activities.credit.ledger.import_debit`:
  available = limit - outstanding, audited `debit_imported`), a CREDIT a payment
  (`ledger.record_credit`, audited `payment_imported`, allocated to the oldest open debits). Both
  under the reference `import:{external_id}`: a re-import writes nothing; the same id with another
  amount is refused (a change of what is owed is an adjustment, `jobctl credit adjust`).
- `recovery_cases`: `services.churn.start_case` (one open case per membership, the case's workflow
  started or joined), found by the company's own member id.
- `loyalty_balances`: the opening `adjusted` ledger row (`activities.loyalty.ledger.adjust_points`,
  reference type `import`, id the customer's own id), so `loyalty_points` stays the ledger's sum.
  A second import of the same balance writes nothing; another balance for the same customer is
  refused, naming the one imported: after the opening row, points move by orders, refunds and
  adjustments, and an export taken later would count those twice.

Each row runs in a savepoint of the batch's transaction: a row the database refuses is reported
and the rest of the batch goes on. Rows are refused with `Refusal(index, field, reason)`, the index
into the batch, as `services.directory` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from temporalio.exceptions import ApplicationError

from activities.credit import ledger
from activities.loyalty.ledger import adjust_points
from schemas.credit import RecordPayment
from schemas.errors import Refused
from schemas.imports import CreditTransactionIn, LoyaltyBalanceIn, RecoveryCaseIn
from services.directory import BatchResult, Refusal, Upserted

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from temporalio.client import Client

    from config.settings import Settings


class WriteEnv(Protocol):
    """What `services.imports` hands a writer besides its batch's connection (its `WriteEnv`)."""

    @property
    def engine(self) -> AsyncEngine: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def client(self) -> Callable[[], Awaitable[Client]]: ...
    @property
    def dry_run(self) -> bool: ...


def _db_reason(error: DBAPIError) -> str:
    orig = error.orig
    diag = getattr(orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    first = str(orig).splitlines()[0] if orig is not None else str(error)
    return f"refused by the database ({constraint})" if constraint else f"refused by the database: {first}"


async def _ids_by_external(conn: AsyncConnection, table: str, external_ids: set[str]) -> dict[str, int]:
    rows = await conn.execute(
        text(f"SELECT external_id, id FROM {table} WHERE external_id = ANY(:ids)"),
        {"ids": sorted(external_ids)},
    )
    return {row.external_id: row.id for row in rows}


# --------------------------------------------------------------------------- credit transactions


async def write_credit_transactions(
    conn: AsyncConnection, rows: Sequence[CreditTransactionIn], *, actor: str, env: WriteEnv
) -> BatchResult:
    out = BatchResult()
    retailers = await _ids_by_external(conn, "retailers", {r.retailer_external_id for r in rows})
    for index, row in enumerate(rows):
        retailer_id = retailers.get(row.retailer_external_id)
        if retailer_id is None:
            out.refused.append(Refusal(index, "retailer_external_id", f"no retailer {row.retailer_external_id}"))
            continue
        reference = f"import:{row.external_id}"
        try:
            async with conn.begin_nested():
                if row.type == "DEBIT":
                    result = await _debit(conn, retailer_id, row, reference, actor)
                else:
                    result = await _credit(conn, retailer_id, row, reference, actor)
        except DBAPIError as error:
            result = Refusal(index, None, _db_reason(error))
        except ValidationError as error:
            result = Refusal(index, "external_id", error.errors()[0]["msg"])
        except ApplicationError as error:
            result = Refusal(index, None, str(error))
        if isinstance(result, Refusal):
            out.refused.append(Refusal(index, result.field, result.reason))
        else:
            out.upserted.append(result)
    return out


async def _debit(
    conn: AsyncConnection, retailer_id: int, row: CreditTransactionIn, reference: str, actor: str
) -> Upserted | Refusal:
    assert row.due_date is not None  # the model requires it of a DEBIT
    debit = await ledger.import_debit(
        conn,
        retailer_id,
        row.amount,
        cleared=row.cleared_amount,
        due=row.due_date,
        reference=reference,
        notes=row.notes or f"imported debit {row.external_id}",
        actor=actor,
    )
    # What was paid moves on after the import (payments clear it), so a re-import compares the
    # debit itself: its amount and due date.
    if debit.duplicate and (debit.amount, debit.due) != (row.amount, row.due_date):
        return Refusal(
            -1,
            "amount",
            f"imported before as {debit.amount} due {debit.due};"
            " a change of what is owed is an adjustment (jobctl credit adjust)",
        )
    return Upserted(row.external_id, debit.debit_id, created=not debit.duplicate, changed=False)


async def _credit(
    conn: AsyncConnection, retailer_id: int, row: CreditTransactionIn, reference: str, actor: str
) -> Upserted | Refusal:
    payment = RecordPayment(retailer_id=retailer_id, amount=row.amount, reference=reference, actor=actor)
    recorded = await ledger.record_credit(
        conn, payment, notes=row.notes or f"imported payment {row.external_id}", action="payment_imported"
    )
    if recorded.duplicate and recorded.amount != row.amount:
        return Refusal(-1, "amount", f"imported before as a payment of {recorded.amount}")
    return Upserted(row.external_id, recorded.credit_transaction_id, created=not recorded.duplicate, changed=False)


# --------------------------------------------------------------------------- recovery cases

MEMBERSHIPS = text(
    "SELECT m.external_id, m.id, EXISTS (SELECT 1 FROM recovery_cases c WHERE c.membership_id = m.id"
    " AND c.status = 'OPEN') AS has_open_case"
    " FROM memberships m WHERE m.company_id = :c AND m.external_id = ANY(:ids)"
)


async def write_recovery_cases(
    conn: AsyncConnection, rows: Sequence[RecoveryCaseIn], *, actor: str, env: WriteEnv
) -> BatchResult:
    """Open each case through `services.churn.start_case` (its own transaction, then its workflow):
    a case opened but not yet checkpointed (a crash between) is found open on the re-run."""
    out = BatchResult()
    members: dict[tuple[str, str], Any] = {}
    for company in {r.company_id for r in rows}:
        ids = [r.member_external_id for r in rows if r.company_id == company]
        for m in await conn.execute(MEMBERSHIPS, {"c": company, "ids": ids}):
            members[(company, m.external_id)] = m
    for index, row in enumerate(rows):
        member = members.get((row.company_id, row.member_external_id))
        if member is None:
            out.refused.append(
                Refusal(index, "member_external_id", f"no member {row.member_external_id} in company {row.company_id}")
            )
            continue
        if env.dry_run:
            out.upserted.append(Upserted(row.member_external_id, member.id, not member.has_open_case, False))
            continue
        from services.churn import start_case

        try:
            case_id = await start_case(
                await env.client(), env.engine, env.settings, member.id, row.trigger, company_id=row.company_id
            )
        except Refused as refusal:
            out.refused.append(Refusal(index, None, str(refusal)))
            continue
        out.upserted.append(Upserted(row.member_external_id, case_id, not member.has_open_case, False))
    return out


# --------------------------------------------------------------------------- loyalty balances


async def write_loyalty_balances(
    conn: AsyncConnection, rows: Sequence[LoyaltyBalanceIn], *, actor: str, env: WriteEnv
) -> BatchResult:
    out = BatchResult()
    customers = await _ids_by_external(conn, "customers", {r.customer_external_id for r in rows})
    for index, row in enumerate(rows):
        customer_id = customers.get(row.customer_external_id)
        if customer_id is None:
            out.refused.append(Refusal(index, "customer_external_id", f"no customer {row.customer_external_id}"))
            continue
        try:
            async with conn.begin_nested():
                adjusted = await adjust_points(
                    conn, customer_id, row.points, reference_type="import", reference_id=row.customer_external_id
                )
        except DBAPIError as error:
            out.refused.append(Refusal(index, None, _db_reason(error)))
            continue
        if adjusted.already_adjusted and adjusted.points != row.points:
            out.refused.append(
                Refusal(
                    index,
                    "points",
                    f"the opening balance was imported as {adjusted.points}; points move by orders and"
                    " adjustments after it, so a later balance is not imported again",
                )
            )
            continue
        out.upserted.append(Upserted(row.customer_external_id, customer_id, not adjusted.already_adjusted, False))
    return out
