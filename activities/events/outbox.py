"""The outbound events' outbox: an event is written in the transaction of the change it reports.

Credit, payment and order events are written by the database (`outbound_event_from_audit`, the
trigger of migration 0012) from the audit row every such change writes; the other families call
`emit` on the connection of their change's transaction. Either way one INSERT, and only when the
change happened: a unique `dedupe_key` makes a replayed change write nothing more.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.events import EVENT_TYPES

EMIT = text(
    "INSERT INTO outbound_events (type, object_type, object_id, company_id, payload, dedupe_key)"
    " VALUES (:type, :object_type, :object_id, :company, CAST(:payload AS jsonb), :dedupe)"
    " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
)


async def emit(
    conn: AsyncConnection,
    type: str,
    object_type: str,
    object_id: str | int,
    payload: dict[str, Any],
    *,
    dedupe_key: str,
    company_id: str | None = None,
) -> int | None:
    """Write one outbound event in the caller's transaction; its id, or None if `dedupe_key` was
    written before (the same change replayed). The payload holds ids and amounts, never names,
    phone numbers or free text."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown outbound event type {type!r}")
    return await conn.scalar(
        EMIT,
        {
            "type": type,
            "object_type": object_type,
            "object_id": str(object_id),
            "company": company_id,
            "payload": json.dumps(payload, default=str),
            "dedupe": f"{type}:{dedupe_key}",
        },
    )


def event_body(
    event_id: str,
    type: str,
    occurred_at: datetime,
    object_type: str,
    object_id: str,
    company_id: str | None,
    payload: dict[str, Any],
) -> bytes:
    """The JSON a subscriber receives (the bytes that are signed): `{id, type, created, object}`."""
    body: dict[str, Any] = {
        "id": event_id,
        "type": type,
        "created": int(occurred_at.timestamp()),
        "object": {"object": object_type, "id": object_id, **payload},
    }
    if company_id is not None:
        body["company_id"] = company_id
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str).encode()
