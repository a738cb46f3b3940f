"""The codec server accepts the Temporal UI's forwarded OIDC access token, verified against the
issuer's JWKS (served here by a local issuer with keys made in the test), and the static token for
the CLI; CORS answers the UI's origin only."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from workers.codec import EncryptionCodec
from workers.codec_server import OidcVerifier, TokenRefused, create_app

KEY = "k1:" + base64.b64encode(b"o" * 32).decode()
STATIC = "cli-token"
UI = "https://temporal-ui.example.com"
AUDIENCE = "temporal-ui"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Issuer:
    """A local OIDC issuer: discovery document and JWKS, signing with keys it can rotate."""

    url: str = ""
    rsa_key: rsa.RSAPrivateKey = field(default_factory=_rsa)
    ec_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    kids: dict[str, Any] = field(default_factory=dict)
    jwks_requests: int = 0

    def __post_init__(self) -> None:
        self.kids = {"rsa-1": self.rsa_key, "ec-1": self.ec_key}

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, private in self.kids.items():
            algorithm = jwt.algorithms.RSAAlgorithm if kid.startswith("rsa") else jwt.algorithms.ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(private.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256" if kid.startswith("rsa") else "ES256"})
        return {"keys": keys}

    def token(
        self,
        *,
        kid: str = "rsa-1",
        key: Any = None,
        audience: str = AUDIENCE,
        issuer: str | None = None,
        expires_in: float = 300,
        algorithm: str | None = None,
    ) -> str:
        now = int(time.time())
        claims = {"sub": "ops-anna", "iss": issuer or self.url, "aud": audience, "iat": now, "exp": now + expires_in}
        algorithm = algorithm or ("RS256" if kid.startswith("rsa") else "ES256")
        return jwt.encode(claims, key or self.kids[kid], algorithm=algorithm, headers={"kid": kid})


@pytest_asyncio.fixture
async def issuer() -> AsyncIterator[Issuer]:
    state = Issuer()

    async def discovery(_request: web.Request) -> web.Response:
        return web.json_response({"issuer": state.url, "jwks_uri": f"{state.url}/keys"})

    async def keys(_request: web.Request) -> web.Response:
        state.jwks_requests += 1
        return web.json_response(state.jwks())

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/keys", keys)
    async with TestServer(app) as server:
        state.url = str(server.make_url("")).rstrip("/")
        yield state


@pytest_asyncio.fixture
async def codec_http(issuer: Issuer) -> AsyncIterator[TestClient]:
    verifier = OidcVerifier(issuer.url, AUDIENCE)
    app = create_app(EncryptionCodec.from_setting(KEY), STATIC, {UI}, verifier)
    async with TestClient(TestServer(app)) as http:
        yield http


async def _encrypted() -> str:
    codec = EncryptionCodec.from_setting(KEY)
    payloads = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"')])
    return json_format.MessageToJson(Payloads(payloads=payloads))


async def decode(http: TestClient, authorization: str | None) -> int:
    headers = {"Content-Type": "application/json", "Origin": UI, "X-Namespace": "default"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = await http.post("/decode", data=await _encrypted(), headers=headers)
    if response.status == 200:
        decoded = json_format.Parse(await response.text(), Payloads())
        assert decoded.payloads[0].data == b'"hello"'
        assert response.headers["Access-Control-Allow-Origin"] == UI
    return response.status


async def test_a_valid_access_token_from_the_ui_decodes(codec_http: TestClient, issuer: Issuer) -> None:
    assert await decode(codec_http, f"Bearer {issuer.token()}") == 200
    assert await decode(codec_http, f"Bearer {issuer.token(kid='ec-1')}") == 200, "ES256 too"


async def test_the_static_token_still_works_for_the_cli(codec_http: TestClient) -> None:
    assert await decode(codec_http, f"Bearer {STATIC}") == 200
    assert await decode(codec_http, "Bearer not-the-token") == 401
    assert await decode(codec_http, None) == 401


async def test_metrics_count_decodes_and_refusals_without_a_token(codec_http: TestClient) -> None:
    assert await decode(codec_http, f"Bearer {STATIC}") == 200
    assert await decode(codec_http, "Bearer not-the-token") == 401
    scraped = await codec_http.get("/metrics")  # no credential: counts only
    assert scraped.status == 200
    lines = (await scraped.text()).splitlines()
    for status_class in ("2xx", "4xx"):
        assert any(
            line.startswith("jobctl_http_requests_total{")
            and 'process="codec"' in line
            and 'route="/decode"' in line
            and f'status_class="{status_class}"' in line
            and line.endswith(" 1.0")
            for line in lines
        ), (status_class, lines)
    assert (await codec_http.get("/metrics", headers={"Authorization": "Bearer x"})).status == 200
    assert (await codec_http.post("/metrics")).status == 401  # only GET /metrics passes the guard


@pytest.mark.parametrize(
    "problem",
    ["expired", "wrong key", "wrong audience", "wrong issuer", "unknown kid", "HS256 with the public key", "alg none"],
)
async def test_a_bad_access_token_is_401(codec_http: TestClient, issuer: Issuer, problem: str) -> None:
    public_pem = issuer.rsa_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    token = {
        "expired": lambda: issuer.token(expires_in=-120),  # beyond the 30 s leeway
        "wrong key": lambda: issuer.token(key=_rsa()),  # the right kid, another key's signature
        "wrong audience": lambda: issuer.token(audience="another-app"),
        "wrong issuer": lambda: issuer.token(issuer="https://evil.example.com"),
        "unknown kid": lambda: issuer.token(kid="rsa-9", key=_rsa()),
        "HS256 with the public key": lambda: _hs256(public_pem, issuer.url),
        "alg none": lambda: jwt.encode(
            {"iss": issuer.url, "aud": AUDIENCE, "exp": int(time.time()) + 300}, None, algorithm="none"
        ),
    }[problem]()
    response = await codec_http.post(
        "/decode", data=await _encrypted(), headers={"Authorization": f"Bearer {token}", "Origin": UI}
    )
    assert response.status == 401, problem
    assert (await response.json()) == {"message": "unauthorized"}, "why is logged, never told"
    assert response.headers["Access-Control-Allow-Origin"] == UI, "the UI can read the 401 (and ask to sign in)"


def _hs256(secret: bytes, iss: str) -> str:
    """The algorithm-confusion attack: HMAC keyed with the issuer's public key."""
    import hashlib
    import hmac as hmac_

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(json.dumps({"iss": iss, "aud": AUDIENCE, "exp": int(time.time()) + 300}).encode())
    signature = hmac_.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


async def test_the_jwks_is_cached_and_refetched_when_the_issuer_rotates(codec_http: TestClient, issuer: Issuer) -> None:
    for _ in range(3):
        assert await decode(codec_http, f"Bearer {issuer.token()}") == 200
    assert issuer.jwks_requests == 1, "fetched once, then cached"
    verifier = OidcVerifier(issuer.url, AUDIENCE)
    await verifier.verify(issuer.token())
    issuer.kids["rsa-2"] = _rsa()  # the issuer rotates: a new kid appears
    with pytest.raises(TokenRefused, match="no key 'rsa-2'"):
        await verifier.verify(issuer.token(kid="rsa-2"))  # refetched at most every 30 s: a flood of bad kids is cheap
    verifier._fetched_at -= 31  # noqa: SLF001 - past the minimum refetch interval, without sleeping 30 s
    assert (await verifier.verify(issuer.token(kid="rsa-2")))["sub"] == "ops-anna"
    assert verifier.fetches == 2


async def test_the_jwks_url_defaults_to_the_issuers_well_known_path_without_discovery() -> None:
    key = _rsa()
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "k", "alg": "RS256"}

    async def jwks(_request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        now = int(time.time())
        token = jwt.encode({"iss": url, "aud": AUDIENCE, "exp": now + 60}, key, algorithm="RS256", headers={"kid": "k"})
        assert (await OidcVerifier(url, AUDIENCE).verify(token))["aud"] == AUDIENCE


async def test_cors_answers_the_ui_origin_only(codec_http: TestClient) -> None:
    preflight = {
        "Origin": UI,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-namespace",
    }
    allowed = await codec_http.options("/decode", headers=preflight)
    assert allowed.status == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == UI
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert {h.strip().lower() for h in allowed.headers["Access-Control-Allow-Headers"].split(",")} >= {
        "authorization",
        "content-type",
        "x-namespace",
    }
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]

    other = await codec_http.options("/decode", headers={**preflight, "Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers
    answered = await codec_http.post(
        "/decode",
        data=await _encrypted(),
        headers={"Authorization": f"Bearer {STATIC}", "Origin": "https://evil.example.com"},
    )
    assert "Access-Control-Allow-Origin" not in answered.headers, "a browser on another origin cannot read it"


def test_the_settings_require_an_audience_with_an_issuer() -> None:
    from config.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="CODEC_OIDC_AUDIENCE"):
        load_settings(codec_oidc_issuer="https://login.example.com")
    with pytest.raises(SettingsError, match="CODEC_OIDC_ISSUER: must be an http"):
        load_settings(codec_oidc_issuer="login.example.com", codec_oidc_audience=AUDIENCE)


async def test_an_unreachable_issuer_refuses_tokens_without_being_hammered() -> None:
    app = web.Application()
    calls = 0

    async def down(_request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=503)

    app.router.add_get("/.well-known/jwks.json", down)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        verifier = OidcVerifier(url, AUDIENCE, f"{url}/.well-known/jwks.json")
        key = _rsa()
        token = jwt.encode(
            {"iss": url, "aud": AUDIENCE, "exp": int(time.time()) + 60}, key, algorithm="RS256", headers={"kid": "k"}
        )
        for _ in range(5):
            with pytest.raises(TokenRefused, match="JWKS is unavailable"):
                await verifier.verify(token)
        assert calls == 1, "one attempt per back-off, not one per request"
