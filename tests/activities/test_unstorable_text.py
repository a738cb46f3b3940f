"""The last line behind the doors (issue #33): an order failure whose reason PostgreSQL cannot
store fails its activity once, non-retryably and saying why, instead of 45 retries of the same
INSERT with the debit unreversed meanwhile; the order is left as it was."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.orders import OrderActivities
from schemas.orders import OrderFailure
from tests.activities.test_orders import new_order


async def test_an_unstorable_failure_reason_fails_at_once_and_changes_nothing(engine: AsyncEngine) -> None:
    order_id, _, _ = await new_order(engine)
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(
            OrderActivities(engine).handle_order_failure, OrderFailure(order_id=order_id, reason="lost\x00")
        )
    assert refused.value.type == "UnstorableText" and refused.value.non_retryable
    assert "NUL" in refused.value.message
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT status FROM orders WHERE id = :o"), {"o": order_id}) != "FAILED"
