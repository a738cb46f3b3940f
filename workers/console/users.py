"""The console's users and what each role may do (issue #37).

A user signs in with a username and password; only the argon2id hash is stored (`argon2-cffi`'s
defaults, RFC 9106's second recommended profile). `jobctl console-user add` and the demo seed call
`add_user`; the sign-in page calls `authenticate`. The username is the actor in every audit row a
console action writes, as `console:{username}`.

A user may instead sign in through the company's identity provider (`oidc.py`): `oidc_user`
records them here on each sign-in, found by their identity at the provider, with no password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.errors import Refused
from schemas.tables import ConsoleUser

Role = Literal["finance", "support", "company_admin", "operator", "read_only"]
ROLES: tuple[Role, ...] = get_args(Role)

# What each role may do, in the API's scope names: the console checks the same words the API keys hold.
PERMISSIONS: dict[str, frozenset[str]] = {
    "finance": frozenset({"credit:read", "credit:write", "loyalty:read"}),
    "support": frozenset({"credit:read", "loyalty:read", "loyalty:write"}),
    "company_admin": frozenset({"churn:read", "churn:write"}),  # its company's only
    "operator": frozenset(
        {"credit:read", "loyalty:read", "messaging:read", "messaging:write", "churn:read", "churn:write"}
    ),
    "read_only": frozenset({"credit:read", "loyalty:read", "messaging:read", "churn:read"}),
}
ROLE_NAMES = {
    "finance": "Finance",
    "support": "Support",
    "company_admin": "Company admin",
    "operator": "Operator",
    "read_only": "Read-only",
}

USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,63}$")
MIN_PASSWORD = 12
_hasher = PasswordHasher()
# Verified against when the username is unknown, so a wrong name costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-password-of-anyone")


class UserRefused(Refused):
    """A user that cannot be added as asked (its message says why)."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    company_id: str | None

    @property
    def actor(self) -> str:
        """The audit log's `performed_by` for this user's actions."""
        return f"console:{self.username}"

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


async def add_user(engine: AsyncEngine, username: str, password: str, role: str, company_id: str | None = None) -> User:
    """A new user; `UserRefused` for a bad name, a short password, an unknown role, a company
    admin without a company (or another role with one), or a name taken."""
    if not USERNAME.fullmatch(username):
        raise UserRefused("username: 2-64 characters, lower-case letters, digits, '.', '_' or '-'")
    if len(password) < MIN_PASSWORD:
        raise UserRefused(f"password: at least {MIN_PASSWORD} characters")
    if role not in ROLES:
        raise UserRefused(f"role: one of {', '.join(ROLES)}")
    if (role == "company_admin") != (company_id is not None):
        raise UserRefused("company: required for a company_admin, and only for one")
    try:
        async with engine.begin() as conn:
            user_id = await conn.scalar(
                insert(ConsoleUser)
                .values(username=username, password_hash=_hasher.hash(password), role=role, company_id=company_id)
                .returning(ConsoleUser.id)
            )
    except IntegrityError as error:
        taken = f"username {username!r} is taken"
        raise UserRefused(taken + (f", or company {company_id!r} does not exist" if company_id else "")) from error
    assert user_id is not None
    return User(user_id, username, role, company_id)


async def authenticate(engine: AsyncEngine, username: str, password: str) -> User | None:
    """The user whose username and password these are (and not disabled), else None."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(ConsoleUser.id, ConsoleUser.password_hash, ConsoleUser.role, ConsoleUser.company_id).where(
                    ConsoleUser.username == username, ConsoleUser.disabled_at.is_(None)
                )
            )
        ).first()
    try:
        _hasher.verify(row.password_hash if row and row.password_hash else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.password_hash is None:  # an OIDC user has no password here
        return None
    async with engine.begin() as conn:
        signed_in = update(ConsoleUser).where(ConsoleUser.id == row.id).values(last_sign_in_at=datetime.now(UTC))
        await conn.execute(signed_in)
    return User(row.id, username, row.role, row.company_id)


async def load_user(engine: AsyncEngine, user_id: int) -> User | None:
    """A signed-in session's user, unless disabled or removed since."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(ConsoleUser.username, ConsoleUser.role, ConsoleUser.company_id).where(
                    ConsoleUser.id == user_id, ConsoleUser.disabled_at.is_(None)
                )
            )
        ).first()
    return User(user_id, row.username, row.role, row.company_id) if row else None


OIDC_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.@+-]{1,55}$")
"""An OIDC user's name (the provider's preferred_username or e-mail, lower-cased): `console:{name}`
fits the 64 characters every audit column allows."""


async def oidc_user(engine: AsyncEngine, external_id: str, username: str, role: str, company_id: str | None) -> User:
    """The user signing in through OIDC as `external_id` (`oidc:{issuer}:{sub}`), recorded or updated
    with the role and company the provider's groups give now; `UserRefused` when the name is not
    usable, is another user's (a local user's name is never taken over), the user is disabled, or
    the company does not exist. The first sign-in's name stays the user's (the audit's actor)."""
    if not OIDC_USERNAME.fullmatch(username):
        raise UserRefused("the provider's username (preferred_username or email) is not one the console can use")
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            row = (
                await conn.execute(
                    select(ConsoleUser.id, ConsoleUser.username, ConsoleUser.disabled_at)
                    .where(ConsoleUser.external_id == external_id)
                    .with_for_update()
                )
            ).first()
            if row is not None:
                if row.disabled_at is not None:
                    raise UserRefused("this user is disabled in the console")
                await conn.execute(
                    update(ConsoleUser)
                    .where(ConsoleUser.id == row.id)
                    .values(role=role, company_id=company_id, last_sign_in_at=now)
                )
                return User(row.id, row.username, role, company_id)
            user_id = await conn.scalar(
                insert(ConsoleUser)
                .values(
                    username=username, external_id=external_id, role=role, company_id=company_id, last_sign_in_at=now
                )
                .returning(ConsoleUser.id)
            )
    except IntegrityError as error:
        raise UserRefused(
            f"the username {username!r} is another console user's"
            + (f", or the company {company_id!r} does not exist" if company_id else "")
        ) from error
    assert user_id is not None
    return User(user_id, username, role, company_id)
