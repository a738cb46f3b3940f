"""schemathesis against `/openapi.json` of a real `jobctl api` server (uvicorn on its own loop,
its own engine and Temporal client) over every operation, with a key holding every scope:
no server error, and every response (status, content type, headers, body) as documented."""

from __future__ import annotations

import asyncio
import os

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.api_harness import api_settings, new_key, running_workers, server  # noqa: F401 - pytest fixtures, taken as test arguments

CASES_PER_OPERATION = 12 * max(1, int(os.environ.get("FUZZ_SCALE", "1")))  # `make fuzz` raises it
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


async def test_every_operation_answers_as_documented(server: str, engine: AsyncEngine) -> None:
    headers = await new_key(engine)
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 28
    ran: dict[str, int] = {}

    def run_all() -> None:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=CASES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case) -> None:  # type: ignore[no-untyped-def]
                ran[operation.label] = ran.get(operation.label, 0) + 1  # noqa: B023 - called in the same iteration
                case.call_and_validate(base_url=server, headers=headers, checks=CHECKS, timeout=30)

            check()

    await asyncio.to_thread(run_all)
    total = sum(ran.values())
    print(f"\nschemathesis: {total} cases over {len(ran)} operations")
    assert len(ran) == len(operations) and total >= len(operations) * 3
    async with httpx.AsyncClient() as client:  # the server survived all of it
        assert (await client.get(f"{server}/readyz")).status_code == 200
