"""The directory (issue #34): the one place that writes the business's own rows — retailers, their
credit accounts, orders, companies, members, customers — whichever door they came through (the
ingestion API's PUTs, `jobctl import`, the churn settings route).

Batch-first: each function takes a batch of validated rows (`schemas/directory.py`) and writes it
in a few set-based statements (`INSERT ... SELECT FROM unnest(...) ON CONFLICT (external_id) DO
UPDATE ... WHERE (columns) IS DISTINCT FROM (new columns)`), not a round trip per row, so an import
writes thousands of rows a second. A row the same as stored is not touched (`changed=False`, no
audit row): running a batch twice changes nothing.

The caller owns the transaction (`AsyncConnection`): an import commits its rows and its checkpoint
together, a PUT commits its one row. A row the database state refuses — an account of an unknown
retailer, a Stripe id another row holds, a status that cannot go back, a currency change while
debits are open — comes back in `refused` naming its field; it never raises, so it never aborts
the rest of the batch (nor is a 500 at the API). The refusals are decided before any write, so a
refused row writes nothing; a unique key another writer took in between (a Stripe id) is refused
by the database, and that row's write alone is undone (`_write`). A row given twice in one batch:
the later one is written, the earlier refused (as two batches would leave the later one).

What must happen after the commit comes back as `Effects` (today: the guardrails of retailers whose
limits changed), done by `apply_effects` once the caller committed, as `services.credit_admin`
does it for an admin's change of limits.

Audit: a retailer's created or changed fields (by name: no phone or name in the audit) and every
change of a credit account (the credit ledger's `change_limits` for the limits) go to `audit_log`;
a company's changed churn rules too, with no retailer (`reference` `company:{id}`). Members and
customers have none: their rows are personal data, and the churn and loyalty ledgers audit what
is done to them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from activities.credit import ledger
from schemas.churn import CompanySettings
from schemas.directory import CompanyIn, CreditAccountIn, CustomerIn, MemberIn, OrderIn, RetailerIn
from schemas.money import format_money

if TYPE_CHECKING:
    from temporalio.client import Client

    from config.settings import Settings

log = structlog.get_logger(__name__)

Row = TypeVar("Row")


@dataclass(frozen=True)
class Upserted:
    external_id: str
    id: int | str
    """jobctl's id of the row (a company's is its slug; an account's is its retailer's id)."""
    created: bool
    changed: bool
    """False: the row was stored exactly so already; nothing was written."""


@dataclass(frozen=True)
class Refusal:
    index: int
    """The row's index in the batch given."""
    field: str | None
    reason: str
    code: str = "directory_refused"
    """Stable, for programs (the API's problem `code`, listed in `workers/api/problems.py` CODES):
    `unknown_...` (404 at the API: what the row names does not exist), else a conflict with the
    stored state (409)."""


@dataclass(frozen=True)
class GuardrailRecheck:
    retailer_id: int
    reference: str
    """The change's own reference (`limits:{audit id}`): a repeated re-check joins the first."""


@dataclass
class Effects:
    """What must follow the commit (`apply_effects`): never inside the caller's transaction, since a
    workflow started there would act on rows that may still roll back."""

    guardrail_rechecks: list[GuardrailRecheck] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.guardrail_rechecks)

    def extend(self, other: Effects) -> None:
        self.guardrail_rechecks.extend(other.guardrail_rechecks)


@dataclass
class BatchResult:
    upserted: list[Upserted] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    effects: Effects = field(default_factory=Effects)


# --------------------------------------------------------------------------- helpers


def _last_of_each(
    rows: Sequence[Row], key: Callable[[Row], Any], field_name: str, result: BatchResult
) -> dict[Any, int]:
    """key -> the index of its last row in the batch; every earlier row with the same key is
    refused (one statement cannot write a row twice, and the later row is the newer word)."""
    last: dict[Any, int] = {}
    for index, row in enumerate(rows):
        k = key(row)
        if k in last:
            result.refused.append(
                Refusal(
                    last[k],
                    field_name,
                    "given again later in the same batch; the later row is the one written",
                    "duplicate_in_batch",
                )
            )
        last[k] = index
    return last


def _finish(result: BatchResult, upserted: list[tuple[int, Upserted]]) -> BatchResult:
    """Both lists in the batch's order, whatever order the rows were written in."""
    result.upserted = [u for _, u in sorted(upserted, key=lambda pair: pair[0])]
    result.refused.sort(key=lambda r: r.index)
    return result


def _sorted(last: dict[Any, int]) -> list[tuple[Any, int]]:
    """In key order: concurrent batches lock the rows they share in the same order (no deadlock)."""
    return sorted(last.items(), key=lambda item: str(item[0]))


async def _ids_seen_late(conn: AsyncConnection, table: str, written: dict[str, Any]) -> dict[str, int]:
    """The ids of the rows an upsert named: its own answer, or, for a row a concurrent batch
    inserted and committed while the upsert waited on it unchanged (the statement's snapshot
    predates that row, so its own join found nothing), a second read."""
    ids = {external_id: row.id for external_id, row in written.items()}
    late = [external_id for external_id, row_id in ids.items() if row_id is None]
    if late:
        ids.update(await _ids_of(conn, table, late))
    return ids


async def _write(
    conn: AsyncConnection,
    statement: Any,
    items: list[tuple[int, Any]],
    params: Callable[[list[Any]], dict[str, Any]],
    key: Callable[[Any], Any],
    result: BatchResult,
) -> tuple[dict[Any, Any], list[tuple[int, Any]]]:
    """Run one set-based upsert over `items` ((index, item) pairs) in a savepoint: the rows it
    answered by `key`, and the items written. Should a unique key it does not upsert on refuse it
    (a Stripe id another writer claimed since it was checked, an order id a placement took by
    hand), only that savepoint is undone and each item is written again alone: the rest of the
    batch is written and the item at fault refused, naming the key, not the caller's transaction
    aborted."""
    try:
        async with conn.begin_nested():
            answered = await conn.execute(statement, params([item for _, item in items]))
            return {key(r): r for r in answered}, items
    except IntegrityError as error:
        log.warning("directory.batch_conflict", constraint=_constraint(error), rows=len(items))
    written: dict[Any, Any] = {}
    kept: list[tuple[int, Any]] = []
    for index, item in items:
        try:
            async with conn.begin_nested():
                written.update({key(r): r for r in await conn.execute(statement, params([item]))})
        except IntegrityError as error:
            constraint = _constraint(error) or ""
            field_name = next((c for c in _UNIQUE_FIELDS if constraint.endswith(c)), None)
            code = "stripe_id_taken" if field_name and field_name.startswith("stripe") else "value_taken"
            what = field_name or constraint or "a unique key"
            result.refused.append(
                Refusal(index, field_name, f"{what}: another row holds this value (written meanwhile)", code)
            )
        else:
            kept.append((index, item))
    return written, kept


_UNIQUE_FIELDS = ("stripe_subscription_id", "stripe_customer_id", "external_id")


def _constraint(error: IntegrityError) -> str | None:
    return getattr(getattr(error.orig, "diag", None), "constraint_name", None)


async def _ids_of(conn: AsyncConnection, table: str, external_ids: list[str]) -> dict[str, int]:
    rows = await conn.execute(
        text(f"SELECT external_id, id FROM {table} WHERE external_id = ANY(CAST(:e AS text[]))"),
        {"e": external_ids},
    )
    return {r.external_id: r.id for r in rows}


# --------------------------------------------------------------------------- retailers

_RETAILER_COLUMNS = ("name", "phone", "preferred_channel", "timezone", "locale", "insights_opt_in")

# `insights_opt_in` NULL in the input (the field omitted) keeps the stored choice (false for a new row).
_OPT_IN = (
    "COALESCE((SELECT i.insights_opt_in FROM input i WHERE i.external_id = excluded.external_id), r.insights_opt_in)"
)
UPSERT_RETAILERS = text(
    f"""
WITH input AS (
    SELECT * FROM unnest(CAST(:external_id AS text[]), CAST(:name AS text[]), CAST(:phone AS text[]),
                         CAST(:preferred_channel AS text[]), CAST(:timezone AS text[]), CAST(:locale AS text[]),
                         CAST(:insights_opt_in AS boolean[]))
        AS t(external_id, name, phone, preferred_channel, timezone, locale, insights_opt_in)
),
old AS (
    SELECT r.id, r.external_id, r.name, r.phone, r.preferred_channel, r.timezone, r.locale, r.insights_opt_in
    FROM retailers r JOIN input USING (external_id)
),
up AS (
    INSERT INTO retailers AS r (external_id, name, phone, preferred_channel, timezone, locale, insights_opt_in)
    SELECT external_id, name, phone, preferred_channel, timezone, locale, COALESCE(insights_opt_in, false) FROM input
    ON CONFLICT (external_id) DO UPDATE
    SET name = excluded.name, phone = excluded.phone, preferred_channel = excluded.preferred_channel,
        timezone = excluded.timezone, locale = excluded.locale, insights_opt_in = {_OPT_IN}
    WHERE (r.name, r.phone, r.preferred_channel, r.timezone, r.locale, r.insights_opt_in)
          IS DISTINCT FROM
          (excluded.name, excluded.phone, excluded.preferred_channel, excluded.timezone, excluded.locale, {_OPT_IN})
    RETURNING r.id, r.external_id, (r.xmax = 0) AS created, r.name, r.phone, r.preferred_channel, r.timezone, r.locale,
              r.insights_opt_in
),
changes AS (
    SELECT up.id, up.external_id, up.created, old.preferred_channel AS old_channel, old.timezone AS old_timezone,
           old.locale AS old_locale, old.insights_opt_in AS old_insights_opt_in, up.preferred_channel, up.timezone,
           up.locale, up.insights_opt_in,
           array_remove(ARRAY[
               CASE WHEN old.name IS DISTINCT FROM up.name THEN 'name' END,
               CASE WHEN old.phone IS DISTINCT FROM up.phone THEN 'phone' END,
               CASE WHEN old.preferred_channel IS DISTINCT FROM up.preferred_channel THEN 'preferred_channel' END,
               CASE WHEN old.timezone IS DISTINCT FROM up.timezone THEN 'timezone' END,
               CASE WHEN old.locale IS DISTINCT FROM up.locale THEN 'locale' END,
               CASE WHEN old.insights_opt_in IS DISTINCT FROM up.insights_opt_in THEN 'insights_opt_in' END],
               NULL) AS fields
    FROM up LEFT JOIN old ON old.id = up.id
),
audited AS (
    {
        ledger.audit_rows(
            "changes",
            retailer_id="id",
            action="CASE WHEN created THEN 'retailer_created' ELSE 'retailer_updated' END",
            reference="'directory:' || external_id",
            old="CASE WHEN created THEN NULL ELSE jsonb_build_object('preferred_channel', old_channel,"
            " 'timezone', old_timezone, 'locale', old_locale, 'insights_opt_in', old_insights_opt_in) END",
            new="jsonb_build_object('changed', to_jsonb(fields), 'preferred_channel', preferred_channel,"
            " 'timezone', timezone, 'locale', locale, 'insights_opt_in', insights_opt_in)",
            performed_by=":actor",
            reason="'directory'",
        )
    }
)
SELECT input.external_id, COALESCE(up.id, old.id) AS id, COALESCE(up.created, false) AS created,
       up.id IS NOT NULL AS changed
FROM input LEFT JOIN up USING (external_id) LEFT JOIN old USING (external_id)
"""
)


async def upsert_retailers(conn: AsyncConnection, rows: Sequence[RetailerIn], *, actor: str) -> BatchResult:
    """Create or update retailers by their external id. A new phone number is the one the next
    message goes to: every send reads the phone from the retailer's row when it goes out."""
    result, upserted = BatchResult(), list[tuple[int, Upserted]]()
    last = _sorted(_last_of_each(rows, lambda r: r.external_id, "external_id", result))
    if last:

        def params(chosen: list[RetailerIn]) -> dict[str, Any]:
            columns = ("external_id", *_RETAILER_COLUMNS)
            return {**{c: [getattr(r, c) for r in chosen] for c in columns}, "actor": actor}

        items = [(i, rows[i]) for _, i in last]
        written, kept = await _write(conn, UPSERT_RETAILERS, items, params, lambda r: r.external_id, result)
        ids = await _ids_seen_late(conn, "retailers", written)
        for index, item in kept:
            row = written[item.external_id]
            upserted.append((index, Upserted(item.external_id, ids[item.external_id], row.created, row.changed)))
    _finish(result, upserted)
    log.info("directory.retailers", rows=len(rows), **_counts(result))
    return result


def _counts(result: BatchResult) -> dict[str, int]:
    return {
        "created": sum(u.created for u in result.upserted),
        "changed": sum(u.changed and not u.created for u in result.upserted),
        "unchanged": sum(not u.changed for u in result.upserted),
        "refused": len(result.refused),
    }


# --------------------------------------------------------------------------- credit accounts

ACCOUNTS_OF = text(
    """
SELECT ca.retailer_id, ca.credit_limit, ca.max_order_value, ca.max_outstanding_days, ca.payment_terms_days,
       ca.currency
FROM credit_accounts ca WHERE ca.retailer_id = ANY(CAST(:ids AS bigint[]))
ORDER BY ca.retailer_id
FOR UPDATE
"""
)

OPEN_ACCOUNTS = text(
    f"""
WITH input AS (
    SELECT * FROM unnest(CAST(:retailer_id AS bigint[]), CAST(:credit_limit AS numeric[]),
                         CAST(:max_order_value AS numeric[]), CAST(:max_outstanding_days AS integer[]),
                         CAST(:payment_terms_days AS integer[]), CAST(:currency AS text[]))
        AS t(retailer_id, credit_limit, max_order_value, max_outstanding_days, payment_terms_days, currency)
),
opened AS (
    INSERT INTO credit_accounts
        (retailer_id, credit_limit, available_credit, max_order_value, max_outstanding_days, payment_terms_days,
         currency)
    SELECT i.retailer_id, i.credit_limit,
           i.credit_limit - COALESCE((SELECT sum(d.amount - d.cleared_amount) FROM credit_transactions d
                                      WHERE d.retailer_id = i.retailer_id AND d.type = 'DEBIT'
                                        AND d.status <> 'CLEARED'), 0),
           i.max_order_value, i.max_outstanding_days, i.payment_terms_days, i.currency
    FROM input i
    ON CONFLICT (retailer_id) DO NOTHING
    RETURNING retailer_id, credit_limit, available_credit, max_order_value, max_outstanding_days,
              payment_terms_days, currency
),
audited AS (
    {
        ledger.audit_rows(
            "opened",
            retailer_id="retailer_id",
            action="'credit_account_opened'",
            reference="'directory:account'",
            old="NULL",
            new="jsonb_build_object('credit_limit', credit_limit::text, 'available_credit', available_credit::text,"
            " 'max_order_value', max_order_value::text, 'max_outstanding_days', max_outstanding_days,"
            " 'payment_terms_days', payment_terms_days, 'currency', currency)",
            performed_by=":actor",
            reason="'directory'",
        )
    }
)
SELECT retailer_id FROM opened
"""
)

HAS_OPEN_DEBITS = text(
    "SELECT EXISTS (SELECT 1 FROM credit_transactions WHERE retailer_id = :r AND type = 'DEBIT'"
    " AND status <> 'CLEARED')"
)

SET_TERMS = text(
    "UPDATE credit_accounts SET payment_terms_days = :payment_terms_days, currency = :currency, updated_at = now()"
    " WHERE retailer_id = :r"
)

# After a change of limits: may the guardrails now do something? A system pause may lift; an
# active retailer may now be over its limit or overdue beyond its days. Anything else needs no
# workflow (the daily 11:00 run looks at everyone anyway).
NEEDS_RECHECK = text(
    """
SELECT (r.credit_status = 'PAUSED' AND r.paused_by = 'system')
    OR (r.credit_status = 'ACTIVE' AND (ca.available_credit < 0 OR EXISTS (
            SELECT 1 FROM credit_transactions d WHERE d.retailer_id = r.id AND d.type = 'DEBIT'
            AND d.status <> 'CLEARED' AND d.due_date < CURRENT_DATE - ca.max_outstanding_days)))
FROM retailers r JOIN credit_accounts ca ON ca.retailer_id = r.id WHERE r.id = :r
"""
)

_TERMS = ("payment_terms_days", "currency")


async def upsert_credit_accounts(conn: AsyncConnection, rows: Sequence[CreditAccountIn], *, actor: str) -> BatchResult:
    """Open or change retailers' credit accounts, named by the retailer's external id.

    A new account has all of its limit available. A changed limit goes through the credit ledger
    (`ledger.change_limits`: available credit follows the rule, one audit row), and when the
    guardrails may now act (a system pause, or an active retailer now over a limit) they are
    re-checked after the commit (`Effects`). Terms and currency are audited as
    `credit_terms_changed`; the currency cannot change while debits are open (they are owed in
    the old one)."""
    result, upserted = BatchResult(), list[tuple[int, Upserted]]()
    last = _last_of_each(rows, lambda r: r.retailer_external_id, "retailer_external_id", result)
    retailer_ids = await _ids_of(conn, "retailers", list(last))
    wanted: dict[int, tuple[int, CreditAccountIn]] = {}
    for external_id, index in last.items():
        if external_id not in retailer_ids:
            result.refused.append(
                Refusal(
                    index,
                    "retailer_external_id",
                    f"no retailer {external_id}",
                    "unknown_retailer",
                )
            )
        else:
            wanted[retailer_ids[external_id]] = (index, rows[index])
    existing = {
        r.retailer_id: r for r in await conn.execute(ACCOUNTS_OF, {"ids": sorted(wanted)})
    }  # locked: no limit or debit changes under us
    new = sorted(rid for rid in wanted if rid not in existing)
    if new:
        fresh = [wanted[rid][1] for rid in new]
        params: dict[str, Any] = {
            "retailer_id": new,
            **{c: [getattr(r, c) for r in fresh] for c in (*ledger.LIMIT_COLUMNS, *_TERMS)},
            "actor": actor,
        }
        opened = set((await conn.execute(OPEN_ACCOUNTS, params)).scalars())
        for rid in new:
            index, row = wanted[rid]
            if rid in opened:
                upserted.append((index, Upserted(row.retailer_external_id, rid, True, True)))
            else:  # opened by another writer since we looked: its values win; say so
                result.refused.append(
                    Refusal(
                        index,
                        None,
                        "the account was opened by another writer meanwhile; send the row again",
                        "changed_meanwhile",
                    )
                )
    for rid in sorted(existing):
        index, row = wanted[rid]
        outcome = await _change_account(conn, rid, existing[rid], row, index, actor=actor)
        if isinstance(outcome, Refusal):
            result.refused.append(outcome)
            continue
        changed, recheck = outcome
        upserted.append((index, Upserted(row.retailer_external_id, rid, False, changed)))
        if recheck is not None:
            result.effects.guardrail_rechecks.append(recheck)
    _finish(result, upserted)
    log.info(
        "directory.credit_accounts", rows=len(rows), rechecks=len(result.effects.guardrail_rechecks), **_counts(result)
    )
    return result


async def _change_account(
    conn: AsyncConnection, retailer_id: int, stored: Any, row: CreditAccountIn, index: int, *, actor: str
) -> Refusal | tuple[bool, GuardrailRecheck | None]:
    limits = {k: getattr(row, k) for k in ledger.LIMIT_COLUMNS if getattr(row, k) != getattr(stored, k)}
    terms = {k: getattr(row, k) for k in _TERMS if getattr(row, k) != getattr(stored, k)}
    if not limits and not terms:
        return False, None
    if "currency" in terms and await conn.scalar(HAS_OPEN_DEBITS, {"r": retailer_id}):
        return Refusal(
            index,
            "currency",
            f"retailer {row.retailer_external_id} has open debits in {stored.currency}:"
            " the currency can change once they are paid",
            "currency_locked",
        )
    recheck = None
    try:
        async with conn.begin_nested():  # a refused change undoes itself alone, not the batch
            if limits:
                old = {k: getattr(stored, k) for k in limits}
                audit_id = await ledger.change_limits(conn, retailer_id, old, limits, actor=actor, reason="directory")
                if await conn.scalar(NEEDS_RECHECK, {"r": retailer_id}):
                    recheck = GuardrailRecheck(retailer_id, f"limits:{audit_id}")
            if terms:
                await conn.execute(
                    SET_TERMS,
                    {"r": retailer_id, "payment_terms_days": row.payment_terms_days, "currency": row.currency},
                )
                await ledger.audit(
                    conn,
                    retailer_id,
                    "credit_terms_changed",
                    actor=actor,
                    reference="directory:account",
                    old={k: getattr(stored, k) for k in terms},
                    new=terms,
                    reason="directory",
                )
    except DBAPIError as error:
        first = next(iter(limits or terms))
        log.warning("directory.account_change_refused", retailer_id=retailer_id, error=type(error.orig).__name__)
        return Refusal(
            index,
            first,
            f"the credit ledger refused the change ({type(error.orig).__name__})",
            "limits_refused",
        )
    return True, recheck


# --------------------------------------------------------------------------- orders

# Where an order's status may go from a PUT. Backwards is never a move (a DELIVERED order is not
# PENDING again); a CANCELLED or FAILED order is final. A credit order that was placed (it has a
# DEBIT) fails or is cancelled through `POST /v1/orders/{id}/failed`, which gives its credit back.
ORDER_MOVES: dict[str, frozenset[str]] = {
    "PENDING": frozenset({"CONFIRMED", "DELIVERED", "CANCELLED", "FAILED"}),
    "CONFIRMED": frozenset({"DELIVERED", "CANCELLED", "FAILED"}),
    "DELIVERED": frozenset(),
    "CANCELLED": frozenset(),
    "FAILED": frozenset(),
}

ORDERS_OF = text(
    """
SELECT o.id, o.external_id, o.retailer_id, o.status, o.payment_mode, o.total_amount,
       EXISTS (SELECT 1 FROM credit_transactions d WHERE d.order_id = o.id AND d.type = 'DEBIT') AS placed,
       EXISTS (SELECT 1 FROM pending_orders p WHERE p.order_id = o.id) AS clocked,
       (SELECT ca.currency FROM credit_accounts ca WHERE ca.retailer_id = o.retailer_id) AS currency
FROM orders o WHERE o.external_id = ANY(CAST(:e AS text[]))
ORDER BY o.external_id
FOR UPDATE OF o
"""
)

UPSERT_ORDERS = text(
    """
WITH input AS (
    SELECT * FROM unnest(CAST(:external_id AS text[]), CAST(:retailer_id AS bigint[]), CAST(:status AS text[]),
                         CAST(:payment_mode AS text[]), CAST(:amount AS numeric[]), CAST(:placed_at AS timestamptz[]))
        AS t(external_id, retailer_id, status, payment_mode, total_amount, placed_at)
),
up AS (
    INSERT INTO orders AS o (external_id, retailer_id, status, payment_mode, total_amount, created_at, failed_at)
    SELECT external_id, retailer_id, status, payment_mode, total_amount, COALESCE(placed_at, now()),
           CASE WHEN status = 'FAILED' THEN now() END
    FROM input
    ON CONFLICT (external_id) DO UPDATE
    SET status = excluded.status, payment_mode = excluded.payment_mode, total_amount = excluded.total_amount,
        created_at = CASE WHEN (SELECT placed_at FROM input WHERE input.external_id = excluded.external_id) IS NULL
                          THEN o.created_at ELSE excluded.created_at END,
        failed_at = CASE WHEN excluded.status = 'FAILED' AND o.status <> 'FAILED' THEN now() ELSE o.failed_at END
    WHERE (o.status, o.payment_mode, o.total_amount) IS DISTINCT FROM
          (excluded.status, excluded.payment_mode, excluded.total_amount)
       OR ((SELECT placed_at FROM input WHERE input.external_id = excluded.external_id) IS NOT NULL
           AND o.created_at IS DISTINCT FROM excluded.created_at)
    RETURNING o.id, o.external_id, (o.xmax = 0) AS created
)
SELECT input.external_id, COALESCE(up.id, o.id) AS id, COALESCE(up.created, false) AS created,
       up.id IS NOT NULL AS changed
FROM input LEFT JOIN up USING (external_id) LEFT JOIN orders o ON o.external_id = input.external_id
"""
)


def _order_refusal(stored: Any, row: OrderIn, retailer_id: int, index: int) -> Refusal | None:
    if stored.retailer_id != retailer_id:
        return Refusal(
            index,
            "retailer_external_id",
            f"order {row.external_id} is another retailer's",
            "order_of_another_retailer",
        )
    if stored.status != row.status and row.status not in ORDER_MOVES[stored.status]:
        moves = ", ".join(sorted(ORDER_MOVES[stored.status])) or "nothing: it is final"
        return Refusal(
            index,
            "status",
            f"order {row.external_id} is {stored.status}; it may move to {moves}",
            "order_status_refused",
        )
    if stored.placed and row.status in ("FAILED", "CANCELLED") and stored.status != row.status:
        return Refusal(
            index,
            "status",
            f"order {row.external_id} was placed on credit: report its failure at"
            f" POST /v1/orders/{stored.id}/failed, which gives the credit back",
            "order_status_refused",
        )
    if (stored.placed or stored.clocked) and (
        stored.payment_mode != row.payment_mode or stored.total_amount != row.amount
    ):
        what = "amount" if stored.total_amount != row.amount else "payment_mode"
        return Refusal(
            index,
            what,
            f"order {row.external_id} was placed or its checkout started as {stored.payment_mode}"
            f" for {format_money(stored.total_amount, stored.currency or 'USD')}: that cannot change",
            "order_placed",
        )
    return None


async def upsert_orders(conn: AsyncConnection, rows: Sequence[OrderIn], *, actor: str) -> BatchResult:
    """Record orders (by the shop's external id) as history for the insights, and as the row a
    checkout's clock needs (`POST /v1/shop-orders/{external_id}/checkout-started`).

    Recording an order takes no credit: placing it does (`POST /v1/orders/{order_id}/placement`,
    `services.credit.place_order`, which writes a credit order's DEBIT). A status moves forward
    only (`ORDER_MOVES`); a placed credit order fails through its failure route, which gives its
    credit back; a placed or clocked order's amount and mode stay. `placed_at` given replaces
    the order's time; left out, the stored one stays (now, for a new order)."""
    result, upserted = BatchResult(), list[tuple[int, Upserted]]()
    last = _last_of_each(rows, lambda r: r.external_id, "external_id", result)
    retailer_ids = await _ids_of(conn, "retailers", sorted({rows[i].retailer_external_id for i in last.values()}))
    stored = {o.external_id: o for o in await conn.execute(ORDERS_OF, {"e": sorted(last)})}
    accepted: list[tuple[str, int, int]] = []
    for external_id, index in _sorted(last):
        row = rows[index]
        retailer_id = retailer_ids.get(row.retailer_external_id)
        if retailer_id is None:
            result.refused.append(
                Refusal(
                    index,
                    "retailer_external_id",
                    f"no retailer {row.retailer_external_id}",
                    "unknown_retailer",
                )
            )
            continue
        if external_id in stored and (refusal := _order_refusal(stored[external_id], row, retailer_id, index)):
            result.refused.append(refusal)
            continue
        accepted.append((external_id, index, retailer_id))
    if accepted:

        def params(chosen: list[tuple[OrderIn, int]]) -> dict[str, Any]:
            return {
                "external_id": [r.external_id for r, _ in chosen],
                "retailer_id": [rid for _, rid in chosen],
                "status": [r.status for r, _ in chosen],
                "payment_mode": [r.payment_mode for r, _ in chosen],
                "amount": [r.amount for r, _ in chosen],
                "placed_at": [r.placed_at for r, _ in chosen],
            }

        items = [(i, (rows[i], rid)) for _, i, rid in accepted]
        written, kept = await _write(conn, UPSERT_ORDERS, items, params, lambda r: r.external_id, result)
        ids = await _ids_seen_late(conn, "orders", written)
        for index, (item, _) in kept:
            w = written[item.external_id]
            upserted.append((index, Upserted(item.external_id, ids[item.external_id], w.created, w.changed)))
    _finish(result, upserted)
    log.info("directory.orders", rows=len(rows), actor_set=bool(actor), **_counts(result))
    return result


# --------------------------------------------------------------------------- companies

_COMPANY_SETTINGS = (
    "timezone",
    "reminder_offsets_days",
    "channels",
    "incentive_days",
    "quiet_hours_start",
    "quiet_hours_end",
    "daily_nudge_cap",
    "grace_period_days",
)
_COMPANY_COLUMNS = ("name", *_COMPANY_SETTINGS)

UPSERT_COMPANIES = text(
    f"""
WITH input AS (
    SELECT id, name, timezone, ARRAY(SELECT jsonb_array_elements_text(offsets)::integer) AS reminder_offsets_days,
           ARRAY(SELECT jsonb_array_elements_text(channels)) AS channels, incentive_days, quiet_hours_start,
           quiet_hours_end, daily_nudge_cap, grace_period_days
    FROM unnest(CAST(:id AS text[]), CAST(:name AS text[]), CAST(:timezone AS text[]), CAST(:offsets AS jsonb[]),
                CAST(:channels AS jsonb[]), CAST(:incentive_days AS integer[]), CAST(:quiet_hours_start AS integer[]),
                CAST(:quiet_hours_end AS integer[]), CAST(:daily_nudge_cap AS integer[]),
                CAST(:grace_period_days AS integer[]))
        AS t(id, name, timezone, offsets, channels, incentive_days, quiet_hours_start, quiet_hours_end,
             daily_nudge_cap, grace_period_days)
),
old AS (SELECT c.* FROM companies c JOIN input USING (id)),
up AS (
    INSERT INTO companies AS c (id, {", ".join(_COMPANY_COLUMNS)})
    SELECT id, {", ".join(_COMPANY_COLUMNS)} FROM input
    ON CONFLICT (id) DO UPDATE
    SET {", ".join(f"{c} = excluded.{c}" for c in _COMPANY_COLUMNS)}
    WHERE ({", ".join(f"c.{c}" for c in _COMPANY_COLUMNS)})
          IS DISTINCT FROM ({", ".join(f"excluded.{c}" for c in _COMPANY_COLUMNS)})
    RETURNING c.id, (c.xmax = 0) AS created, {", ".join(f"c.{c}" for c in _COMPANY_COLUMNS)}
),
audited AS (
    {
        ledger.audit_rows(
            "up LEFT JOIN old USING (id)",
            retailer_id="NULL",
            action="CASE WHEN up.created THEN 'company_created' ELSE 'company_settings_changed' END",
            reference="'company:' || up.id",
            old="CASE WHEN up.created THEN NULL ELSE jsonb_build_object("
            + ", ".join(f"'{c}', to_jsonb(old.{c})" for c in _COMPANY_COLUMNS)
            + ") END",
            new="jsonb_build_object(" + ", ".join(f"'{c}', to_jsonb(up.{c})" for c in _COMPANY_COLUMNS) + ")",
            performed_by=":actor",
            reason="'directory'",
        )
    }
)
SELECT input.id, COALESCE(up.created, false) AS created, up.id IS NOT NULL AS changed
FROM input LEFT JOIN up USING (id)
"""
)


async def upsert_companies(conn: AsyncConnection, rows: Sequence[CompanyIn], *, actor: str) -> BatchResult:
    """Create or update companies (by their slug) and their churn rules; each change is audited
    in `audit_log` with no retailer (`reference` `company:{id}`, old and new rules).

    When changed rules reach open cases (docs/ARCHITECTURE.md, "The directory"): channels, quiet
    hours, the daily cap and the time zone at the case's next nudge (each nudge reads them);
    reminder offsets and the grace period when a case opens (its schedule is fixed then)."""
    import json

    result, upserted = BatchResult(), list[tuple[int, Upserted]]()
    last = _sorted(_last_of_each(rows, lambda r: r.id, "id", result))
    if last:
        chosen = [rows[i] for _, i in last]
        params: dict[str, Any] = {c: [getattr(r, c) for r in chosen] for c in ("id", "name", *_COMPANY_SETTINGS)}
        params["offsets"] = [json.dumps(r.reminder_offsets_days) for r in chosen]
        params["channels"] = [json.dumps(r.channels) for r in chosen]
        del params["reminder_offsets_days"]
        written = {r.id: r for r in await conn.execute(UPSERT_COMPANIES, {**params, "actor": actor})}
        for company_id, index in last:
            w = written[company_id]
            upserted.append((index, Upserted(company_id, company_id, w.created, w.changed)))
    _finish(result, upserted)
    log.info("directory.companies", rows=len(rows), **_counts(result))
    return result


async def set_company_rules(engine: AsyncEngine, company_id: str, rules: CompanySettings, *, actor: str) -> bool:
    """Replace an existing company's churn rules (`PUT /v1/churn/companies/{id}/settings`), through
    the same writer and audit as `upsert_companies`; False when there is no such company."""
    async with engine.begin() as conn:
        name = await conn.scalar(text("SELECT name FROM companies WHERE id = :c FOR UPDATE"), {"c": company_id})
        if name is None:
            return False
        row = CompanyIn(id=company_id, name=name, **rules.model_dump())
        await upsert_companies(conn, [row], actor=actor)
    return True


# --------------------------------------------------------------------------- members

_MEMBER_COLUMNS = (
    "name",
    "phone",
    "timezone",
    "preferred_channel",
    "stripe_customer_id",
    "stripe_subscription_id",
    "status",
    "current_period_end",
)

STRIPE_HOLDERS = text(
    """
SELECT company_id, external_id, stripe_customer_id, stripe_subscription_id FROM memberships
WHERE stripe_customer_id = ANY(CAST(:customers AS text[])) OR stripe_subscription_id = ANY(CAST(:subs AS text[]))
"""
)

UPSERT_MEMBERS = text(
    f"""
WITH input AS (
    SELECT * FROM unnest(CAST(:company_id AS text[]), CAST(:external_id AS text[]), CAST(:name AS text[]),
                         CAST(:phone AS text[]), CAST(:timezone AS text[]), CAST(:preferred_channel AS text[]),
                         CAST(:stripe_customer_id AS text[]), CAST(:stripe_subscription_id AS text[]),
                         CAST(:status AS text[]), CAST(:current_period_end AS timestamptz[]))
        AS t(company_id, external_id, {", ".join(_MEMBER_COLUMNS)})
),
up AS (
    INSERT INTO memberships AS m (company_id, external_id, {", ".join(_MEMBER_COLUMNS)})
    SELECT company_id, external_id, {", ".join(_MEMBER_COLUMNS)} FROM input
    ON CONFLICT (company_id, external_id) DO UPDATE
    SET {", ".join(f"{c} = excluded.{c}" for c in _MEMBER_COLUMNS)}
    WHERE ({", ".join(f"m.{c}" for c in _MEMBER_COLUMNS)})
          IS DISTINCT FROM ({", ".join(f"excluded.{c}" for c in _MEMBER_COLUMNS)})
    RETURNING m.id, m.company_id, m.external_id, (m.xmax = 0) AS created
)
SELECT input.company_id, input.external_id, COALESCE(up.id, m.id) AS id, COALESCE(up.created, false) AS created,
       up.id IS NOT NULL AS changed
FROM input LEFT JOIN up USING (company_id, external_id)
LEFT JOIN memberships m ON m.company_id = input.company_id AND m.external_id = input.external_id
"""
)


def _stripe_refusals(
    rows: Sequence[Any],
    last: dict[Any, int],
    owner: Callable[[Any], Any],
    holders: dict[tuple[str, str], Any],
    columns: Sequence[str],
    result: BatchResult,
) -> set[int]:
    """Rows naming a Stripe id another row holds (stored, or earlier in this batch): refused,
    naming the column. A Stripe id must lead to one row, or its webhooks cannot be routed."""
    refused: set[int] = set()
    taken: dict[tuple[str, str], Any] = dict(holders)
    for index in sorted(last.values()):  # in the batch's order: the first row naming an id has it
        row = rows[index]
        for column in columns:
            value = getattr(row, column)
            if value is None:
                continue
            holder = taken.get((column, value))
            if holder is not None and holder != owner(row):
                result.refused.append(
                    Refusal(
                        index,
                        column,
                        f"{value} is another row's already",
                        "stripe_id_taken",
                    )
                )
                refused.add(index)
                break
        else:
            for column in columns:
                if getattr(row, column) is not None:
                    taken[(column, getattr(row, column))] = owner(row)
    return refused


async def upsert_members(conn: AsyncConnection, rows: Sequence[MemberIn], *, actor: str) -> BatchResult:
    """Create or update a company's members by the company's own member id. A Stripe customer or
    subscription id another member holds is refused (a webhook must find one member). The phone
    given is the one the next nudge goes to (read when it is sent)."""
    result, upserted = BatchResult(), list[tuple[int, Upserted]]()
    last = _last_of_each(rows, lambda r: (r.company_id, r.external_id), "external_id", result)
    companies = set(
        (
            await conn.execute(
                text("SELECT id FROM companies WHERE id = ANY(CAST(:c AS text[]))"),
                {"c": sorted({k[0] for k in last})},
            )
        ).scalars()
    )
    for key, index in list(last.items()):
        if key[0] not in companies:
            result.refused.append(
                Refusal(
                    index,
                    "company_id",
                    f"no company {key[0]}",
                    "unknown_company",
                )
            )
            del last[key]
    chosen_rows = [rows[i] for i in last.values()]
    holders: dict[tuple[str, str], Any] = {}
    for h in await conn.execute(
        STRIPE_HOLDERS,
        {
            "customers": [r.stripe_customer_id for r in chosen_rows if r.stripe_customer_id],
            "subs": [r.stripe_subscription_id for r in chosen_rows if r.stripe_subscription_id],
        },
    ):
        for column in ("stripe_customer_id", "stripe_subscription_id"):
            if getattr(h, column) is not None:
                holders[(column, getattr(h, column))] = (h.company_id, h.external_id)
    refused = _stripe_refusals(
        rows,
        last,
        lambda r: (r.company_id, r.external_id),
        holders,
        ("stripe_subscription_id", "stripe_customer_id"),
        result,
    )
    accepted = [(key, i) for key, i in _sorted(last) if i not in refused]
    if accepted:

        def params(chosen: list[MemberIn]) -> dict[str, Any]:
            return {c: [getattr(r, c) for r in chosen] for c in ("company_id", "external_id", *_MEMBER_COLUMNS)}

        items = [(i, rows[i]) for _, i in accepted]
        written, kept = await _write(
            conn, UPSERT_MEMBERS, items, params, lambda w: (w.company_id, w.external_id), result
        )
        late = [key for key, w in written.items() if w.id is None]
        ids = {key: w.id for key, w in written.items()}
        if late:  # written by a concurrent batch that committed while this statement waited
            found = await conn.execute(
                text(
                    "SELECT company_id, external_id, id FROM memberships"
                    " WHERE (company_id, external_id) IN (SELECT * FROM unnest(CAST(:c AS text[]), CAST(:e AS text[])))"
                ),
                {"c": [k[0] for k in late], "e": [k[1] for k in late]},
            )
            ids.update({(f.company_id, f.external_id): f.id for f in found})
        for index, item in kept:
            key = (item.company_id, item.external_id)
            w = written[key]
            upserted.append((index, Upserted(item.external_id, ids[key], w.created, w.changed)))
    _finish(result, upserted)
    log.info("directory.members", rows=len(rows), actor_set=bool(actor), **_counts(result))
    return result


# --------------------------------------------------------------------------- customers

_CUSTOMER_COLUMNS = ("name", "phone", "earn_rate", "stripe_customer_id")

UPSERT_CUSTOMERS = text(
    f"""
WITH input AS (
    SELECT * FROM unnest(CAST(:external_id AS text[]), CAST(:name AS text[]), CAST(:phone AS text[]),
                         CAST(:earn_rate AS numeric[]), CAST(:stripe_customer_id AS text[]))
        AS t(external_id, {", ".join(_CUSTOMER_COLUMNS)})
),
up AS (
    INSERT INTO customers AS c (external_id, {", ".join(_CUSTOMER_COLUMNS)})
    SELECT external_id, {", ".join(_CUSTOMER_COLUMNS)} FROM input
    ON CONFLICT (external_id) DO UPDATE
    SET {", ".join(f"{c} = excluded.{c}" for c in _CUSTOMER_COLUMNS)}
    WHERE ({", ".join(f"c.{c}" for c in _CUSTOMER_COLUMNS)})
          IS DISTINCT FROM ({", ".join(f"excluded.{c}" for c in _CUSTOMER_COLUMNS)})
    RETURNING c.id, c.external_id, (c.xmax = 0) AS created
)
SELECT input.external_id, COALESCE(up.id, c.id) AS id, COALESCE(up.created, false) AS created,
       up.id IS NOT NULL AS changed
FROM input LEFT JOIN up USING (external_id) LEFT JOIN customers c ON c.external_id = input.external_id
"""
)


async def upsert_customers(conn: AsyncConnection, rows: Sequence[CustomerIn], *, actor: str) -> BatchResult:
    """Create or update loyalty customers by their external id. Points are never set here (they
    are the sum of the loyalty ledger). A Stripe customer id another customer holds is refused."""
    result, upserted = BatchResult(), list[tuple[int, Upserted]]()
    last = _last_of_each(rows, lambda r: r.external_id, "external_id", result)
    wanted = [rows[i].stripe_customer_id for i in last.values() if rows[i].stripe_customer_id]
    holders = {
        ("stripe_customer_id", h.stripe_customer_id): h.external_id
        for h in await conn.execute(
            text(
                "SELECT stripe_customer_id, external_id FROM customers"
                " WHERE stripe_customer_id = ANY(CAST(:s AS text[]))"
            ),
            {"s": wanted},
        )
    }
    refused = _stripe_refusals(rows, last, lambda r: r.external_id, holders, ("stripe_customer_id",), result)
    accepted = [(key, i) for key, i in _sorted(last) if i not in refused]
    if accepted:

        def params(chosen: list[CustomerIn]) -> dict[str, Any]:
            return {c: [getattr(r, c) for r in chosen] for c in ("external_id", *_CUSTOMER_COLUMNS)}

        items = [(i, rows[i]) for _, i in accepted]
        written, kept = await _write(conn, UPSERT_CUSTOMERS, items, params, lambda w: w.external_id, result)
        ids = await _ids_seen_late(conn, "customers", written)
        for index, item in kept:
            w = written[item.external_id]
            upserted.append((index, Upserted(item.external_id, ids[item.external_id], w.created, w.changed)))
    _finish(result, upserted)
    log.info("directory.customers", rows=len(rows), actor_set=bool(actor), **_counts(result))
    return result


# --------------------------------------------------------------------------- reading them back

READS = {
    "retailer": text(
        "SELECT id, external_id, name, phone, preferred_channel, timezone, locale, insights_opt_in, credit_status,"
        " created_at FROM retailers WHERE external_id = :e"
    ),
    "credit_account": text(
        "SELECT r.id AS retailer_id, r.external_id AS retailer_external_id, r.credit_status, r.paused_by,"
        " ca.credit_limit, ca.available_credit, ca.max_order_value, ca.max_outstanding_days, ca.payment_terms_days,"
        " ca.currency, ca.updated_at"
        " FROM retailers r JOIN credit_accounts ca ON ca.retailer_id = r.id WHERE r.external_id = :e"
    ),
    "order": text(
        "SELECT o.id, o.external_id, o.retailer_id, r.external_id AS retailer_external_id, o.total_amount AS amount,"
        " o.payment_mode, o.status, o.created_at AS placed_at"
        " FROM orders o JOIN retailers r ON r.id = o.retailer_id WHERE o.external_id = :e"
    ),
    "company": text(
        "SELECT id, name, timezone, reminder_offsets_days, channels, incentive_days, quiet_hours_start,"
        " quiet_hours_end, daily_nudge_cap, grace_period_days, created_at FROM companies WHERE id = :e"
    ),
    "member": text(
        "SELECT id, company_id, external_id, name, phone, timezone, preferred_channel, stripe_customer_id,"
        " stripe_subscription_id, status, current_period_end, created_at"
        " FROM memberships WHERE company_id = :c AND external_id = :e"
    ),
    "customer": text(
        "SELECT id, external_id, name, phone, earn_rate, loyalty_points, stripe_customer_id, created_at"
        " FROM customers WHERE external_id = :e"
    ),
}


async def read(conn: AsyncConnection, kind: str, external_id: str, *, company_id: str | None = None) -> dict | None:
    """One stored row as the directory answers it (`kind`: a key of `READS`), or None. A member is
    named by its company and its external id; a company by its slug."""
    row = (await conn.execute(READS[kind], {"e": external_id, "c": company_id})).first()
    return None if row is None else dict(row._mapping)


# --------------------------------------------------------------------------- after the commit

RECHECKS_IN_FLIGHT = 16


async def apply_effects(client: Client, engine: AsyncEngine, settings: Settings, effects: Effects) -> None:
    """Do what the committed rows ask: re-check the guardrails of each retailer whose new limits
    may lift a system pause or pause it now (`services.credit.recheck_guardrails`, answered once
    the changes are written, under the change's audit row: a repeat re-checks once).

    A re-check that cannot start (Temporal unreachable) is logged, not raised: the rows are
    committed, and the daily guardrails (11:00) look at every retailer anyway."""
    from services.credit import recheck_guardrails

    del engine  # part of the interface: effects that read rows after the commit take it
    lanes = asyncio.Semaphore(RECHECKS_IN_FLIGHT)

    async def recheck(item: GuardrailRecheck) -> None:
        async with lanes:
            try:
                await recheck_guardrails(client, settings, item.retailer_id, reference=item.reference)
            except Exception as error:  # noqa: BLE001 - the rows stand; the 11:00 run re-checks every retailer
                log.warning(
                    "directory.guardrails_recheck_failed",
                    retailer_id=item.retailer_id,
                    reference=item.reference,
                    error=type(error).__name__,
                )

    await asyncio.gather(*(recheck(item) for item in effects.guardrail_rechecks))


__all__ = [
    "BatchResult",
    "Effects",
    "GuardrailRecheck",
    "Refusal",
    "Upserted",
    "apply_effects",
    "upsert_companies",
    "upsert_credit_accounts",
    "upsert_customers",
    "upsert_members",
    "upsert_orders",
    "upsert_retailers",
    "read",
]
