"""The only code that talks to Twilio, through the real `twilio` SDK (async client).

`TWILIO_API_BASE` points the SDK at the emulator in dev and tests (the `api` domain's base
URL); everything else is the SDK's own.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry.trace import Span
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from activities.provider_metrics import count_provider_call, outcome_of
from activities.tracing import provider_call


class _AsyncHttpClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client, plus the default timeout it otherwise ignores.

    ``AsyncTwilioHttpClient`` passes the per-call timeout (always None from ``create_async``)
    straight to aiohttp, where None means no timeout at all; and it authenticates through
    aiohttp's deprecated ``auth=BasicAuth``, so the header is built here instead. No
    HTTP-level retries: a retried create is a duplicate message; retries belong to Temporal.
    Each call is counted (`provider_requests_total{provider="twilio"}`, activities/provider_metrics.py).
    """

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers = {**(headers or {}), "Authorization": f"Basic {token}"}
        try:
            response = await super().request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                auth=None,
                timeout=timeout if timeout is not None else self.timeout,
                allow_redirects=allow_redirects,
            )
        except Exception:
            count_provider_call("twilio", "network")
            raise
        count_provider_call("twilio", outcome_of(response.status_code))
        return response


def twilio_client(
    base_url: str | None,
    account_sid: str,
    auth_token: str,
    *,
    async_client: bool = False,
    timeout: float = 10.0,
) -> Client:
    """A real ``twilio.rest.Client``; pointed at ``base_url`` (the emulator) unless it is None.

    The Messages API lives on the SDK's ``api`` domain, whose ``base_url`` is
    ``https://api.twilio.com``; every URL the SDK builds for it, next-page links included,
    is ``domain.base_url + uri``, so replacing that one attribute redirects the whole API.
    Edge/region routing rewrites host names and is switched off for an emulator.

    With ``async_client=True`` use ``create_async``/``fetch_async``/``list_async``, build the
    client inside the running event loop, and close it with ``close_twilio_client``.
    """
    http_client = _AsyncHttpClient(timeout=timeout) if async_client else TwilioHttpClient(timeout=timeout)
    client = Client(account_sid, auth_token, http_client=http_client)
    if base_url:
        client.edge = None
        client.region = None
        client.api.base_url = base_url.rstrip("/")
    return client


async def close_twilio_client(client: Client) -> None:
    """Release the client's connection pool (aiohttp session or requests session)."""
    http_client = client.http_client
    if isinstance(http_client, AsyncTwilioHttpClient):
        await http_client.close()
    elif isinstance(http_client, TwilioHttpClient) and http_client.session is not None:
        http_client.session.close()


@asynccontextmanager
async def async_twilio_client(
    base_url: str | None, account_sid: str, auth_token: str, *, timeout: float = 10.0
) -> AsyncIterator[Client]:
    """``async with async_twilio_client(url, sid, token) as client: await client.messages.create_async(...)``"""
    client = twilio_client(base_url, account_sid, auth_token, async_client=True, timeout=timeout)
    try:
        yield client
    finally:
        await close_twilio_client(client)


def _channel(to: str) -> str:
    """`whatsapp` or `sms`: what a span may say about the recipient (never the number)."""
    return "whatsapp" if to.startswith("whatsapp:") else "sms"


@contextmanager
def _twilio_outcome(span: Span) -> Iterator[None]:
    """Twilio's refusal on the span: the HTTP status and Twilio's error code (21610, 63016, ...),
    not its message, which may quote the number."""
    try:
        yield
    except TwilioRestException as exc:
        span.set_attribute("http.response.status_code", int(exc.status))
        if exc.code is not None:
            span.set_attribute("twilio.error_code", int(exc.code))
        raise


@dataclass(frozen=True)
class Accepted:
    sid: str
    status: str


@dataclass(frozen=True)
class Sent:
    sid: str
    body: str


class TwilioGateway:
    """Send, and look up what was sent (to resolve an ambiguous send after a crash).

    Whether a recipient's WhatsApp session is open is not asked here: the inbound webhook records
    it (`whatsapp_sessions`) and the send path reads it, without a Twilio call per send."""

    def __init__(self, client: Client, status_callback: str | None = None) -> None:
        self._client = client
        self._status_callback = status_callback

    async def send(
        self,
        *,
        to: str,
        from_: str,
        body: str | None = None,
        content_sid: str | None = None,
        content_variables: str | None = None,
    ) -> Accepted:
        kwargs: dict[str, Any] = {"to": to, "from_": from_}
        if content_sid:
            kwargs["content_sid"] = content_sid
            if content_variables:
                kwargs["content_variables"] = content_variables
        else:
            kwargs["body"] = body
        if self._status_callback:
            kwargs["status_callback"] = self._status_callback
        attributes: dict[str, str | bool] = {"twilio.channel": _channel(to), "twilio.template": bool(content_sid)}
        with provider_call("twilio", "messages.create", attributes) as span, _twilio_outcome(span):
            message = await self._client.messages.create_async(**kwargs)
            span.set_attribute("twilio.message_sid", message.sid)
            span.set_attribute("twilio.message_status", message.status or "")
        return Accepted(sid=message.sid, status=message.status)

    async def sent_since(self, *, to: str, from_: str, since: datetime) -> list[Sent]:
        """Messages from `from_` to `to` created since `since` (Twilio's seconds), newest first.

        Lists by `To` and `From` only: a DateSent filter would miss a message that is still queued.
        """
        floor = since.replace(microsecond=0)
        with provider_call("twilio", "messages.list", {"twilio.channel": _channel(to)}) as span, _twilio_outcome(span):
            listed = await self._client.messages.list_async(to=to, from_=from_, limit=100)
        return [Sent(sid=m.sid, body=m.body or "") for m in listed if not (m.date_created and m.date_created < floor)]

    async def close(self) -> None:
        await close_twilio_client(self._client)


__all__ = ["Accepted", "Sent", "TwilioGateway", "TwilioRestException", "twilio_client"]
