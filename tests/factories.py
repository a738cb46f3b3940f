"""Test data builders shared by several test modules."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def sms_retailers(engine: AsyncEngine, count: int, *, area_code: str) -> list[int]:
    """`count` retailers who prefer SMS, with distinct numbers +1{area_code}0000001, ..."""
    async with engine.begin() as conn:
        return list(
            (
                await conn.execute(
                    text(
                        "INSERT INTO retailers (name, phone, preferred_channel)"
                        " SELECT 'Retailer ' || g, '+1' || :area || lpad(g::text, 7, '0'), 'sms'"
                        " FROM generate_series(1, :n) g RETURNING id"
                    ),
                    {"n": count, "area": area_code},
                )
            ).scalars()
        )
