"""The business console against the real stack (the API harness's): a user per role, signed in
through the sign-in form by a client of its own (its own cookie jar), and the CSRF token a page's
forms carry."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings
from workers.api.app import create_app
from workers.console.users import add_user

PASSWORD = "correct horse battery"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def console_app(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, api_settings: Settings, running_workers: None
) -> AsyncIterator[FastAPI]:
    app = create_app(api_settings, engine, dev_env.client)
    async with app.router.lifespan_context(app):
        yield app


def client_of(app: FastAPI, base_url: str = "http://api") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url, timeout=60)


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


async def new_user(engine: AsyncEngine, role: str, company: str | None = None) -> str:
    username = f"{role.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    await add_user(engine, username, PASSWORD, role, company)
    return username


async def new_company(engine: AsyncEngine) -> str:
    company = f"co-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO companies (id, name) VALUES (:c, 'Test Co')"), {"c": company})
    return company


async def signed_in(
    app: FastAPI, engine: AsyncEngine, role: str, company: str | None = None
) -> tuple[httpx.AsyncClient, str]:
    """A client signed in as a new user with `role`, and the user's name."""
    client = client_of(app)
    username = await new_user(engine, role, company)
    form = await client.get("/console/login")
    answer = await client.post(
        "/console/login", data={"username": username, "password": PASSWORD, "csrf": csrf_of(form), "next": "/console"}
    )
    assert answer.status_code == 303, answer.text
    return client, username
