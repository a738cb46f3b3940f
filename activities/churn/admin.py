"""Churn cases and company settings as operators read and change them (the HTTP API, `jobctl churn`).

Every query takes the company it is scoped to (None: an operator who sees all companies).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.churn import CompanySettings

CASE_COLUMNS = (
    "id AS case_id, company_id, membership_id, status, trigger, attempts, opened_at, closed_at, last_nudge_at,"
    " incentive_applied_at"
)
SETTINGS = tuple(CompanySettings.model_fields)


async def list_cases(
    engine: AsyncEngine,
    *,
    company_id: str | None = None,
    status: str | None = None,
    membership_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Cases, newest first, filtered by company, status and member (each optional)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT {CASE_COLUMNS} FROM recovery_cases"
                " WHERE (CAST(:c AS text) IS NULL OR company_id = :c) AND (CAST(:s AS text) IS NULL OR status = :s)"
                " AND (CAST(:m AS bigint) IS NULL OR membership_id = :m) ORDER BY id DESC LIMIT :limit OFFSET :offset"
            ),
            {"c": company_id, "s": status, "m": membership_id, "limit": limit, "offset": offset},
        )
        return [dict(r._mapping) for r in rows]


async def get_case(engine: AsyncEngine, case_id: int) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text(f"SELECT {CASE_COLUMNS} FROM recovery_cases WHERE id = :i"), {"i": case_id})
        ).first()
    return dict(row._mapping) if row else None


async def case_actions(engine: AsyncEngine, case_id: int, company_id: str) -> list[dict[str, Any]]:
    """The case's recovery actions in order (actors hashed, never message text)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, type, actor_type, actor_id_hash, metadata, created_at FROM recovery_actions"
                " WHERE case_id = :i AND company_id = :c ORDER BY id"
            ),
            {"i": case_id, "c": company_id},
        )
        return [dict(r._mapping) for r in rows]


async def company_settings(engine: AsyncEngine, company_id: str) -> CompanySettings | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text(f"SELECT {', '.join(SETTINGS)} FROM companies WHERE id = :c"), {"c": company_id})
        ).first()
    return CompanySettings.model_validate(dict(row._mapping)) if row else None


async def incentive_days(engine: AsyncEngine, company_id: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(text("SELECT incentive_days FROM companies WHERE id = :c"), {"c": company_id}) or 0
        )
