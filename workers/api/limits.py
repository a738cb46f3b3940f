"""Limits at the API's doors: the size of a request body, the depth of its JSON, and a rate per key.

The body limit is ASGI middleware, outside everything else: a declared `Content-Length` above it
is 413 before the app runs (no parsing, no key lookup), and a streamed (chunked) body is counted
as it arrives, so it is never buffered past the limit either. The route class
(`workers.api.idempotency.IdempotentRoute`) looks the key up before it reads a body at all.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.api.problems import Problem, problem_response


class BodyTooLarge(Problem):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")


def check_json_depth(body: bytes) -> None:
    """400 for a body nested deeper than Python's parser goes (about 1,000 levels; no request model
    nests more than a few), before FastAPI parses it or `Idempotency-Key` hashes it. Malformed JSON
    is left to FastAPI's 422, which names the body as the field at fault."""
    if not body or body.count(b"[") + body.count(b"{") < 500:  # cannot nest that deep: no parse
        return
    try:
        json.loads(body)
    except RecursionError:
        raise Problem(400, "the JSON body nests too deep", field="body", code="json_too_deep") from None
    except ValueError:
        return


class BodyLimit:
    """ASGI middleware: 413 problem+json for a body above `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Connection: close, so the server does not read (and discard) the rest of the body.
        response = problem_response(413, BodyTooLarge(self.max_bytes).detail, headers={"Connection": "close"})
        await response(scope, receive, send)


class RateLimiter:
    """Token buckets by key (a pay link's token, a client address), in this process.

    `per_minute` opens a minute: a burst of as many, then one every 60/per_minute seconds. At most
    `max_keys` buckets are kept (the least recently used go first), so random keys cannot grow it.
    """

    def __init__(self, per_minute: int, max_keys: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """0: allowed (one taken); otherwise the seconds until the next one is."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
