"""The async SQLAlchemy engine the activities share (one pool per worker process)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast
from weakref import WeakKeyDictionary

import psycopg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine


def create_engine(database_url: str, *, pool_size: int = 20, pre_ping: bool = False) -> AsyncEngine:
    """An engine on psycopg 3 that keeps up to `pool_size` connections open.

    No overflow: SQLAlchemy closes an overflow connection as it comes back, so under a burst of
    sends (more in flight than the pool holds) the pool kept opening new ones, each a new
    PostgreSQL backend to fork and warm (docs/BENCHMARKS.md). A checkout beyond the pool waits
    for a connection instead.

    No ping before each use (`pre_ping`): it is a round trip on every checkout from the pool, a
    large share of a message send's database time. After a database restart the first
    statement on a stale connection fails instead, SQLAlchemy then drops every connection made
    before it, and the caller's retry runs on a fresh one: an activity's Temporal retry policy,
    or the API client's retry of its 503 (workers/api/problems.py)."""
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=pre_ping,
    )


def sessions(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


_AUTOCOMMIT: WeakKeyDictionary[AsyncEngine, AsyncEngine] = WeakKeyDictionary()


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """`engine` in AUTOCOMMIT, for paths of one statement: no BEGIN/COMMIT round trips.

    Made once per engine (an options view shares the engine's pool): building it is not free,
    and the API's hot paths ask for it on every request."""
    view = _AUTOCOMMIT.get(engine)
    if view is None:
        view = _AUTOCOMMIT[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return view


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[psycopg.AsyncConnection]:
    """psycopg's own `AsyncConnection`, checked out of `engine`'s pool (and given back with it).

    For constant statements on a hot path (a message send runs three): SQLAlchemy's execute
    and result handling cost more of the worker's CPU than psycopg's. Pass `autocommit(engine)`
    for single statements. The pool, its connections and their reset stay SQLAlchemy's: a
    connection the database dropped fails its statement here, and its reset on the way back
    fails too, so the pool discards it (tests/activities/test_messaging.py)."""
    async with engine.connect() as conn:
        yield await psycopg_connection(conn)


async def psycopg_connection(conn: AsyncConnection) -> psycopg.AsyncConnection:
    """psycopg's own `AsyncConnection` under `conn` (the same connection and transaction)."""
    # SQLAlchemy types `driver_connection` Optional[Any]: None only for a connection record
    # already invalidated, never for one checked out to `conn`; on this engine it is psycopg's.
    return cast(psycopg.AsyncConnection, (await conn.get_raw_connection()).driver_connection)


_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def psycopg_sql(sql: str) -> str:
    """`:name` placeholders (the form `text()` takes) as psycopg's `%(name)s`, so one SQL text
    serves both; a `::` cast is left alone."""
    return _NAMED.sub(r"%(\1)s", sql)
