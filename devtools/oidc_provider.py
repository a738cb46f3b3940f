"""A tiny OpenID Connect provider for the console's tests and dev: loopback only, never for production.

What a real provider does for the console's sign-in, in a few lines each: a discovery document
(`/.well-known/openid-configuration`), its keys (`/jwks`: one RS256 key, made at start),
`/authorize` (the authorization-code flow with PKCE S256; it approves at once, as the configured
user with their groups, and sends the browser back to the `redirect_uri` with the `state`), and
`/token` (checks the code, the redirect URI, the client, its secret when one is set, and the code
verifier; answers an ID token carrying the flow's `nonce`). A code works once, for a minute.

`tamper` changes the next ID tokens, for the tests of what the console must refuse:
`{"aud": "another-client"}`, `{"exp": <in the past>}`, `{"nonce": "replayed"}`, or
`{"sign_with_other_key": True}` (a signature the JWKS does not verify).

    python -m devtools.oidc_provider --client-id jobctl-console --username anna \\
        --groups jobctl-finance --port 8094
    # then: CONSOLE_OIDC_ISSUER=http://127.0.0.1:8094 CONSOLE_OIDC_CLIENT_ID=jobctl-console \\
    #       CONSOLE_OIDC_ROLE_MAP=jobctl-finance=finance jobctl api
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode

import jwt
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

log = structlog.get_logger(__name__)

CODE_SECONDS = 60
TOKEN_SECONDS = 300


@dataclass
class TestUser:
    """Whom `/authorize` signs in."""

    __test__ = False  # not a pytest test class

    sub: str = "user-1"
    preferred_username: str | None = "anna"
    email: str | None = "anna@example.test"
    groups: list[str] = field(default_factory=lambda: ["jobctl-finance"])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class OidcProvider:
    client_id: str = "jobctl-console"
    client_secret: str | None = None
    user: TestUser = field(default_factory=TestUser)
    host: str = "127.0.0.1"
    port: int = 0
    roles_claim: str = "groups"
    tamper: dict[str, Any] = field(default_factory=dict)
    """Claims the next ID tokens carry instead (and `sign_with_other_key`): see the module's doc."""
    key: rsa.RSAPrivateKey = field(default_factory=_key)
    kid: str = field(default_factory=lambda: f"dev-{secrets.token_hex(4)}")
    tokens_issued: int = 0
    _codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        try:
            loopback = self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # another host name
            loopback = False
        if not loopback:
            raise ValueError("the dev OIDC provider listens on a loopback address only (it approves anyone)")

    @property
    def issuer(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        return app

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                "scopes_supported": ["openid", "profile", "email"],
            }
        )

    async def _jwks(self, _: web.Request) -> web.Response:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect_uri.startswith(("http://", "https://")):
            return web.json_response({"error": "invalid_request", "error_description": "unknown client"}, status=400)
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            refused = {"error": "invalid_request", "error_description": "the code flow with PKCE S256 only"}
            return web.json_response(refused, status=400)
        code = secrets.token_urlsafe(24)
        self._codes[code] = {
            "redirect_uri": redirect_uri,
            "challenge": q["code_challenge"],
            "nonce": q.get("nonce"),
            "expires": time.monotonic() + CODE_SECONDS,
        }
        back = urlencode({"code": code, **({"state": q["state"]} if "state" in q else {})})
        raise web.HTTPFound(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{back}")

    def _client_ok(self, request: web.Request, form: Any) -> bool:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client_id, _, secret = (unquote_plus(half) for half in base64.b64decode(header[6:]).decode().partition(":"))
        if client_id != self.client_id:
            return False
        return self.client_secret is None or hmac.compare_digest(str(secret or ""), self.client_secret)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not self._client_ok(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self._codes.pop(str(form.get("code", "")), None)  # a code works once
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (
            form.get("grant_type") != "authorization_code"
            or grant is None
            or grant["expires"] < time.monotonic()
            or grant["redirect_uri"] != form.get("redirect_uri")
            or not hmac.compare_digest(challenge, grant["challenge"])
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.user.sub,
            "aud": self.client_id,
            "iat": now,
            "exp": now + TOKEN_SECONDS,
            self.roles_claim: self.user.groups,
        }
        for name in ("preferred_username", "email"):
            if getattr(self.user, name):
                claims[name] = getattr(self.user, name)
        if grant["nonce"] is not None:
            claims["nonce"] = grant["nonce"]
        tamper = dict(self.tamper)
        key = _key() if tamper.pop("sign_with_other_key", False) else self.key
        claims.update(tamper)
        id_token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})
        self.tokens_issued += 1
        log.info("oidc_provider.token_issued", sub=self.user.sub)
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": TOKEN_SECONDS,
                "id_token": id_token,
            }
        )

    async def start(self) -> OidcProvider:
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        if self.port == 0:
            server = site._server  # noqa: SLF001 - aiohttp keeps the bound socket there; port 0 picks a free one
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OidcProvider:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", default="jobctl-console")
    parser.add_argument("--client-secret", default=None, help="unset: a public client (PKCE only)")
    parser.add_argument("--username", default="anna", help="the signed-in user's preferred_username")
    parser.add_argument("--email", default=None)
    parser.add_argument("--sub", default="user-1")
    parser.add_argument("--groups", default="jobctl-finance", help="comma-separated")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=8094)
    args = parser.parse_args()
    user = TestUser(args.sub, args.username, args.email, [g for g in args.groups.split(",") if g])

    async def serve() -> None:
        async with OidcProvider(args.client_id, args.client_secret, user, args.host, args.port) as provider:
            print(f"dev OIDC provider at {provider.issuer} (client {provider.client_id})", flush=True)
            await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
