"""`Idempotency-Key` on every POST, with Stripe's semantics, stored in PostgreSQL.

The first request with a key claims it (a row with no answer yet) and, once it succeeds, stores
its status and body; a retry with the same key and the same request gets that answer again
(`Idempotent-Replayed: true`) without running anything; the same key with another request is
422; a retry while the first is still running is 409. Keys are per API key. A request that
failed (any non-2xx) releases its key, so the retry runs again; a claim left by a crashed process
is taken over after IDEMPOTENCY_ABANDONED_SECONDS (5 minutes by default; set it just above your
clients' timeout). A key is kept IDEMPOTENCY_RETENTION_HOURS (at least 24, as Stripe keeps its
keys): an older row is taken over as new, and the retention job deletes it.

Running a handler again is safe even when its first run committed (the commit's acknowledgement
lost, the process killed before `_store`) because no handler's write depends on this table: every
POST is idempotent by its own business key, which the retry reproduces. Orders by order id,
payments by (retailer, reference), adjustments by a reference derived from the API key and this
header (`routes/credit.adjustment_reference`), admin changes by the change they make. The re-run
finds the ledger row and answers from it (`duplicate: true`), so this layer never has to guess
whether a failed attempt wrote anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Annotated, Any, cast

from fastapi import Depends, Header, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import IdempotentRequest
from workers.api import contract
from workers.api.auth import authenticate, bearer_key
from workers.api.limits import check_json_depth
from workers.api.problems import FieldError, Problem, problem_response, responses, unprocessable

HEADER = "Idempotency-Key"
# SQLAlchemy types a mapped class's `__table__` as any FromClause; a declarative class with a
# __tablename__ has a Table, which insert(), update() and delete() take.
_TABLE = cast(Table, IdempotentRequest.__table__)


async def idempotency_key_header(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            min_length=1,
            max_length=255,
            description="Retry-safe POST: the same key and body replays the first answer; another body is 422.",
        ),
    ] = None,
) -> str | None:
    """Declares the header in the OpenAPI document (the route class does the work)."""
    return idempotency_key


def request_hash(request: Request, body: bytes) -> str:
    """Method, path, query and the body's canonical JSON (its raw bytes when it is not JSON, or
    nests too deep for the parser: a hash never fails, whatever the body)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except (ValueError, RecursionError):
        canonical = body
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), request.url.query.encode(), canonical):
        digest.update(part + b"\0")
    return digest.hexdigest()


async def _claim(
    engine: AsyncEngine, key_id: int, key: str, digest: str, retention: timedelta, abandoned_after: timedelta
) -> Any:
    """None: claimed, run the request. Otherwise the row already holding this key.

    A claim with no answer older than `abandoned_after` was left by a request that never finished
    (its process killed): taken over, so a client's retry runs it again instead of 409 forever.

    A row older than `retention` is taken over as if absent: the key is new again (the retention
    job deletes such rows; until it runs they must not replay, or refuse, anything)."""
    table = _TABLE
    async with engine.begin() as conn:
        claimed = await conn.scalar(
            insert(table)
            .values(api_key_id=key_id, idempotency_key=key, request_hash=digest)
            .on_conflict_do_nothing()
            .returning(table.c.api_key_id)
        )
        if claimed is not None:
            return None
        taken_over = await conn.scalar(
            update(table)
            .where(
                table.c.api_key_id == key_id,
                table.c.idempotency_key == key,
                or_(
                    and_(table.c.status_code.is_(None), table.c.created_at < func.now() - abandoned_after),
                    table.c.created_at < func.now() - retention,
                ),
            )
            .values(request_hash=digest, created_at=func.now(), status_code=None, response_body=None)
            .returning(table.c.api_key_id)
        )
        if taken_over is not None:
            return None
        return (
            await conn.execute(select(table).where(table.c.api_key_id == key_id, table.c.idempotency_key == key))
        ).one()


async def _store(engine: AsyncEngine, key_id: int, key: str, response: Response) -> None:
    table = _TABLE
    async with engine.begin() as conn:
        await conn.execute(
            update(table)
            .where(table.c.api_key_id == key_id, table.c.idempotency_key == key)
            .values(
                status_code=response.status_code,
                response_body=json.loads(bytes(response.body)) if response.body else None,
            )
        )


async def _release(engine: AsyncEngine, key_id: int, key: str) -> None:
    table = _TABLE
    async with engine.begin() as conn:
        await conn.execute(delete(table).where(table.c.api_key_id == key_id, table.c.idempotency_key == key))


class IdempotentRoute(APIRoute):
    """The route class of every router: the caller's key is checked before the body is read (an
    anonymous or bad key is 401 without its body being read), a body's JSON depth is capped (400),
    and POSTs declare and honour `Idempotency-Key`."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # the OpenAPI conventions (workers/api/contract.py): a summary in words, the key's schemes
        # even on a route whose function names no scope (this class authenticates every request)
        if kwargs.get("summary") is None:
            kwargs["summary"] = contract.words(kwargs.get("operation_id") or contract.camel_case(endpoint.__name__))
        kwargs["openapi_extra"] = {"security": contract.SECURITY, **(kwargs.get("openapi_extra") or {})}
        if "POST" in (kwargs.get("methods") or ()):
            kwargs["dependencies"] = [*(kwargs.get("dependencies") or []), Depends(idempotency_key_header)]
            # a retry while the first request with its key runs is 409 on any POST (the route's own
            # 409, if it has one, says so too)
            kwargs["responses"] = {**responses(409), **(kwargs.get("responses") or {})}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        idempotent_post = "POST" in (self.methods or ())

        async def guarded(request: Request) -> Response:
            engine: AsyncEngine = request.app.state.engine
            secret = bearer_key(request)
            if not secret:
                return Problem(401, "an API key is required (Authorization: Bearer <key>)").response()
            caller = await authenticate(engine, secret)
            if caller is None:
                return Problem(401, "the API key is not valid (unknown or revoked)").response()
            request.state.principal = caller
            body = await request.body() if request.method in ("POST", "PUT", "PATCH") else b""
            check_json_depth(body)
            key = request.headers.get(HEADER)
            if not idempotent_post or key is None or not 1 <= len(key) <= 255:
                return await handler(request)  # a malformed key is the header dependency's 422
            retention = timedelta(hours=request.app.state.stack.settings.idempotency_retention_hours)
            digest = request_hash(request, body)
            abandoned = timedelta(seconds=request.app.state.stack.settings.idempotency_abandoned_seconds)
            held = await _claim(engine, caller.key_id, key, digest, retention, abandoned)
            if held is not None:
                if held.request_hash != digest:
                    return unprocessable(
                        [
                            FieldError(
                                field=f"header.{HEADER}",
                                message="this key was used with another request; use a new key",
                            )
                        ],
                        code="idempotency_key_reused",
                    )
                if held.status_code is None:
                    return problem_response(
                        409,
                        "a request with this Idempotency-Key is still being answered; retry shortly",
                        code="idempotency_key_in_use",
                    )
                return Response(
                    json.dumps(held.response_body).encode() if held.response_body is not None else b"",
                    status_code=held.status_code,
                    media_type="application/json",
                    headers={"Idempotent-Replayed": "true"},
                )
            try:
                response = await handler(request)
            except BaseException:
                await _release(engine, caller.key_id, key)
                raise
            if 200 <= response.status_code < 300:
                await _store(engine, caller.key_id, key, response)
            else:
                await _release(engine, caller.key_id, key)
            return response

        return guarded
