"""`jobctl codec-server`: lets the Temporal UI show decrypted payloads to the people allowed to.

Implements Temporal's remote codec protocol (`POST /encode`, `POST /decode` with
`{"payloads": [...]}` in protobuf JSON), with CORS for the UI's origins only. Two credentials,
either one, as `Authorization: Bearer ...`:

- the signed-in user's OIDC access token, which the UI forwards (`codec.passAccessToken`): a JWT
  verified against the issuer's keys (JWKS, cached), its issuer, audience and expiry, RS256 or
  ES256 only (CODEC_OIDC_ISSUER, CODEC_OIDC_AUDIENCE, CODEC_OIDC_JWKS_URL);
- the static CODEC_SERVER_TOKEN, for the `temporal` CLI (`--codec-auth`) and scripts.

Without either the UI keeps showing ciphertext. Why a request was refused is logged, never sent.
`GET /metrics` (request counts and latency by route, `process="codec"`) needs no credential.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import structlog
from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from workers.codec import EncryptionCodec
from workers.http_metrics import HttpMetrics, aiohttp_metrics_handler, aiohttp_middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger(__name__)

ALGORITHMS = ("RS256", "ES256")
"""Asymmetric only: `none` and the HMAC family (whose "key" would be the public JWKS) are refused."""
LEEWAY_SECONDS = 30
"""Clock skew allowed on `exp`, `nbf` and `iat`."""
MIN_REFETCH_SECONDS = 30.0
"""A token with an unknown `kid` refetches the JWKS (the issuer rotated), at most this often."""
FAILED_FETCH_BACKOFF_SECONDS = 5.0
"""After a failed fetch the issuer is not asked again this long (tokens meanwhile use the keys held,
or are refused when there are none)."""


class TokenRefused(Exception):
    """An access token that does not verify; the message says why (for the log only)."""


class OidcVerifier:
    """Verifies the issuer's access tokens: signature (its JWKS), `iss`, `aud`, `exp`."""

    def __init__(self, issuer: str, audience: str, jwks_url: str | None = None, *, ttl_seconds: float = 300.0) -> None:
        self.issuer = issuer
        self.audience = audience
        self._jwks_url = jwks_url
        self._ttl = ttl_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._unnamed: list[jwt.PyJWK] = []  # keys without a `kid`
        self._fetched_at = float("-inf")
        self._retry_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or TokenRefused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"not a JWT: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise TokenRefused(f"algorithm {algorithm!r} not allowed (only {', '.join(ALGORITHMS)})")
        key = await self._key(header.get("kid"), algorithm)
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"{type(exc).__name__}: {exc}") from None

    async def _key(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        async with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at > self._ttl
            unknown = kid is not None and kid not in self._keys and now - self._fetched_at > MIN_REFETCH_SECONDS
            if (stale or unknown) and now >= self._retry_at:
                await self._fetch()
            if not (self._keys or self._unnamed):
                raise TokenRefused("the issuer's JWKS is unavailable")
        if kid is not None:
            if kid not in self._keys:
                raise TokenRefused(f"no key {kid!r} in the issuer's JWKS")
            if self._keys[kid].algorithm_name != algorithm:
                raise TokenRefused(f"key {kid!r} is not an {algorithm} key")
            return self._keys[kid]
        for key in self._unnamed + list(self._keys.values()):
            if key.algorithm_name == algorithm:
                return key
        raise TokenRefused(f"no {algorithm} key in the issuer's JWKS")

    async def _fetch(self) -> None:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                url = self._jwks_url or await self._discover(http)
                async with http.get(url) as response:
                    response.raise_for_status()
                    document = await response.json(content_type=None)
            keys = jwt.PyJWKSet.from_dict(document).keys
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
            # The keys we have stay (the issuer is down, not compromised); it is not asked again at once.
            self._retry_at = time.monotonic() + FAILED_FETCH_BACKOFF_SECONDS
            log.warning("codec_server.jwks_unavailable", reason=f"{type(exc).__name__}: {exc}")
            return
        self._keys = {k.key_id: k for k in keys if k.key_id}
        self._unnamed = [k for k in keys if not k.key_id]
        self._fetched_at = time.monotonic()
        self.fetches += 1
        log.info("codec_server.jwks_fetched", url=url, keys=len(keys))

    async def _discover(self, http: aiohttp.ClientSession) -> str:
        """The discovery document's `jwks_uri`, else {issuer}/.well-known/jwks.json."""
        base = self.issuer.rstrip("/")
        try:
            async with http.get(f"{base}/.well-known/openid-configuration") as response:
                if response.status == 200:
                    uri = (await response.json(content_type=None)).get("jwks_uri")
                    if isinstance(uri, str) and uri.startswith(("https://", "http://")):
                        self._jwks_url = uri
                        return uri
        except (aiohttp.ClientError, ValueError):
            pass
        return f"{base}/.well-known/jwks.json"


def create_app(
    codec: EncryptionCodec,
    token: str | None,
    allowed_origins: set[str],
    oidc: OidcVerifier | None = None,
) -> web.Application:
    """The codec endpoints behind the credentials: the static `token` and/or `oidc`'s access tokens."""
    if not token and oidc is None:
        raise ValueError("the codec server needs CODEC_SERVER_TOKEN or CODEC_OIDC_ISSUER")
    expected = f"Bearer {token}".encode() if token else None

    def cors(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["Vary"] = "Origin"
        origin = request.headers.get("Origin")
        if origin in allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Namespace"
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    async def refusal(supplied: str) -> str | None:
        """Why the Authorization header is refused; None when it is accepted."""
        if expected is not None and hmac.compare_digest(supplied.encode(), expected):
            return None
        scheme, _, credential = supplied.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return "no bearer token"
        if oidc is None:
            return "not the codec server token"
        if credential.count(".") != 2:
            return "not the codec server token, nor a JWT"
        try:
            claims = await oidc.verify(credential)
        except TokenRefused as exc:
            return str(exc)
        log.debug("codec_server.token_accepted", subject=claims.get("sub"))
        return None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/metrics" and request.method == "GET":  # counts only: for the scraper, no token
            return await handler(request)
        if request.method == "OPTIONS":
            return cors(request, web.Response(status=204))
        reason = await refusal(request.headers.get("Authorization", ""))
        if reason is not None:
            log.info("codec_server.refused", reason=reason, path=request.path)
            return cors(
                request,
                web.json_response(
                    {"message": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="codec"'}
                ),
            )
        return cors(request, await handler(request))

    def endpoint(transform: Callable) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                payloads = json_format.Parse(await request.text(), Payloads())
                result = Payloads(payloads=await transform(list(payloads.payloads)))
            except (json_format.ParseError, ValueError) as exc:
                return web.json_response({"message": f"bad payloads: {exc}"}, status=400)
            return web.json_response(json_format.MessageToDict(result))

        return handle

    metrics = HttpMetrics("codec")
    # outside the guard: refusals (401) are counted and carry the request id too
    app = web.Application(middlewares=[aiohttp_middleware(metrics), guard])
    app.router.add_get("/metrics", aiohttp_metrics_handler(metrics))
    app.router.add_post("/encode", endpoint(codec.encode))
    app.router.add_post("/decode", endpoint(codec.decode_strict))  # undecodable input: 400, not 500
    app.router.add_route("OPTIONS", "/{tail:.*}", _no_content)  # preflights: answered by the middleware
    return app


async def _no_content(_request: web.Request) -> web.Response:
    return web.Response(status=204)


def run(
    codec: EncryptionCodec,
    token: str | None,
    allowed_origins: set[str],
    host: str,
    port: int,
    oidc: OidcVerifier | None = None,
) -> None:
    web.run_app(create_app(codec, token, allowed_origins, oidc), host=host, port=port, print=None)
