"""API keys: who calls, what they may do (scopes), and which tenant they are confined to.

A key is `jk_<random>`; only its SHA-256 is stored (a key is 32 random bytes, so a fast hash
is enough: there is nothing to brute-force). A request names its key as `Authorization: Bearer
<key>` (or `X-API-Key`). The key's name is the actor in every audit row the request writes; HTTP
callers never type an actor. A key bound to a company sees that company's churn data only, and
is told 403 for anything else whether or not it exists.

Only churn's data and the directory's companies and members carry a company (retailers, orders,
loyalty items, insights have none; the messaging brake is every company's), so a bound key may
hold churn, directory and events scopes only: any other is refused when the key is created, and refused
again at every route (a key created before this rule, or written to the table by hand, must not
read every retailer's credit). A directory scope reaches only the routes that declare company
data (`require(..., company_data=True)`: its own company and members); on retailers, orders and
customers a bound key is 403 even with `directory:*`. The events scopes reach its company's
(churn) events and subscriptions only.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.database import autocommit
from schemas.errors import Refused
from schemas.tables import ApiKey
from workers.api.problems import Problem
from workers.families import api_scopes

SCOPES = api_scopes()
"""Every family's scopes (declared in its registry module): scope -> what it allows."""
KEY_PREFIX = "jk_"

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="the API key, as an alternative to Bearer"
)


class ApiKeyRefused(Refused):
    """An API key command that cannot apply (a name in use, an unknown scope or key)."""


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    scopes: frozenset[str]
    company_id: str | None

    def may_see_company(self, company_id: str | None) -> bool:
        return self.company_id is None or company_id == self.company_id

    def confine(self, company_id: str | None) -> None:
        """403 unless this key may act on `company_id` (None: an object that does not exist)."""
        if not self.may_see_company(company_id):
            raise Problem(403, f"key {self.name} is confined to company {self.company_id}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_scopes(text: str) -> list[str]:
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ApiKeyRefused(f"unknown scope(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SCOPES)}")
    return scopes


COMPANY_SCOPED_FAMILIES = frozenset({"churn", "directory", "events"})
"""The families with rows that carry a company_id: a bound key may hold their scopes."""
EVERY_ROUTE_COMPANY_DATA = frozenset({"churn", "events"})
"""The families whose every route confines a bound key to its company (churn's data all has one;
the events routes filter events and subscriptions by the key's company).
The directory's do so only where they say so (`require(..., company_data=True)`)."""


def company_scoped(scope: str) -> bool:
    return scope.split(":", 1)[0] in COMPANY_SCOPED_FAMILIES


def check_company_scopes(scopes: list[str], company_id: str | None) -> None:
    """A key bound to a company may hold only scopes whose data has a company."""
    unscoped = [s for s in scopes if not company_scoped(s)]
    if company_id is not None and unscoped:
        raise ApiKeyRefused(
            f"scope(s) {', '.join(unscoped)} cannot be confined to a company (their data has none);"
            f" a key bound to a company may hold only {', '.join(s for s in SCOPES if company_scoped(s))}"
        )


async def create_key(
    engine: AsyncEngine, name: str, scopes: list[str], company_id: str | None = None
) -> tuple[str, int]:
    """A new key (returned once, never stored) and its id."""
    check_company_scopes(scopes, company_id)
    key = new_key()
    async with engine.begin() as conn:
        if await conn.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
            raise ApiKeyRefused(f"an API key named {name} exists already (revoke it, or choose another name)")
        if company_id is not None:
            from schemas.tables import Company

            if await conn.scalar(select(Company.id).where(Company.id == company_id)) is None:
                raise ApiKeyRefused(f"no company {company_id}")
        key_id = await conn.scalar(
            insert(ApiKey)
            .values(
                name=name,
                key_hash=hash_key(key),
                prefix=key[: len(KEY_PREFIX) + 6],
                scopes=scopes,
                company_id=company_id,
            )
            .returning(ApiKey.id)
        )
    return key, key_id  # type: ignore[return-value]


async def list_keys(engine: AsyncEngine) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(ApiKey).order_by(ApiKey.id))).all()
    return [
        {
            "id": r.id,
            "name": r.name,
            "prefix": r.prefix,
            "scopes": list(r.scopes),
            "company_id": r.company_id,
            "created_at": r.created_at,
            "last_used_at": r.last_used_at,
            "revoked_at": r.revoked_at,
        }
        for r in rows
    ]


async def revoke_key(engine: AsyncEngine, name: str) -> None:
    async with engine.begin() as conn:
        revoked = await conn.scalar(
            update(ApiKey)
            .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .returning(ApiKey.id)
        )
    if revoked is None:
        raise ApiKeyRefused(f"no active API key named {name}")


TOUCH_EVERY = timedelta(minutes=1)

# `last_used_at` is for people ("is this key still used?"), to the minute. Writing it on every
# request made every request of one key queue on that key's row lock: a shop backend's 50
# concurrent calls went through one at a time. Now a request reads the key (no lock) and at most
# one a minute touches it, skipping the row if another request is touching it right now.
TOUCH_SQL = text(
    """
UPDATE api_keys SET last_used_at = now()
WHERE id = (SELECT id FROM api_keys WHERE id = :id FOR UPDATE SKIP LOCKED)
"""
)


KEY_SQL = text(
    "SELECT id, name, scopes, company_id, last_used_at FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL"
)


async def authenticate(engine: AsyncEngine, key: str) -> Principal | None:
    async with autocommit(engine).connect() as conn:
        row = (await conn.execute(KEY_SQL, {"key_hash": hash_key(key)})).first()
        if row is None:
            return None
        if row.last_used_at is None or row.last_used_at < datetime.now(UTC) - TOUCH_EVERY:
            await conn.execute(TOUCH_SQL, {"id": row.id})
    return Principal(row.id, row.name, frozenset(row.scopes), row.company_id)


def bearer_key(request: Request) -> str | None:
    """The key a request carries (Bearer, else X-API-Key), before any lookup."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key") or None


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    header_key: Annotated[str | None, Security(api_key_header)],
) -> Principal:
    known = getattr(request.state, "principal", None)
    if known is not None:  # looked up already (the idempotency layer did)
        return known
    key = credentials.credentials if credentials else header_key
    if not key:
        raise Problem(401, "an API key is required (Authorization: Bearer <key>)")
    found = await authenticate(request.app.state.engine, key)
    if found is None:
        raise Problem(401, "the API key is not valid (unknown or revoked)")
    request.state.principal = found
    return found


def require(scope: str, *, company_data: bool = False) -> Any:  # FastAPI types Depends() Any
    """A route's dependency: the caller, if their key carries `scope` (else 403). A key bound to a
    company passes only where the route's data has a company (churn's routes; a directory route
    that says `company_data=True`), which the route then confines it to (`Principal.confine`)."""
    assert scope in SCOPES, scope
    family = scope.split(":", 1)[0]
    bound_keys_pass = company_scoped(scope) and (company_data or family in EVERY_ROUTE_COMPANY_DATA)

    async def check(caller: Annotated[Principal, Depends(principal)]) -> Principal:
        if scope not in caller.scopes:
            raise Problem(403, f"key {caller.name} lacks the scope {scope}")
        if caller.company_id is not None and not bound_keys_pass:
            raise Problem(
                403, f"key {caller.name} is confined to company {caller.company_id}; this route's data has none"
            )
        return caller

    return Depends(check)
