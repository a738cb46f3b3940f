"""The only code that talks to Twilio, through the real `twilio` SDK (async client).

`TWILIO_API_BASE` points the SDK at the emulator in dev and tests by rewriting the
`https://api.twilio.com` prefix in the SDK's HTTP client; everything else is the SDK's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

TWILIO_API = "https://api.twilio.com"


class _RebasedHttpClient(AsyncTwilioHttpClient):
    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._base_url = base_url.rstrip("/")

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any):  # type: ignore[override]
        if url.startswith(TWILIO_API):
            url = self._base_url + url[len(TWILIO_API):]
        return await super().request(method, url, *args, **kwargs)


def twilio_client(account_sid: str, auth_token: str, base_url: str | None = None, *, timeout: float = 10.0) -> Client:
    """An async-capable SDK client; `base_url` None means real Twilio."""
    http = _RebasedHttpClient(base_url, timeout) if base_url else AsyncTwilioHttpClient(timeout=timeout)
    return Client(account_sid, auth_token, http_client=http)


@dataclass(frozen=True)
class Accepted:
    sid: str
    status: str


class TwilioGateway:
    """Send, and look up what was sent (to resolve an ambiguous send after a crash)."""

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
        message = await self._client.messages.create_async(**kwargs)
        return Accepted(sid=message.sid, status=message.status)

    async def find_sent(self, *, to: str, since: datetime, body: str | None, content_sid: str | None) -> str | None:
        """The sid of a message to `to` created since `since` with this body, if Twilio has one."""
        messages = await self._client.messages.list_async(to=to, date_sent_after=since, limit=200)
        for message in messages:
            if message.date_created and message.date_created < since.replace(microsecond=0):
                continue
            if body is not None and message.body == body:
                return message.sid
            if content_sid is not None and getattr(message, "body", None) is not None and body is None:
                return message.sid
        return None

    async def close(self) -> None:
        http = self._client.http_client
        if isinstance(http, AsyncTwilioHttpClient):
            await http.close()


__all__ = ["Accepted", "TwilioGateway", "TwilioRestException", "twilio_client"]
