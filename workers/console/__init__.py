"""The business console (issue #37): server-rendered pages at `/console` for the people whose work
the jobs do (finance admins first), served by the API process. Pages call the same service
functions as the API routes and the CLI; users, roles and sessions are the console's own
(`users`, `session`). `mount` adds it to the API's app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def mount(app: FastAPI) -> None:
    """`/console` and its one stylesheet (`/console/static/`), left out of the OpenAPI document."""
    from workers.api.limits import RateLimiter
    from workers.console import loyalty, oidc, ops
    from workers.console.churn import router as churn_router
    from workers.console.pages import SIGN_IN_PER_ADDRESS, SIGN_IN_PER_USERNAME, router

    # Sign-in attempts, in this process: a burst of 5 per username then one every 12 s (a password
    # guesser gets 5 a minute), and 30 a minute per client address across usernames.
    app.state.console_sign_in = (RateLimiter(SIGN_IN_PER_USERNAME), RateLimiter(SIGN_IN_PER_ADDRESS))
    app.include_router(router)
    app.include_router(oidc.router)  # sign-in through the company's identity provider, when configured
    app.include_router(loyalty.router)  # Loyalty: an item, resolve and retry, a customer's ledger
    app.include_router(ops.router)  # Messaging and jobs
    app.include_router(churn_router)
    app.mount("/console/static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static")
