"""Signing in to the console through an identity provider (OIDC, issue #37), against the dev
provider (`devtools/oidc_provider.py`) on a free port and the real stack: a mapped user signs in,
is recorded and acts in their role, audited by name; every broken link of the flow (audience,
expiry, signature, nonce, state) is refused with no session and nothing recorded; an unmapped
group is a 403 page; a company admin's group binds their company."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest_asyncio
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings
from devtools.oidc_provider import OidcProvider, TestUser
from tests.activities.test_credit import new_retailer
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    api_settings,
    running_workers,
)
from tests.e2e.console_harness import PASSWORD, client_of, csrf_of, new_company, new_user
from workers.api.app import create_app

CLIENT_SECRET = "dev-client-secret"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def provider() -> AsyncIterator[OidcProvider]:
    async with OidcProvider(client_secret=CLIENT_SECRET) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def company(engine: AsyncEngine) -> str:
    return await new_company(engine)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def oidc_app(
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    api_settings: Settings,
    running_workers: None,
    provider: OidcProvider,
    company: str,
) -> AsyncIterator[FastAPI]:
    settings = api_settings.model_copy(
        update={
            "console_oidc_issuer": provider.issuer,
            "console_oidc_name": "Acme SSO",
            "console_oidc_client_id": provider.client_id,
            "console_oidc_client_secret": SecretStr(CLIENT_SECRET),
            "console_oidc_role_map": f"jobctl-finance=finance,jobctl-acme-admins=company_admin:{company}",
        }
    )
    app = create_app(settings, engine, dev_env.client)
    async with app.router.lifespan_context(app):
        yield app


def _user(*groups: str) -> TestUser:
    name = f"anna-{uuid.uuid4().hex[:8]}"
    return TestUser(sub=f"sub-{uuid.uuid4().hex}", preferred_username=name, email=None, groups=list(groups))


async def _through_provider(app: FastAPI, provider: OidcProvider, *, state: str | None = None) -> tuple[Any, Any]:
    """A browser's round trip: the console's start, the provider's authorize, back to the callback
    (with another `state` when given). The console's client (its cookie jar) and the callback's answer."""
    console = client_of(app)
    started = await console.get("/console/oidc/login", params={"next": "/console/credit"})
    assert started.status_code == 303, started.text
    async with httpx.AsyncClient() as browser:
        approved = await browser.get(started.headers["location"])
    assert approved.status_code == 302, approved.text
    back = urlsplit(approved.headers["location"])
    query = {k: v[0] for k, v in parse_qs(back.query).items()}
    if state is not None:
        query["state"] = state
    return console, await console.get(f"{back.path}?{urlencode(query)}")


async def _recorded(engine: AsyncEngine, user: TestUser, issuer: str) -> Any:
    async with engine.connect() as conn:
        found = text("SELECT username, role, company_id, password_hash FROM console_users WHERE external_id = :e")
        return (await conn.execute(found, {"e": f"oidc:{issuer}:{user.sub}"})).first()


async def test_a_finance_user_signs_in_through_the_provider_acts_as_finance_and_is_audited_by_name(
    oidc_app: FastAPI, engine: AsyncEngine, provider: OidcProvider
) -> None:
    async with client_of(oidc_app) as anonymous:
        page = await anonymous.get("/console/login")
    assert "Sign in with Acme SSO" in page.text and 'name="password"' in page.text  # local sign-in stays
    provider.user = _user("jobctl-finance", "everyone")
    console, signed = await _through_provider(oidc_app, provider)
    assert signed.status_code == 303 and signed.headers["location"] == "/console/credit", signed.text
    assert "jobctl_console_oidc=" in signed.headers["set-cookie"]  # the one-use flow cookie is dropped
    row = await _recorded(engine, provider.user, provider.issuer)
    assert row.username == provider.user.preferred_username and row.role == "finance" and row.password_hash is None

    retailer_id, _ = await new_retailer(engine, limit=Decimal("1000"))
    retailer = f"/console/credit/retailers/{retailer_id}"
    shown = await console.get(retailer)
    assert shown.status_code == 200 and f"{row.username} · Finance" in shown.text
    changed = await console.post(
        f"{retailer}/limits", data={"credit_limit": "2500", "reason": "on time", "csrf": csrf_of(shown)}
    )
    assert changed.status_code == 303
    async with engine.connect() as conn:
        actors = await conn.scalars(
            text("SELECT performed_by FROM audit_log WHERE retailer_id = :r AND performed_by <> 'system'"),
            {"r": retailer_id},
        )
        assert set(actors) == {f"console:{row.username}"}

    # A second sign-in finds the same user (no second row), with the role the groups give now.
    await console.aclose()
    provider.user.groups = ["jobctl-acme-admins"]
    again, signed_again = await _through_provider(oidc_app, provider)
    assert signed_again.status_code == 303
    assert (await _recorded(engine, provider.user, provider.issuer)).role == "company_admin"
    assert (await again.get("/console/credit")).status_code == 403
    await again.aclose()


async def test_a_token_or_flow_not_this_sign_ins_is_refused_with_no_session_and_nothing_recorded(
    oidc_app: FastAPI, engine: AsyncEngine, provider: OidcProvider
) -> None:
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"aud": "another-client"}, None),
        ({"exp": int(time.time()) - 600}, None),
        ({"sign_with_other_key": True}, None),
        ({"nonce": "a-nonce-of-another-sign-in"}, None),
        ({}, "a-state-of-another-browser"),
    ]
    try:
        for tamper, state in cases:
            provider.user, provider.tamper = _user("jobctl-finance"), tamper
            console, answer = await _through_provider(oidc_app, provider, state=state)
            assert answer.status_code == 401 and "you are not signed in" in answer.text, (tamper, state)
            assert (await console.get("/console/credit")).status_code == 303, (tamper, state)  # to sign-in
            assert await _recorded(engine, provider.user, provider.issuer) is None, (tamper, state)
            await console.aclose()
    finally:
        provider.tamper = {}


async def test_a_user_in_no_mapped_group_gets_a_403_page_and_nothing_is_recorded(
    oidc_app: FastAPI, engine: AsyncEngine, provider: OidcProvider
) -> None:
    provider.user = _user("everyone", "jobctl-finance-readers")
    console, answer = await _through_provider(oidc_app, provider)
    assert answer.status_code == 403 and "none of your groups" in answer.text
    assert (await console.get("/console")).status_code == 303
    assert await _recorded(engine, provider.user, provider.issuer) is None
    await console.aclose()


async def test_a_company_admins_group_binds_their_company(
    oidc_app: FastAPI, engine: AsyncEngine, provider: OidcProvider, company: str
) -> None:
    provider.user = _user("jobctl-acme-admins")
    console, answer = await _through_provider(oidc_app, provider)
    assert answer.status_code == 303
    row = await _recorded(engine, provider.user, provider.issuer)
    assert row.role == "company_admin" and row.company_id == company
    home = await console.get("/console")
    assert home.status_code == 200 and "Company admin" in home.text
    await console.aclose()


async def test_with_local_sign_in_off_a_password_signs_nobody_in(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, oidc_app: FastAPI
) -> None:
    settings = oidc_app.state.stack.settings.model_copy(update={"console_local_login": False})
    app = create_app(settings, engine, dev_env.client)
    username = await new_user(engine, "finance")
    async with app.router.lifespan_context(app), client_of(app) as console:
        page = await console.get("/console/login")
        assert "Sign in with Acme SSO" in page.text and 'name="password"' not in page.text
        answer = await console.post("/console/login", data={"username": username, "password": PASSWORD})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
        assert (await console.get("/console")).status_code == 303  # still nobody


async def test_a_provider_user_named_as_a_local_user_is_refused_and_does_not_become_them(
    oidc_app: FastAPI, engine: AsyncEngine, provider: OidcProvider
) -> None:
    local = await new_user(engine, "operator")
    provider.user = TestUser(sub=f"sub-{uuid.uuid4().hex}", preferred_username=local, groups=["jobctl-finance"])
    console, answer = await _through_provider(oidc_app, provider)
    assert answer.status_code == 403 and "another console user" in answer.text
    assert (await console.get("/console")).status_code == 303
    assert await _recorded(engine, provider.user, provider.issuer) is None
    await console.aclose()
