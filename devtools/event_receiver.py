"""A tiny receiver of jobctl's outbound events, for the dev stack, the tests and as an example.

What a real receiver does, in a few lines each:
- verifies `Jobctl-Signature` (`t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`) against the
  raw body, within five minutes of its clock: anything else is 400, and nothing is recorded;
- de-duplicates by the event's `id` (a delivery can come twice: answered 2xx, the answer lost);
- answers 2xx quickly (any other status is a failure jobctl retries with back-off).

`down` (or `POST /_receiver/down`, `POST /_receiver/up`) makes it answer 503 as a subscriber that
is away would; `GET /_receiver/events` lists what it accepted, in order of arrival.

    python -m devtools.event_receiver --secret whsec_... --port 8091
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from schemas.events import EVENT_ID_HEADER, SIGNATURE_HEADER, verify

log = structlog.get_logger(__name__)


@dataclass
class EventReceiver:
    secret: str
    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/events"
    down: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    """Each accepted event once, in order of arrival."""
    duplicates: int = 0
    rejected: int = 0
    refused_while_down: int = 0
    _seen: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(self.path, self.receive)
        app.router.add_get("/_receiver/events", self._list)
        app.router.add_post("/_receiver/down", self._set_down)
        app.router.add_post("/_receiver/up", self._set_up)
        return app

    async def receive(self, request: web.Request) -> web.Response:
        if self.down:
            self.refused_while_down += 1
            return web.json_response({"error": "down for maintenance"}, status=503)
        body = await request.read()
        if not verify(self.secret, request.headers.get(SIGNATURE_HEADER, ""), body, int(time.time())):
            self.rejected += 1
            log.warning("event_receiver.bad_signature", event_id=request.headers.get(EVENT_ID_HEADER))
            return web.json_response({"error": "bad signature"}, status=400)
        event = json.loads(body)
        if event["id"] in self._seen:
            self.duplicates += 1
            return web.json_response({"duplicate": True})
        self._seen.add(event["id"])
        self.events.append(event)
        log.info("event_receiver.event", id=event["id"], type=event["type"], object=event["object"])
        return web.json_response({"received": True})

    async def _list(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"events": self.events, "duplicates": self.duplicates, "rejected": self.rejected, "down": self.down}
        )

    async def _set_down(self, _: web.Request) -> web.Response:
        self.down = True
        return web.json_response({"down": True})

    async def _set_up(self, _: web.Request) -> web.Response:
        self.down = False
        return web.json_response({"down": False})

    async def start(self) -> EventReceiver:
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

    async def __aenter__(self) -> EventReceiver:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret", required=True, help="the subscription's secret (whsec_...)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)

    async def serve() -> None:
        async with EventReceiver(args.secret, args.host, args.port) as receiver:
            print(f"receiving jobctl events at {receiver.url}", flush=True)
            await asyncio.Event().wait()

    args = parser.parse_args()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
