"""Signing in to the console through the company's identity provider (OpenID Connect), an option
beside local users (issue #37): on when CONSOLE_OIDC_ISSUER is set.

The authorization-code flow with PKCE (S256), `state` and `nonce`:

1. `GET /console/oidc/login` sends the browser to the provider's `authorization_endpoint` (from
   `{issuer}/.well-known/openid-configuration`) with a fresh state, nonce and code challenge; the
   three (and where to go afterwards) ride in a short-lived signed pre-session cookie
   (`jobctl_console_oidc`, HttpOnly, SameSite=Lax, path `/console/oidc`, 10 minutes).
2. `GET /console/oidc/callback` checks the returned `state` against that cookie (and drops it: a
   flow is used once), exchanges the code at the `token_endpoint` with the code verifier (and the
   client secret, if any), and verifies the ID token with the codec server's `OidcVerifier`
   (signature from the issuer's JWKS, `iss`, `aud` = the client id, `exp`), then its `nonce`.
3. The user's role comes from the roles claim (CONSOLE_OIDC_ROLES_CLAIM) through
   CONSOLE_OIDC_ROLE_MAP; no mapped group is a 403 page and nothing is recorded. Otherwise the user
   is recorded (`users.oidc_user`, by `oidc:{issuer}:{sub}`) and signed in like a local user: their
   actions are audited as `console:{preferred_username or email}`.

Anything refused ends on a page saying what to do, with no session; why is logged (never a token,
a name or an address).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from config.settings import Settings, parse_role_map
from workers.codec_server import OidcVerifier, TokenRefused
from workers.console import users
from workers.console.pages import _next, _session, redirect, render
from workers.console.session import secret_of

log = structlog.get_logger(__name__)

FLOW_COOKIE = "jobctl_console_oidc"
FLOW_SECONDS = 600
"""A sign-in at the provider must come back within this long."""
DISCOVERY_TTL_SECONDS = 3600.0
SCOPES = "openid profile email"
router = APIRouter(prefix="/console/oidc", include_in_schema=False)


class SignInRefused(Exception):
    """A sign-in through the provider that is refused: `reason` for the log, `message` for the page."""

    def __init__(self, reason: str, message: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in, and what the console makes of them."""

    external_id: str
    username: str
    role: str
    company_id: str | None


def role_of(settings: Settings, groups: object) -> tuple[str, str | None] | None:
    """The role (and company) of the first CONSOLE_OIDC_ROLE_MAP group the user is in, else None."""
    if isinstance(groups, str):
        groups = groups.split()
    if not isinstance(groups, list):
        return None
    held = {g for g in groups if isinstance(g, str)}
    for group, target in parse_role_map(settings.console_oidc_role_map or "").items():
        if group in held:
            return target
    return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Provider:
    """The configured issuer: its discovery document (cached), its token endpoint, its ID tokens."""

    def __init__(self, settings: Settings) -> None:
        assert settings.console_oidc_issuer and settings.console_oidc_client_id
        self.settings = settings
        self.issuer = settings.console_oidc_issuer
        self.client_id = settings.console_oidc_client_id
        self.verifier = OidcVerifier(self.issuer, self.client_id)
        self._metadata: dict[str, Any] | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def metadata(self) -> dict[str, Any]:
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._fetched_at > DISCOVERY_TTL_SECONDS:
                url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
                try:
                    async with (
                        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                        http.get(url) as answer,
                    ):
                        answer.raise_for_status()
                        document = await answer.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    raise _unavailable(f"discovery: {type(exc).__name__}") from None
                missing = [k for k in ("authorization_endpoint", "token_endpoint") if not document.get(k)]
                if document.get("issuer") != self.issuer or missing:
                    raise _unavailable("discovery: another issuer, or no authorization or token endpoint")
                self._metadata, self._fetched_at = document, time.monotonic()
            return self._metadata

    async def exchange(self, code: str, redirect_uri: str, code_verifier: str) -> str:
        """The ID token the token endpoint gives for `code`."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
            "client_id": self.client_id,
        }
        headers = {"Accept": "application/json"}
        secret = self.settings.console_oidc_client_secret
        if secret is not None and secret.get_secret_value():
            # client_secret_basic unless the provider lists only client_secret_post (RFC 6749 2.3.1:
            # both halves form-encoded before base64)
            methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            if "client_secret_basic" in methods:
                pair = f"{quote_plus(self.client_id)}:{quote_plus(secret.get_secret_value())}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            else:
                form["client_secret"] = secret.get_secret_value()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                http.post(metadata["token_endpoint"], data=form, headers=headers) as answer,
            ):
                body = await answer.json(content_type=None)
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _unavailable(f"token endpoint: {type(exc).__name__}") from None
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            error = body.get("error") if isinstance(body, dict) else None
            raise SignInRefused(f"token endpoint answered {status} {error or ''}".strip(), _START_AGAIN)
        return body["id_token"]

    async def identity(self, id_token: str, nonce: str) -> Identity:
        """Who the ID token names (verified), and their role; SignInRefused otherwise."""
        try:
            claims = await self.verifier.verify(id_token)
        except TokenRefused as exc:
            raise SignInRefused(f"id token: {exc}", _START_AGAIN) from None
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(claims["nonce"], nonce):
            raise SignInRefused("id token: not this sign-in's nonce", _START_AGAIN)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise SignInRefused("id token: no sub", _START_AGAIN)
        mapped = role_of(self.settings, claims.get(self.settings.console_oidc_roles_claim))
        if mapped is None:
            raise SignInRefused(
                "no mapped group",
                "You signed in, but none of your groups at the provider gives a role in the console: nothing"
                " was recorded. Ask whoever runs the console to add you to one of its groups.",
                status=403,
            )
        name = claims.get("preferred_username") or claims.get("email")
        username = name.strip().lower() if isinstance(name, str) else ""
        return Identity(f"oidc:{self.issuer}:{subject}", username, *mapped)


_START_AGAIN = "The sign-in could not be completed, and you are not signed in. Start again from the sign-in page."


def _unavailable(reason: str) -> SignInRefused:
    return SignInRefused(reason, "The sign-in provider did not answer. Try again in a minute.", status=503)


def provider_of(request: Request) -> Provider | None:
    """The app's provider (made on first use), or None when OIDC is off."""
    settings: Settings = request.app.state.stack.settings
    if not settings.console_oidc_issuer:
        return None
    provider = getattr(request.app.state, "console_oidc", None)
    if provider is None:
        provider = request.app.state.console_oidc = Provider(settings)
    return provider


def _flow_serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_of(settings), salt="jobctl-console-oidc-flow")


def _redirect_uri(request: Request, settings: Settings) -> str:
    base = settings.public_base_url or str(request.base_url)
    return f"{base.rstrip('/')}/console/oidc/callback"


def _refused(request: Request, refusal: SignInRefused) -> Response:
    log.info("console.oidc_refused", reason=refusal.reason, status=refusal.status)
    context = {"message": refusal.message, "errors": {}}
    response = render(request, "oidc_refused.html", context, status=refusal.status)
    response.delete_cookie(FLOW_COOKIE, path="/console/oidc")
    return response


@router.get("/login")
async def start(request: Request, next: str | None = None) -> Response:
    provider = provider_of(request)
    if provider is None:
        return Response(status_code=404)
    try:
        metadata = await provider.metadata()
    except SignInRefused as refusal:
        return _refused(request, refusal)
    settings = provider.settings
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": provider.client_id,
            "redirect_uri": _redirect_uri(request, settings),
            "scope": SCOPES,
            "state": state,
            "nonce": nonce,
            "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
        }
    )
    endpoint = metadata["authorization_endpoint"]
    response = RedirectResponse(f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", status_code=303)
    flow = {"state": state, "nonce": nonce, "verifier": verifier, "next": _next(next)}
    https = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(
        FLOW_COOKIE,
        _flow_serializer(settings).dumps(flow),
        max_age=FLOW_SECONDS,
        path="/console/oidc",
        httponly=True,
        samesite="lax",  # the provider's redirect back is a top-level GET from its site: Lax sends it
        secure=https,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/callback")
async def callback(request: Request) -> Response:
    provider = provider_of(request)
    if provider is None:
        return Response(status_code=404)
    settings = provider.settings
    try:
        flow = _flow_serializer(settings).loads(request.cookies.get(FLOW_COOKIE, ""), max_age=FLOW_SECONDS)
    except BadSignature:
        flow = None
    params = request.query_params
    try:
        if not isinstance(flow, dict):
            raise SignInRefused("no pre-session cookie (expired, or another browser)", _START_AGAIN)
        if not hmac.compare_digest(params.get("state", ""), flow["state"]):
            raise SignInRefused("state is not this browser's sign-in", _START_AGAIN)
        if params.get("error"):  # e.g. access_denied: the user declined, or the provider refused them
            error = params["error"] if re.fullmatch(r"[a-z_]{1,40}", params["error"]) else "an error"
            raise SignInRefused(f"the provider answered {error}", _START_AGAIN)
        code = params.get("code", "")
        if not code:
            raise SignInRefused("no code", _START_AGAIN)
        id_token = await provider.exchange(code, _redirect_uri(request, settings), flow["verifier"])
        identity = await provider.identity(id_token, flow["nonce"])
        try:
            user = await users.oidc_user(
                request.app.state.stack.engine,
                identity.external_id,
                identity.username,
                identity.role,
                identity.company_id,
            )
        except users.UserRefused as exc:
            raise SignInRefused("user refused", f"You cannot sign in to the console: {exc}.", status=403) from None
    except SignInRefused as refusal:
        return _refused(request, refusal)
    _session(request).sign_in(user.id)
    log.info("console.signed_in", user_id=user.id, role=user.role, via="oidc")
    response = redirect(request, flow["next"])
    response.delete_cookie(FLOW_COOKIE, path="/console/oidc")
    return response
