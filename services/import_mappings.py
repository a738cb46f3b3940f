"""How a file's columns become a kind's fields: one small declarative table per (mapping, kind).

`jobctl import KIND FILE --mapping NAME` reads each row through `MAPPINGS[(NAME, KIND)]`:
- `columns`: source column -> target field, with an optional converter (a `ValueError` from it
  refuses the row, naming the source column);
- `ignored`: columns the source exports that jobctl does not keep (a derived figure such as
  Prisma's `availableCredit`, a timestamp of the old system); any other column is a bad header,
  exit 2, so nothing in a file is dropped without being named here;
- `derive`: fields made from the row as a whole (a name from first and last names), and `skip`:
  rows that are not for jobctl (a churn case closed long ago), counted and said, never refused.

The `jobctl` mapping is the native shape: the column names are the fields of the kind's model
(`schemas.directory`, `schemas.imports`). The seeds' mappings read the exports of the systems
jobctl replaces (docs/ARCHITECTURE.md, "Importing"): seed 001's Prisma tables (camelCase), seed
003's churn tables and seed 004's loyalty customers (snake_case).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

Converter = Callable[[Any], Any]


@dataclass(frozen=True)
class Column:
    field: str
    convert: Converter | None = None


@dataclass(frozen=True)
class ImportMapping:
    name: str
    kind: str
    columns: Mapping[str, Column]
    ignored: frozenset[str] = frozenset()
    derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Fields computed from the whole source row (after the columns): {field: value}."""
    derived_from: frozenset[str] = frozenset()
    """Source columns `derive` reads (known columns, not fields of their own)."""
    skip: Callable[[dict[str, Any]], str | None] | None = None
    """Why a source row is not for jobctl (counted and reported as skipped), or None."""
    native: bool = False
    """The source columns are the fields themselves (the model decides what is known)."""

    @cached_property
    def known(self) -> frozenset[str]:
        """Every source column the mapping names (kept, left out, or read by `derive`)."""
        return frozenset(self.columns) | self.ignored | self.derived_from

    def source_column(self, target: str) -> str:
        """The column a field came from (for a refusal's `field`), the field itself if none."""
        for column, spec in self.columns.items():
            if spec.field == target:
                return column
        return target


# --------------------------------------------------------------------------- converters


def to_date(value: Any) -> date:
    """An ISO date, or the date of an ISO timestamp (Prisma exports `2026-11-01T00:00:00.000Z`)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10]) if len(text) > 10 else date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD): {text[:40]!r}") from None


def to_datetime(value: Any) -> datetime:
    text = str(value).strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {text[:40]!r}") from None


def to_decimal(value: Any) -> Decimal:
    """Money as exact decimals: `1234.5`, `"1,234.50"` (a spreadsheet's thousands separators)."""
    if isinstance(value, float):
        value = repr(value)
    try:
        return Decimal(str(value).replace(",", "").strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {str(value)[:40]!r}") from None


def upper(value: Any) -> str:
    return str(value).strip().upper()


def lower(value: Any) -> str:
    return str(value).strip().lower()


def _full_name(first: str, last: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def derive(row: dict[str, Any]) -> dict[str, Any]:
        name = " ".join(str(row[c]).strip() for c in (first, last) if row.get(c) not in (None, ""))
        return {"name": name} if name else {}

    return derive


def _open_cases_only(row: dict[str, Any]) -> str | None:
    status = str(row.get("status") or "OPEN").strip().upper()
    return None if status == "OPEN" else f"case {status.lower()}: only open cases are imported"


# --------------------------------------------------------------------------- the seeds' shapes

_PRISMA_TIMESTAMPS = frozenset({"createdAt", "updatedAt"})

SEED001_RETAILERS = ImportMapping(
    name="seed001",
    kind="retailers",
    columns={
        "id": Column("external_id"),
        "name": Column("name"),
        "phone": Column("phone"),
        "preferredChannel": Column("preferred_channel", lower),
        "timezone": Column("timezone"),
        "locale": Column("locale"),
    },
    # The credit status is jobctl's to derive: the guardrails pause past the limits again, and an
    # admin's pause or block is taken again with `jobctl credit pause|block` (audited, told).
    ignored=_PRISMA_TIMESTAMPS
    | {"email", "address", "ownerName", "creditStatus", "creditPausedAt", "creditPauseReason"},
)

SEED001_CREDIT_ACCOUNTS = ImportMapping(
    name="seed001",
    kind="credit_accounts",
    columns={
        "retailerId": Column("retailer_external_id"),
        "creditLimit": Column("credit_limit", to_decimal),
        "maxOrderValue": Column("max_order_value", to_decimal),
        "maxOutstandingDays": Column("max_outstanding_days"),
        "paymentTermsDays": Column("payment_terms_days"),
        "currency": Column("currency", upper),
    },
    # availableCredit is derived (limit minus what is owed), recomputed from the imported debits.
    ignored=_PRISMA_TIMESTAMPS | {"id", "availableCredit"},
)

SEED001_CREDIT_TRANSACTIONS = ImportMapping(
    name="seed001",
    kind="credit_transactions",
    columns={
        "id": Column("external_id"),
        "retailerId": Column("retailer_external_id"),
        "type": Column("type", upper),
        "amount": Column("amount", to_decimal),
        "dueDate": Column("due_date", to_date),
        "clearedAmount": Column("cleared_amount", to_decimal),
        "notes": Column("notes"),
    },
    # status follows from amount and clearedAmount; reminders restart on jobctl's cadence.
    ignored=_PRISMA_TIMESTAMPS
    | {"status", "clearedAt", "reminderSentAt", "reminderCount", "orderId", "reference", "createdBy"},
)

SEED001_ORDERS = ImportMapping(
    name="seed001",
    kind="orders",
    columns={
        "id": Column("external_id"),
        "retailerId": Column("retailer_external_id"),
        "status": Column("status", upper),
        "paymentMode": Column("payment_mode", upper),
        "totalAmount": Column("amount", to_decimal),
        "createdAt": Column("placed_at", to_datetime),
    },
    ignored=frozenset({"updatedAt", "failedAt", "failureReason", "orderNumber"}),
)

_SNAKE_TIMESTAMPS = frozenset({"created_at", "updated_at"})

SEED003_MEMBERSHIPS = ImportMapping(
    name="seed003",
    kind="memberships",
    columns={
        "id": Column("external_id"),
        "company_id": Column("company_id"),
        "name": Column("name"),
        "phone": Column("phone"),
        "timezone": Column("timezone"),
        "preferred_channel": Column("preferred_channel", lower),
        "status": Column("status", upper),
        "stripe_customer_id": Column("stripe_customer_id"),
        "stripe_subscription_id": Column("stripe_subscription_id"),
        "current_period_end": Column("current_period_end", to_datetime),
    },
    ignored=_SNAKE_TIMESTAMPS | {"user_id", "product_id", "whop_membership_id"},
)

SEED003_RECOVERY_CASES = ImportMapping(
    name="seed003",
    kind="recovery_cases",
    columns={
        "company_id": Column("company_id"),
        "membership_id": Column("member_external_id"),
        "trigger": Column("trigger", lower),
        "opened_at": Column("opened_at", to_datetime),
    },
    # The cadence (attempts, last nudge) restarts in jobctl; `status` picks the open cases.
    ignored=_SNAKE_TIMESTAMPS | {"id", "status", "attempts", "last_nudge_at", "incentive_applied_at", "closed_at"},
    skip=_open_cases_only,
)

SEED004_CUSTOMERS = ImportMapping(
    name="seed004",
    kind="customers",
    columns={"id": Column("external_id"), "phone": Column("phone")},
    # loyalty_points is the `loyalty_balances` kind's (the same file imports it: an opening ledger
    # row, so the balance stays the sum of the ledger); vendor and email are not kept.
    ignored=_SNAKE_TIMESTAMPS | {"vendor_id", "email", "loyalty_points"},
    derive=_full_name("first_name", "last_name"),
    derived_from=frozenset({"first_name", "last_name"}),
)

SEED004_LOYALTY_BALANCES = ImportMapping(
    name="seed004",
    kind="loyalty_balances",
    columns={"id": Column("customer_external_id"), "loyalty_points": Column("points")},
    ignored=_SNAKE_TIMESTAMPS | {"vendor_id", "email", "first_name", "last_name", "phone"},
)


def _native(kind: str) -> ImportMapping:
    return ImportMapping(name="jobctl", kind=kind, columns={}, native=True)


SEED_MAPPINGS: tuple[ImportMapping, ...] = (
    SEED001_RETAILERS,
    SEED001_CREDIT_ACCOUNTS,
    SEED001_CREDIT_TRANSACTIONS,
    SEED001_ORDERS,
    SEED003_MEMBERSHIPS,
    SEED003_RECOVERY_CASES,
    SEED004_CUSTOMERS,
    SEED004_LOYALTY_BALANCES,
)

MAPPING_NAMES = ("jobctl", "seed001", "seed003", "seed004")


@dataclass(frozen=True)
class UnknownMapping(Exception):
    mapping: str
    kind: str
    known: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        if self.mapping not in MAPPING_NAMES:
            return f"unknown mapping {self.mapping!r} (known: {', '.join(MAPPING_NAMES)})"
        return f"mapping {self.mapping} has no {self.kind} (it has: {', '.join(self.known)})"


def mapping(name: str, kind: str) -> ImportMapping:
    """The (mapping, kind) table; `UnknownMapping` if there is none."""
    if name == "jobctl":
        return _native(kind)
    for candidate in SEED_MAPPINGS:
        if candidate.name == name and candidate.kind == kind:
            return candidate
    raise UnknownMapping(name, kind, tuple(m.kind for m in SEED_MAPPINGS if m.name == name))
