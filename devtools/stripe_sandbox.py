"""Stripe sandbox for dev and tests: localstripe behind Stripe's idempotency semantics.

Why it exists: every mutating Stripe call jobctl makes carries an ``Idempotency-Key`` built from
business ids, and the payments activities rely on Stripe answering a retried request with the
first request's response instead of creating a second customer, invoice or refund. localstripe
1.15 (our offline Stripe) ignores that header, so tests against it alone would prove nothing
about retries. This module puts a small aiohttp front in front of localstripe that implements
Stripe's documented v1 idempotency rules (https://docs.stripe.com/api/idempotent_requests):

- Scope: (API key, ``Stripe-Account``, ``Idempotency-Key``), POST requests to ``/v1/*`` only.
  GET and DELETE ignore the header, as Stripe documents for v1 (they are idempotent by
  definition; the SDK itself adds keys to POSTs only). A key over 255 characters gets a 400.
- First request with a key: forwarded to localstripe; its response is stored with the method,
  path and a fingerprint of the parameters (form or JSON body plus query string).
- Same key, same method, path and parameters: the stored status and body are replayed with
  ``Idempotent-Replayed: true`` and ``Original-Request: <request id>``; localstripe is not called.
- Same key, another endpoint or other parameters: 400 ``idempotency_error`` (nothing stored).
- Same key while the first request is still in flight: by default the second request waits for
  the first one (a lock per key) and then gets the replay. Real Stripe answers 409
  ``idempotency_error`` instead; ``on_concurrent="conflict"`` reproduces that (the SDK maps a v1
  409 to ``stripe.APIError`` with ``http_status == 409``, not to ``IdempotencyError``).
- What is stored: 2xx responses and 402 card declines, i.e. the endpoint ran. 400/404 parameter
  errors (localstripe raises them before it stores anything; Stripe "saves nothing when incoming
  parameters fail validation"), 401, 409, 429 and 5xx are not stored: the same key re-executes.
  Note that real Stripe v1 *does* replay a 500 for 24 h; here a 5xx can only be a localstripe bug
  or a lost backend, and re-executing is the useful behaviour.
- Keys expire 24 h after their response was stored (swept lazily on the next keyed request).
- Every response carries a ``Request-Id``; keyed responses echo ``Idempotency-Key``.
- localstripe's plain-text errors get Stripe's JSON error shape: an endpoint it lacks (Payment
  Links, Prices, invoice finalize, ...) is a 404 ``invalid_request_error``, so
  the SDK raises ``InvalidRequestError`` instead of a retryable ``APIError``.

How localstripe is embedded: as a private child process per sandbox, behind this front.
localstripe keeps its objects and webhooks in module globals and pickles its whole store to
``/tmp/localstripe.pickle`` on every write, so in-process it would share state between sandboxes
and block the host event loop. The child gets a socket this process already bound to
127.0.0.1 (no port race: requests queue on it until the child serves them), runs localstripe's
own aiohttp app, and exits when this process goes away (its stdin reaches EOF). In memory by
default; with ``data_dir`` (the dev stack passes
``$JOBCTL_HOME/stripe``) localstripe's dump/load points at ``data_dir/localstripe.pickle`` and the
front keeps its Checkout Sessions and webhooks in ``data_dir/checkout.json``, so a restart keeps the
customers our database refers to. ``create_app(upstream=URL)`` fronts an existing localstripe instead.

Checkout Sessions (which localstripe lacks) and the dev pay page at their ``url`` are served by the
front itself: ``devtools/stripe_checkout.py`` (paying one makes a real localstripe PaymentIntent
and charge; "Pay by bank debit" completes it unpaid until ``POST
/_sandbox/checkout/sessions/{id}/async_payment`` succeeds or fails it). Refunds' events, disputes
(``POST /_sandbox/charges/{id}/dispute``, ``POST /_sandbox/disputes/{id}/close``) and the statuses
localstripe cannot show: ``devtools/stripe_money.py``.

localstripe control endpoints pass through unauthenticated: ``POST /_config/webhooks/{id}``
(``url``, ``secret``, optional ``events``) makes localstripe POST each event, one second after
it happens, once (no retries), signed ``Stripe-Signature: t=<event.created>,v1=<HMAC-SHA256>``
exactly as ``stripe.Webhook.construct_event`` checks; ``DELETE /_config/data`` wipes every
object and, here, every stored idempotency key too.

For benchmarks and production-shaped tests the front also has (off unless asked for):

- ``GET /_sandbox/stats``: the API requests (``/v1/``, ``/v2/``) it has answered since it
  started: ``requests`` in all, ``by_endpoint`` (``"POST /v1/checkout/sessions"``; a path segment
  holding a digit, an object id, is shown as ``{id}``), ``replayed`` (answered from an idempotency
  key) and ``rate_limited`` (answered 429). A benchmark reads it before and after a run, so
  "Stripe calls per reminder" counts what reached Stripe, retries and replays included.
- ``rate_limit`` (``--rate-limit`` requests/s): a token bucket (burst = one second's worth) in
  front of every API request, answering as Stripe does above its limit: HTTP 429,
  ``{"error": {"type": "invalid_request_error", "code": "rate_limit", ...}}``, which the SDK
  raises as ``stripe.RateLimitError`` (our activities: retryable ``StripeUnavailable``). Stripe's
  test mode allows 25 read and 25 write requests a second; one bucket for both is stricter.
- ``POST /_sandbox/clock`` ``{"advance_s": N}``: moves the sandbox's clock forward N seconds
  (never back), so Checkout Sessions reach their 24-hour ``expires_at`` and idempotency keys their
  24-hour expiry as they would at Stripe when a benchmark runs several business days in minutes.
  localstripe's own objects keep its wall clock. ``GET`` answers ``{"advanced_s": total}``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from devtools.stripe_checkout import CHECKOUT, Checkout, CheckoutStore, Webhook, api_key_of
from devtools.stripe_money import Money
from devtools.stripe_portal import BillingPortal
from devtools.token_bucket import TokenBucket

log = structlog.get_logger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8420  # localstripe's own default
KEY_TTL_S: Final = 24 * 3600.0
MAX_KEY_LENGTH: Final = 255
BACKEND_START_TIMEOUT_S: Final = 15.0
UPSTREAM_TIMEOUT_S: Final = 60.0

OnConcurrent = Literal["wait", "conflict"]
Clock = Callable[[], float]
Scope = tuple[str, str, str]  # (api key, Stripe-Account, Idempotency-Key)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Hop-by-hop and framing headers are the front's business, not the backend's.
_REQUEST_HEADERS_DROPPED: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade", "accept-encoding"}
)
_RESPONSE_HEADERS_DROPPED: Final = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "date", "server"}
)
_API_PREFIXES: Final = ("/v1/", "/v2/")

# The child process: localstripe's own app on a socket we bound, in memory only, gone with us.
_BACKEND_SCRIPT: Final = """
import os, pickle, socket, sys, threading
from aiohttp import web
from localstripe import resources, server
from devtools import localstripe_index

dump_path = sys.argv[2] if len(sys.argv) > 2 else ""
lock = threading.Lock()
if dump_path:
    # localstripe's own dump/load, pointed at our file (its default is /tmp/localstripe.pickle),
    # written atomically so a kill mid-write leaves the previous store.
    def dump_to_disk(self):
        with lock:
            with open(dump_path + ".tmp", "wb") as f:
                pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(dump_path + ".tmp", dump_path)
    resources.Store.dump_to_disk = dump_to_disk
    if os.path.exists(dump_path):
        with open(dump_path, "rb") as f:
            dict.update(resources.store, pickle.load(f))
else:
    resources.Store.dump_to_disk = lambda self: None
localstripe_index.install(resources)

def _exit_with_parent():
    sys.stdin.buffer.read()
    os._exit(0)

threading.Thread(target=_exit_with_parent, daemon=True).start()
web.run_app(server.app, sock=socket.socket(fileno=int(sys.argv[1])), print=None, access_log=None)
# Ctrl-C reaches this child too and ends run_app; the watcher thread still holds stdin's lock, and
# the interpreter's shutdown would abort on it ("Fatal Python error: _enter_buffered_busy").
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


# --- Stripe-shaped errors ----------------------------------------------------------------------


def stripe_error(status: int, type_: str, message: str, **extra: Any) -> web.Response:
    """A response with Stripe's error body: ``{"error": {"type": ..., "message": ...}}``."""
    return web.json_response({"error": {"type": type_, "message": message, **extra}}, status=status)


def _params_mismatch(key: str) -> web.Response:
    return stripe_error(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they were first used "
        f"with. Try using a key other than '{key}' if you meant to execute a different request.",
    )


def _endpoint_mismatch(key: str, first: str, now: str) -> web.Response:
    return stripe_error(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used for the same endpoint they were first used "
        f"for ('{first}' vs '{now}'). Try using a key other than '{key}' if you meant to execute a "
        "different request.",
    )


def _in_flight(key: str) -> web.Response:
    return stripe_error(
        409,
        "idempotency_error",
        "There is currently another in-progress request using this idempotency key (that probably "
        f"means you submitted twice, and the other request is still going through): '{key}'. "
        "Please try again later.",
    )


# --- the idempotency store ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    """The first response for a key, and what it answered."""

    method: str
    path: str
    fingerprint: str
    status: int
    body: bytes
    content_type: str
    request_id: str
    stored_at: float

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class IdempotencyStore:
    """Stored responses by scope, expiring ``ttl_s`` after they were stored; one lock per key."""

    def __init__(self, ttl_s: float = KEY_TTL_S, clock: Clock = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[Scope, StoredResponse] = {}  # insertion order == storage order
        self._slots: dict[Scope, _Slot] = {}

    def __len__(self) -> int:
        self.sweep()
        return len(self._entries)

    def now(self) -> float:
        return self._clock()

    def sweep(self) -> int:
        """Drop expired entries (oldest first); returns how many went."""
        cutoff = self._clock() - self._ttl_s
        expired = 0
        while self._entries:
            scope, entry = next(iter(self._entries.items()))
            if entry.stored_at > cutoff:
                break
            del self._entries[scope]
            expired += 1
        return expired

    def get(self, scope: Scope) -> StoredResponse | None:
        self.sweep()
        return self._entries.get(scope)

    def put(self, scope: Scope, entry: StoredResponse) -> None:
        self._entries.pop(scope, None)
        self._entries[scope] = entry

    def clear(self) -> None:
        self._entries.clear()

    def in_flight(self, scope: Scope) -> bool:
        slot = self._slots.get(scope)
        return slot is not None and slot.lock.locked()

    @asynccontextmanager
    async def exclusive(self, scope: Scope) -> AsyncIterator[None]:
        """Hold the key's lock; the slot is dropped when nobody holds or waits for it."""
        slot = self._slots.setdefault(scope, _Slot())
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[scope]


# --- request identity --------------------------------------------------------------------------


def _canonical_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    # Stable sort by name: field order does not matter, the order of repeated fields (lists) does.
    return sorted(pairs, key=lambda pair: pair[0])


def request_fingerprint(query: str, body: bytes, content_type: str) -> str:
    """A digest of the request's parameters, independent of how the client ordered the fields."""
    if content_type == "application/json" and body:
        try:
            params: Any = json.loads(body)
        except ValueError:
            params = body.decode("latin-1")
    elif body:
        params = _canonical_pairs(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
    else:
        params = None
    canonical = {"query": _canonical_pairs(parse_qsl(query, keep_blank_values=True)), "body": params}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def is_storable(status: int) -> bool:
    """The endpoint ran: success, or a card decline (Stripe's 402)."""
    return 200 <= status < 300 or status == 402


def _new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:14]


# --- the app -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxOptions:
    upstream: str | None = None  # None: start a private localstripe child
    on_concurrent: OnConcurrent = "wait"
    data_dir: Path | None = None  # None: in memory; else localstripe.pickle and checkout.json here
    rate_limit: float | None = None  # API requests/s; None: no limit


_ID_SEGMENT: Final = re.compile(r"\d")


def endpoint_of(method: str, path: str) -> str:
    """``POST /v1/checkout/sessions/cs_test_1a2b/expire`` → ``POST /v1/checkout/sessions/{id}/expire``.

    Stripe's object ids carry digits and its resource names none, so a segment with a digit is an id."""
    segments = [
        "{id}" if _ID_SEGMENT.search(segment) and i > 1 else segment for i, segment in enumerate(path.split("/"))
    ]
    return f"{method} {'/'.join(segments)}"


@dataclass
class SandboxStats:
    """What ``GET /_sandbox/stats`` reports: every API request the front answered."""

    requests: int = 0
    replayed: int = 0
    rate_limited: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "replayed": self.replayed,
            "rate_limited": self.rate_limited,
            "by_endpoint": dict(sorted(self.by_endpoint.items())),
        }


@dataclass
class SandboxClock:
    """The front's clock: ``base()`` plus however far ``POST /_sandbox/clock`` moved it."""

    base: Clock
    advanced_s: float = 0.0

    def __call__(self) -> float:
        return self.base() + self.advanced_s


@dataclass
class _Backend:
    url: str | None = None
    session: aiohttp.ClientSession | None = None
    process: asyncio.subprocess.Process | None = None


OPTIONS: Final = web.AppKey("stripe_sandbox_options", SandboxOptions)
STORE: Final = web.AppKey("stripe_sandbox_idempotency", IdempotencyStore)
BACKEND: Final = web.AppKey("stripe_sandbox_backend", _Backend)
STATS: Final = web.AppKey("stripe_sandbox_stats", SandboxStats)
CLOCKS: Final = web.AppKey("stripe_sandbox_clocks", tuple)
LIMITER: Final = web.AppKey("stripe_sandbox_limiter", object)  # a TokenBucket, or None


def _is_api(request: web.Request) -> bool:
    return request.path.startswith(_API_PREFIXES)


@web.middleware
async def stats_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every API request (the outermost middleware: 429s and replays included)."""
    if not _is_api(request):
        return await handler(request)
    stats = request.app[STATS]
    stats.requests += 1
    endpoint = endpoint_of(request.method, request.path)
    stats.by_endpoint[endpoint] = stats.by_endpoint.get(endpoint, 0) + 1
    response = await handler(request)
    if response.headers.get("Idempotent-Replayed") == "true":
        stats.replayed += 1
    elif response.status == 429:
        stats.rate_limited += 1
    return response


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stripe's answer above the account's rate: 429 ``rate_limit``, decided before anything runs."""
    limiter = request.app[LIMITER]
    if isinstance(limiter, TokenBucket) and _is_api(request) and not limiter.try_take():
        return stripe_error(
            429,
            "invalid_request_error",
            "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        )
    return await handler(request)


async def sandbox_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS].as_json())


async def sandbox_clock(request: web.Request) -> web.Response:
    """``POST {"advance_s": N}``: the sandbox's time moves N seconds on (N >= 0); GET: how far it has."""
    clocks: tuple[SandboxClock, ...] = request.app[CLOCKS]
    if request.method == "POST":
        try:
            advance = float((await request.json())["advance_s"])
        except (ValueError, KeyError, TypeError):
            return stripe_error(400, "invalid_request_error", 'the body must be {"advance_s": <seconds>}')
        if not advance >= 0:
            return stripe_error(400, "invalid_request_error", "the sandbox's clock only moves forward")
        for clock in clocks:
            clock.advanced_s += advance
    return web.json_response({"advanced_s": clocks[0].advanced_s})


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Request-Id", _new_request_id())
    return response


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stripe's v1 idempotency for keyed POSTs to the API; everything else passes through."""
    key = request.headers.get("Idempotency-Key")
    api_key = api_key_of(request.headers.get("Authorization"))
    if request.method != "POST" or not key or api_key is None or not request.path.startswith(_API_PREFIXES):
        return await handler(request)  # no key, GET/DELETE, control plane; no API key: localstripe's 401
    if len(key) > MAX_KEY_LENGTH:
        return stripe_error(
            400, "invalid_request_error", f"Invalid idempotency key: it must be at most {MAX_KEY_LENGTH} characters."
        )
    store = request.app[STORE]
    scope: Scope = (api_key, request.headers.get("Stripe-Account", ""), key)
    fingerprint = request_fingerprint(request.query_string, await request.read(), request.content_type)
    endpoint = f"{request.method} {request.path}"

    if request.app[OPTIONS].on_concurrent == "conflict" and store.in_flight(scope):
        log.info("stripe_sandbox.idempotency_in_flight", idempotency_key=key, endpoint=endpoint)
        return _in_flight(key)
    async with store.exclusive(scope):
        stored = store.get(scope)
        if stored is not None:
            return _replay_or_refuse(stored, key, endpoint, fingerprint)
        response = await handler(request)
        body = response.body if isinstance(response, web.Response) else None
        if isinstance(body, bytes) and is_storable(response.status):
            request_id = response.headers.setdefault("Request-Id", _new_request_id())
            store.put(
                scope,
                StoredResponse(
                    method=request.method,
                    path=request.path,
                    fingerprint=fingerprint,
                    status=response.status,
                    body=body,
                    content_type=response.headers.get("Content-Type", "application/json"),
                    request_id=request_id,
                    stored_at=store.now(),
                ),
            )
        response.headers["Idempotency-Key"] = key
        return response


def _replay_or_refuse(stored: StoredResponse, key: str, endpoint: str, fingerprint: str) -> web.Response:
    if stored.endpoint != endpoint:
        log.warning(
            "stripe_sandbox.idempotency_endpoint_mismatch", idempotency_key=key, first=stored.endpoint, now=endpoint
        )
        return _endpoint_mismatch(key, stored.endpoint, endpoint)
    if stored.fingerprint != fingerprint:
        log.warning("stripe_sandbox.idempotency_params_mismatch", idempotency_key=key, endpoint=endpoint)
        return _params_mismatch(key)
    log.debug("stripe_sandbox.idempotent_replay", idempotency_key=key, endpoint=endpoint, status=stored.status)
    return web.Response(
        status=stored.status,
        body=stored.body,
        headers={
            "Content-Type": stored.content_type,
            "Idempotency-Key": key,
            "Idempotent-Replayed": "true",
            "Original-Request": stored.request_id,
        },
    )


async def forward(request: web.Request) -> web.Response:
    """Send the request to localstripe as it came and answer with what localstripe said."""
    backend = request.app[BACKEND]
    assert backend.session is not None and backend.url is not None, "the sandbox is not started"
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_HEADERS_DROPPED)
    body = await request.read()
    url = URL(backend.url + request.raw_path, encoded=True)
    try:
        async with backend.session.request(
            request.method, url, data=body or None, headers=headers, allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
            out_headers = CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in _RESPONSE_HEADERS_DROPPED
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.error("stripe_sandbox.backend_unreachable", url=backend.url, error=repr(exc))
        return stripe_error(502, "api_error", f"The Stripe sandbox could not reach localstripe: {exc!r}")
    if status >= 400 and request.path.startswith(_API_PREFIXES) and not _is_json(out_headers):
        return _as_stripe_error(request, status, payload)
    return web.Response(status=status, body=payload, headers=out_headers)


def _is_json(headers: CIMultiDict[str]) -> bool:
    return headers.get("Content-Type", "").split(";")[0].strip() == "application/json"


def _as_stripe_error(request: web.Request, status: int, payload: bytes) -> web.Response:
    """localstripe answers unknown routes and its own crashes in plain text; the SDK would call
    that an ``APIError`` (retryable). Give them Stripe's shape: an unknown URL is a 404
    ``invalid_request_error`` at Stripe too, so an endpoint localstripe lacks fails fast."""
    if status == 404:
        return stripe_error(
            404,
            "invalid_request_error",
            f"Unrecognized request URL ({request.method}: {request.path}): localstripe does not implement it.",
        )
    text = " ".join(payload.decode("utf-8", "replace").split())[:300]
    log.warning("stripe_sandbox.backend_error", status=status, endpoint=f"{request.method} {request.path}", body=text)
    return stripe_error(status, "api_error", f"localstripe failed (HTTP {status}): {text}")


async def flush_data(request: web.Request) -> web.Response:
    """``DELETE /_config/data``: localstripe forgets every object, the front every key and session."""
    response = await forward(request)
    if response.status < 300:
        request.app[STORE].clear()
        request.app[CHECKOUT].clear()
    return response


async def config_webhook(request: web.Request) -> web.Response:
    """``POST /_config/webhooks/{id}``: localstripe's events and the front's (Checkout) go to it."""
    try:
        config = await request.json()
        webhook = Webhook(str(config["url"]), str(config["secret"]), config.get("events"))
    except (ValueError, KeyError, TypeError):
        config = {k: str(v) for k, v in (await request.post()).items()}
        if "url" not in config or "secret" not in config:
            return stripe_error(400, "invalid_request_error", "a webhook needs url and secret")
        webhook = Webhook(config["url"], config["secret"], None)
    response = await forward(request)
    if response.status < 300:
        store = request.app[CHECKOUT]
        store.webhooks[request.match_info["id"]] = webhook
        store.save()
    return response


async def _customer_exists(request: web.Request, customer_id: str) -> bool:
    """Ask localstripe, with the caller's key: a Checkout Session names a live customer."""
    backend = request.app[BACKEND]
    assert backend.session is not None and backend.url is not None, "the sandbox is not started"
    headers = {"Authorization": request.headers.get("Authorization", "")}
    if account := request.headers.get("Stripe-Account"):
        headers["Stripe-Account"] = account
    async with backend.session.get(f"{backend.url}/v1/customers/{customer_id}", headers=headers) as response:
        if response.status != 200:
            return False
        return not (await response.json()).get("deleted", False)


FRONT_KEY: Final = "sk_test_sandbox_front"
"""The key the front's own calls to localstripe carry (the pay page's PaymentIntents, refunds' charges)."""


async def _backend_call(
    app: web.Application, method: str, path: str, form: dict[str, str] | None
) -> tuple[int, dict[str, Any]]:
    """One call of the front's own to localstripe: (status, JSON body; {} if it sent none)."""
    backend = app[BACKEND]
    assert backend.session is not None and backend.url is not None, "the sandbox is not started"
    headers = {"Authorization": f"Bearer {FRONT_KEY}"}
    async with backend.session.request(method, f"{backend.url}{path}", data=form, headers=headers) as response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = {}
        return response.status, body if isinstance(body, dict) else {}


async def _replay_webhooks(session: aiohttp.ClientSession, url: str, store: CheckoutStore) -> None:
    """A restarted localstripe forgot its webhooks (they are not in its store): register them again."""
    for webhook_id, webhook in store.webhooks.items():
        payload: dict[str, Any] = {"url": webhook.url, "secret": webhook.secret}
        if webhook.events is not None:
            payload["events"] = webhook.events
        async with session.post(f"{url}/_config/webhooks/{webhook_id}", json=payload) as response:
            response.raise_for_status()


async def _backend_ctx(app: web.Application) -> AsyncIterator[None]:
    backend, options = app[BACKEND], app[OPTIONS]
    if options.upstream is None:
        dump = options.data_dir / "localstripe.pickle" if options.data_dir else None
        backend.process, backend.url = await spawn_localstripe(dump)
    else:
        backend.url = options.upstream.rstrip("/")
    backend.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S))
    try:
        if backend.process is not None:
            await _wait_until_serving(backend.session, backend.url, backend.process)
            await _replay_webhooks(backend.session, backend.url, app[CHECKOUT])
        yield
    finally:
        await backend.session.close()
        backend.session = None
        if backend.process is not None:
            await stop_localstripe(backend.process)
            backend.process = None


def create_app(
    *,
    upstream: str | None = None,
    on_concurrent: OnConcurrent = "wait",
    key_ttl_s: float = KEY_TTL_S,
    clock: Clock = time.monotonic,
    data_dir: Path | str | None = None,
    rate_limit: float | None = None,
) -> web.Application:
    """The sandbox as an aiohttp app.

    ``upstream=None`` starts a private localstripe child when the app starts (and stops it with
    the app); a URL fronts a localstripe, or anything else, already running there.
    ``on_concurrent``: ``"wait"`` (a concurrent same-key request waits, then gets the replay) or
    ``"conflict"`` (409 ``idempotency_error``, as real Stripe). ``clock`` is for expiry tests.
    ``data_dir``: persist localstripe's objects, the Checkout Sessions and the webhook
    registrations there (a restart finds them again); None keeps everything in memory.
    Idempotency keys stay in memory: they only matter within a retry schedule.
    ``rate_limit``: API requests a second above which the front answers Stripe's 429 (None: none).
    """
    if on_concurrent not in ("wait", "conflict"):
        raise ValueError(f"on_concurrent must be 'wait' or 'conflict', not {on_concurrent!r}")
    if rate_limit is not None and not rate_limit > 0:
        raise ValueError("rate_limit must be > 0 (or None for no limit)")
    app = web.Application(
        middlewares=[stats_middleware, request_id_middleware, rate_limit_middleware, idempotency_middleware]
    )
    directory = Path(data_dir) if data_dir is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    app[OPTIONS] = SandboxOptions(
        upstream=upstream, on_concurrent=on_concurrent, data_dir=directory, rate_limit=rate_limit
    )
    key_clock, checkout_clock = SandboxClock(clock), SandboxClock(time.time)
    app[CLOCKS] = (key_clock, checkout_clock)
    app[STORE] = IdempotencyStore(key_ttl_s, key_clock)
    app[STATS] = SandboxStats()
    app[LIMITER] = TokenBucket(rate_limit, time.monotonic) if rate_limit is not None else None
    app[BACKEND] = _Backend()
    app.cleanup_ctx.append(_backend_ctx)
    checkout = CheckoutStore(directory / "checkout.json" if directory else None, clock=checkout_clock)

    async def backend(method: str, path: str, form: dict[str, str] | None) -> tuple[int, dict[str, Any]]:
        return await _backend_call(app, method, path, form)

    front = Checkout(checkout, stripe_error, _customer_exists, backend)
    front.routes(app)
    Money(front, stripe_error, forward, backend).routes(app)
    BillingPortal(stripe_error, _customer_exists).routes(app)
    app.router.add_get("/_sandbox/stats", sandbox_stats)
    app.router.add_route("GET", "/_sandbox/clock", sandbox_clock)
    app.router.add_route("POST", "/_sandbox/clock", sandbox_clock)
    app.router.add_route("DELETE", "/_config/data", flush_data)
    app.router.add_post("/_config/webhooks/{id}", config_webhook)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


# --- the localstripe child ---------------------------------------------------------------------


async def spawn_localstripe(dump: Path | None = None) -> tuple[asyncio.subprocess.Process, str]:
    """Start localstripe on a fresh 127.0.0.1 port; returns the process and its URL.

    ``dump``: localstripe loads its store from this file and saves it there after each write."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((DEFAULT_HOST, 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _BACKEND_SCRIPT,
            str(sock.fileno()),
            str(dump or ""),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            pass_fds=(sock.fileno(),),
        )
    finally:
        sock.close()  # the child holds its own copy
    return process, f"http://{DEFAULT_HOST}:{port}"


async def _wait_until_serving(session: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process) -> None:
    """One authenticated GET: it queues on the listening socket until the child serves it."""
    probe = session.get(
        f"{url}/v1/balance",
        headers={"Authorization": "Bearer sk_test_sandbox_probe"},
        timeout=aiohttp.ClientTimeout(total=BACKEND_START_TIMEOUT_S),
    )
    try:
        async with probe as response:
            if response.status == 200:
                return
            detail = f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = repr(exc)
    await stop_localstripe(process)
    raise RuntimeError(f"localstripe did not start (exit code {process.returncode}): {detail}")


async def stop_localstripe(process: asyncio.subprocess.Process) -> None:
    if process.stdin is not None:
        process.stdin.close()  # the child's watcher sees EOF and exits
    if process.returncode is None:
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            process.kill()
            await process.wait()


# --- control-plane helpers ---------------------------------------------------------------------


async def register_webhook(
    api_base: str,
    url: str,
    secret: str,
    *,
    events: Sequence[str] | None = None,
    webhook_id: str = "jobctl",
) -> None:
    """Make localstripe POST its events to ``url``, signed with ``secret`` (``whsec_...``).

    ``events`` limits the event types (all when None); registering the same id again replaces it.
    """
    payload: dict[str, Any] = {"url": url, "secret": secret}
    if events is not None:
        payload["events"] = list(events)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{api_base.rstrip('/')}/_config/webhooks/{webhook_id}", json=payload) as response:
            if response.status >= 300:
                raise RuntimeError(f"localstripe refused the webhook: HTTP {response.status} {await response.text()}")


async def flush(api_base: str) -> None:
    """Forget every object and every stored idempotency key."""
    async with aiohttp.ClientSession() as session:
        async with session.delete(f"{api_base.rstrip('/')}/_config/data") as response:
            response.raise_for_status()


# --- running it --------------------------------------------------------------------------------


class StripeSandbox:
    """A sandbox listening on ``host:port`` (port 0: an ephemeral port, reported by ``url``).

    ``async with StripeSandbox() as sandbox: client = stripe_client("sk_test_x", sandbox.url)``
    """

    def __init__(self, **app_options: Any) -> None:
        self.app = create_app(**app_options)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the Stripe sandbox is not started")
        return self._url

    @property
    def idempotency(self) -> IdempotencyStore:
        return self.app[STORE]

    async def start(self, host: str = DEFAULT_HOST, port: int = 0) -> StripeSandbox:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()  # starts localstripe
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = f"http://{_url_host(bound_host)}:{bound_port}"
        log.info("stripe_sandbox.listening", url=self._url, backend=self.app[BACKEND].url)
        return self

    def backend_alive(self) -> bool:
        """Whether the localstripe child still runs (the dev stack's supervisor asks)."""
        process = self.app[BACKEND].process
        return process is None or process.returncode is None

    async def restart_backend(self) -> None:
        """A new localstripe child on the same store (its dump file) after the last one died, with
        the webhooks registered again; requests go to it from then on."""
        backend, options = self.app[BACKEND], self.app[OPTIONS]
        assert backend.session is not None and backend.process is not None, "not started with its own child"
        await stop_localstripe(backend.process)  # reaps it (it is dead: this returns at once)
        dump = options.data_dir / "localstripe.pickle" if options.data_dir else None
        process, url = await spawn_localstripe(dump)
        await _wait_until_serving(backend.session, url, process)
        await _replay_webhooks(backend.session, url, self.app[CHECKOUT])
        backend.process, backend.url = process, url
        log.info("stripe_sandbox.backend_restarted", backend=url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("stripe_sandbox.stopped", url=self._url)

    async def __aenter__(self) -> StripeSandbox:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def register_webhook(self, url: str, secret: str, *, events: Sequence[str] | None = None) -> None:
        await register_webhook(self.url, url, secret, events=events)

    async def reset(self) -> None:
        await flush(self.url)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve_until_signalled(host: str, port: int, **app_options: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sandbox = await StripeSandbox(**app_options).start(host, port)
    try:
        await stop.wait()
    finally:
        await sandbox.stop()


def run(
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    *,
    on_concurrent: OnConcurrent = "wait",
    data_dir: str | None = None,
    rate_limit: float | None = None,
) -> None:
    """``jobctl stripe-sandbox``: serve until SIGINT/SIGTERM."""
    asyncio.run(
        serve_until_signalled(host, port, on_concurrent=on_concurrent, data_dir=data_dir, rate_limit=rate_limit)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stripe-sandbox", description="localstripe with Stripe's idempotency.")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--on-concurrent", choices=("wait", "conflict"), default="wait")
    parser.add_argument("--data-dir", default=None, help="persist the sandbox's objects here (default: in memory)")
    parser.add_argument("--rate-limit", type=float, default=None, help="API requests/s; Stripe's 429 above it")
    args = parser.parse_args(argv)
    try:
        run(args.port, args.host, on_concurrent=args.on_concurrent, data_dir=args.data_dir, rate_limit=args.rate_limit)
    except OSError as exc:
        log.error("stripe_sandbox.cannot_listen", host=args.host, port=args.port, error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
