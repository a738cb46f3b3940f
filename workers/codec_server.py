"""`jobctl codec-server`: lets the Temporal UI show decrypted payloads to token holders.

Implements Temporal's remote codec protocol (`POST /encode`, `POST /decode` with
`{"payloads": [...]}` in protobuf JSON), with CORS for the UI's origin and a bearer token:
without the token the UI keeps showing ciphertext.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from workers.codec import EncryptionCodec

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(codec: EncryptionCodec, token: str, allowed_origins: set[str]) -> web.Application:
    def cors(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin in allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Namespace"
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Vary"] = "Origin"
        return response

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return cors(request, web.Response(status=204))
        supplied = request.headers.get("Authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
            return cors(request, web.json_response({"message": "unauthorized"}, status=401))
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

    app = web.Application(middlewares=[guard])
    app.router.add_post("/encode", endpoint(codec.encode))
    app.router.add_post("/decode", endpoint(codec.decode_strict))  # undecodable input: 400, not 500
    app.router.add_route("OPTIONS", "/{tail:.*}", _no_content)  # preflights: answered by the middleware
    return app


async def _no_content(_request: web.Request) -> web.Response:
    return web.Response(status=204)


def run(codec: EncryptionCodec, token: str, allowed_origins: set[str], host: str, port: int) -> None:
    web.run_app(create_app(codec, token, allowed_origins), host=host, port=port, print=None)
