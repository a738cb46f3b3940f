"""Twilio emulator: the Messages API subset jobctl uses, served over HTTP for dev and tests.

Why it exists: the product talks to Twilio only through the real ``twilio`` SDK, and the
outbox's guarantees (one message per idempotency key under 5xx, 429s and ``kill -9``) can only
be tested against a Twilio that

- answers with Twilio's own JSON shapes, paging and error bodies, so the SDK behaves exactly
  as in production (``TwilioRestException`` with ``.status`` and ``.code``);
- fails on demand: the documented magic test numbers, a token-bucket rate limit (429/20429),
  injected 5xx and latency, closed WhatsApp sessions (63016), undelivered messages;
- delivers: signed status callbacks ``queued`` -> ``sent`` -> ``delivered`` (or ``failed`` /
  ``undelivered``), and fetch/list follow the same lifecycle;
- records every message it accepted, so a test counts exactly what was sent.

Real Twilio test credentials give the first point only (no list, no callbacks, no faults).

Twilio API (HTTP basic auth ``AccountSid:AuthToken``):
  ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``     create
  ``GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`` fetch
  ``GET  /2010-04-01/Accounts/{AccountSid}/Messages.json``     list (To, From, DateSent[<>])
Control plane (no auth; bind to loopback):
  ``GET|DELETE /_emulator/messages[?to=]``, ``GET /_emulator/stats``, ``GET|POST /_emulator/config``,
  ``POST /_emulator/inbound`` (a recipient's message: it opens their 24 h WhatsApp session, and is
  posted, signed, to ``inbound_webhook`` when set, as Twilio posts it to the number's webhook)

Strict mode (``strict``, issue #35) is Twilio's WhatsApp rules: a freeform message outside the
recipient's 24 h session is refused with 63016, a ContentSid the account has no approved template
for with 21655, ContentVariables that are not a JSON object filling the template with 21656. The
approved templates are ``content_templates`` (SID → body with ``{{1}}`` variables); the dev stack
registers the catalogue's (``config/templates.toml``) and gives the workers their SIDs.

A create passes the same gates as at Twilio, in this order: latency, auth (401/20003), its sender's rate
limit (429/20429; each `From` has its own bucket, `--rate-limit` or `--sender-rate`), injected
fault (500/503), validation and magic numbers (400), and only then
is the message accepted (201) and recorded. A refused request never records a message.

The product reaches it only through the real SDK (``activities.messaging.twilio_gateway``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import json
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Final, Literal
from urllib.parse import urlencode

import aiohttp
import structlog
from aiohttp import web
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from activities.messaging.twilio_gateway import twilio_client
from devtools.token_bucket import TokenBucket

log = structlog.get_logger(__name__)

DEFAULT_ACCOUNT_SID: Final = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN: Final = "emulator-auth-token"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8089
DEFAULT_STATUS_DELAY_MS: Final = 20
API_VERSION: Final = "2010-04-01"
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
CALLBACK_TIMEOUT_S: Final = 5.0

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
_CHANNELS: Final = ("whatsapp", "messenger", "rcs")


# --- Twilio errors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TwilioError:
    """A Twilio REST error: the body Twilio answers with and its HTTP status."""

    code: int
    message: str
    status: int = 400

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }

    def response(self) -> web.Response:
        headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if self.status == 401 else None
        return web.json_response(self.body(), status=self.status, headers=headers)


UNAUTHORIZED: Final = TwilioError(20003, "Authenticate", 401)
TOO_MANY_REQUESTS: Final = TwilioError(20429, "Too Many Requests", 429)
INJECTED_FAULTS: Final = (
    TwilioError(20500, "An internal server error has occurred", 500),
    TwilioError(20503, "Service is unavailable. Please try again later.", 503),
)
SESSION_CLOSED_CODE: Final = 63016
SESSION_WINDOW: Final = timedelta(hours=24)
INVALID_CONTENT_SID: Final = TwilioError(21655, "The ContentSid is Invalid")
INVALID_CONTENT_VARIABLES: Final = TwilioError(21656, "The ContentVariables Parameter is invalid")
_CONTENT_SID: Final = re.compile(r"^HX[0-9a-fA-F]{32}$")
_CONTENT_PLACEHOLDER: Final = re.compile(r"\{\{(\d+)\}\}")
SESSION_CLOSED_MESSAGE: Final = (
    "Failed to send freeform message because you are outside the allowed window. "
    "If you are using WhatsApp, please use a Message Template."
)

# Twilio's test-credential magic numbers (docs/ARCHITECTURE.md §6); messages take {to} and {from_}.
_INVALID_FROM: Final = "The 'From' number {from_} is not a valid phone number, shortcode, or alphanumeric sender ID."
MAGIC_FROM: Final[Mapping[str, tuple[int, str]]] = {
    "+15005550001": (21212, _INVALID_FROM),
    "+15005550007": (
        21606,
        "The 'From' phone number provided ({from_}) is not a valid message-capable Twilio phone number "
        "for this destination.",
    ),
    "+15005550008": (21611, "This 'From' number has exceeded the maximum number of queued messages"),
}
MAGIC_TO: Final[Mapping[str, tuple[int, str]]] = {
    "+15005550001": (21211, "The 'To' number {to} is not a valid phone number."),
    "+15005550002": (
        21612,
        "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number: {from_} via SMS.",
    ),
    "+15005550003": (
        21408,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}.",
    ),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}
REFUSAL_MESSAGES: Final[Mapping[int, str]] = {
    **{code: text for code, text in MAGIC_TO.values()},
    # WhatsApp's refusals, for ``refusals`` on a ``whatsapp:`` address (a template send refused too).
    SESSION_CLOSED_CODE: SESSION_CLOSED_MESSAGE,
    63003: "Channel could not find To address",
    63024: "Invalid message recipient",
}
DELIVERY_ERROR_MESSAGES: Final[Mapping[int, str]] = {
    30001: "Queue overflow",
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
    SESSION_CLOSED_CODE: SESSION_CLOSED_MESSAGE,
}


def _magic_error(table: Mapping[str, tuple[int, str]], number: str, *, to: str, from_: str) -> TwilioError | None:
    if number not in table:
        return None
    code, template = table[number]
    return TwilioError(code, template.format(to=to, from_=from_))


# --- addresses ---------------------------------------------------------------------------------


def split_channel(address: str) -> tuple[str, str]:
    """``"whatsapp:+1555..."`` -> ``("whatsapp", "+1555...")``; a bare number is ``("sms", number)``."""
    prefix, sep, rest = address.partition(":")
    if sep and prefix.lower() in _CHANNELS:
        return prefix.lower(), rest
    return "sms", address


def channel_address(address: str) -> str:
    """One spelling per address: ``"whatsapp:+1555..."``, or the bare number for SMS."""
    channel, number = split_channel(address.strip())
    return number if channel == "sms" else f"{channel}:{number}"


def normalize_number(address: str) -> str:
    """The phone number behind an address, without its channel prefix."""
    return split_channel(address.strip())[1]


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryFailure:
    """How a message to a given number ends: ``failed`` (never sent) or ``undelivered``."""

    status: Literal["failed", "undelivered"]
    error_code: int

    @classmethod
    def parse(cls, value: Any) -> DeliveryFailure:
        """Accept ``30003`` (undelivered) or ``{"status": "failed", "error_code": 30008}``."""
        if isinstance(value, DeliveryFailure):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls("undelivered", value)
        if isinstance(value, Mapping) and value.get("status") in ("failed", "undelivered"):
            code = value.get("error_code")
            if isinstance(code, int) and not isinstance(code, bool):
                return cls(value["status"], code)
        raise ValueError(f"delivery failure must be an error code or {{status, error_code}}, got {value!r}")


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything a test or the chaos suite may change at runtime (``POST /_emulator/config``)."""

    rate_limit: float | None = None
    """Messages per second per sender (each `From`, as at Twilio), 429 (20429) above it; None: no limit."""
    sender_rates: Mapping[str, float] = field(default_factory=dict)
    """Sender number -> its own messages per second, over ``rate_limit`` (on each of its channels)."""
    fail_rate: float = 0.0
    latency_ms: int = 0
    accept_delay_ms: int = 0
    """Between admitting a create and recording it, as a slow network would: a lookup made meanwhile
    does not find the message yet (the race an outbox lease has to win)."""
    status_delay_ms: int = DEFAULT_STATUS_DELAY_MS
    whatsapp_session_closed: frozenset[str] = frozenset()
    session_closed_error: Literal["sync", "async"] = "sync"
    delivery_failures: Mapping[str, DeliveryFailure] = field(default_factory=dict)
    refusals: Mapping[str, int] = field(default_factory=dict)
    strict: bool = False
    """As Twilio is: a freeform WhatsApp message is refused (63016) unless the recipient wrote to
    the sender in the last 24 hours (``POST /_emulator/inbound``), and a ContentSid must be one of
    ``content_templates`` (21655) with valid ContentVariables (21656)."""
    content_templates: Mapping[str, str] = field(default_factory=dict)
    """The account's approved Content templates: SID → body with ``{{1}}``-style variables. Not
    empty: an unknown ContentSid is refused (21655) even when not strict."""
    inbound_webhook: str | None = None
    """Our numbers' incoming-message webhook: ``POST /_emulator/inbound`` posts the message there,
    signed as Twilio signs it, before it answers (None: recorded only)."""
    """Addresses (``"+1555..."`` for SMS, ``"whatsapp:+1555..."``) refused with a Twilio error code, as
    the magic numbers are but on one channel only: a number that unsubscribed from SMS (21610) while
    its WhatsApp stays open, which the magic numbers (refused on every channel) cannot show."""

    def __post_init__(self) -> None:
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError("rate_limit must be > 0 (or null for no limit)")
        if any(not rate > 0 for rate in self.sender_rates.values()):
            raise ValueError("sender_rates must be > 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be within [0, 1]")
        if self.latency_ms < 0 or self.status_delay_ms < 0 or self.accept_delay_ms < 0:
            raise ValueError("latency_ms, accept_delay_ms and status_delay_ms must be >= 0")
        if self.session_closed_error not in ("sync", "async"):
            raise ValueError("session_closed_error must be 'sync' or 'async'")
        if unknown := sorted(set(self.refusals.values()) - set(REFUSAL_MESSAGES)):
            raise ValueError(f"refusals: unknown error codes {unknown}; known: {sorted(REFUSAL_MESSAGES)}")

    def updated(self, patch: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with ``patch`` (JSON from the control plane) applied; ValueError if invalid."""
        unknown = set(patch) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name, value in patch.items():
            values[name] = _coerce_setting(name, value)
        return EmulatorConfig(**values)

    def as_json(self) -> dict[str, Any]:
        return {
            "rate_limit": self.rate_limit,
            "sender_rates": dict(sorted(self.sender_rates.items())),
            "fail_rate": self.fail_rate,
            "latency_ms": self.latency_ms,
            "accept_delay_ms": self.accept_delay_ms,
            "status_delay_ms": self.status_delay_ms,
            "whatsapp_session_closed": sorted(self.whatsapp_session_closed),
            "session_closed_error": self.session_closed_error,
            "delivery_failures": {
                number: {"status": f.status, "error_code": f.error_code}
                for number, f in sorted(self.delivery_failures.items())
            },
            "refusals": dict(sorted(self.refusals.items())),
            "strict": self.strict,
            "content_templates": dict(sorted(self.content_templates.items())),
            "inbound_webhook": self.inbound_webhook,
        }


def _coerce_setting(name: str, value: Any) -> Any:
    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{name} must be a number")
        return float(v)

    match name:
        case "rate_limit":
            return None if value is None else number(value)
        case "fail_rate":
            return number(value)
        case "sender_rates":
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} must map sender numbers to messages per second")
            return {normalize_number(str(k)): number(v) for k, v in value.items()}
        case "latency_ms" | "accept_delay_ms" | "status_delay_ms":
            return int(number(value))
        case "whatsapp_session_closed":
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ValueError(f"{name} must be a list of numbers")
            return frozenset(normalize_number(str(v)) for v in value)
        case "delivery_failures":
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} must map numbers to failures")
            return {normalize_number(str(k)): DeliveryFailure.parse(v) for k, v in value.items()}
        case "refusals":
            if not isinstance(value, Mapping) or not all(
                isinstance(code, int) and not isinstance(code, bool) for code in value.values()
            ):
                raise ValueError(f"{name} must map addresses to Twilio error codes")
            return {channel_address(str(k)): code for k, code in value.items()}
        case "inbound_webhook":
            if value is not None and not (isinstance(value, str) and value.startswith(("http://", "https://"))):
                raise ValueError(f"{name} must be an http(s) URL or null")
            return value
        case "strict":
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
            return value
        case "content_templates":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and _CONTENT_SID.match(k) and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError(f"{name} must map Content SIDs (HX + 32 hex) to template bodies")
            return dict(value)
        case _:
            return value


# --- messages ----------------------------------------------------------------------------------


def _now() -> datetime:
    """Twilio's timestamps have second resolution; filters compare what clients see."""
    return datetime.now(UTC).replace(microsecond=0)


def _rfc2822(value: datetime | None) -> str | None:
    return format_datetime(value) if value is not None else None


def _num_segments(body: str, channel: str) -> int:
    if channel != "sms" or not body:
        return 1
    single, multi = (160, 153) if body.isascii() else (70, 67)
    return 1 if len(body) <= single else -(-len(body) // multi)


@dataclass
class Message:
    """One accepted outbound message; ``seq`` orders the store (and backs the page tokens)."""

    seq: int
    sid: str
    account_sid: str
    to: str
    from_: str | None
    body: str
    content_sid: str | None
    content_variables: str | None
    messaging_service_sid: str | None
    status_callback: str | None
    status: str
    date_created: datetime
    date_updated: datetime
    date_sent: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None
    price: str | None = None
    accepted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    direction: str = "outbound-api"
    """``inbound`` for a message a recipient sent us (``POST /_emulator/inbound``)."""
    """Full precision, for the log only: rate measurements need more than Twilio's seconds."""

    @property
    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"

    def to_twilio_json(self) -> dict[str, Any]:
        """The Message resource exactly as Twilio's 2010-04-01 API renders it."""
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": _rfc2822(self.date_created),
            "date_sent": _rfc2822(self.date_sent),
            "date_updated": _rfc2822(self.date_updated),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(_num_segments(self.body, split_channel(self.to)[0])),
            "price": self.price,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": self.uri.removesuffix(".json") + "/Media.json"},
            "to": self.to,
            "uri": self.uri,
        }

    def to_log_json(self) -> dict[str, Any]:
        """The emulator log's view: what was asked for, and where it is now."""
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "content_sid": self.content_sid,
            "content_variables": self.content_variables,
            "messaging_service_sid": self.messaging_service_sid,
            "status_callback": self.status_callback,
            "status": self.status,
            "error_code": self.error_code,
            "date_created": self.date_created.isoformat(),
            "date_sent": self.date_sent.isoformat() if self.date_sent else None,
            "accepted_at": self.accepted_at.isoformat(),
            "direction": self.direction,
        }

    def inbound_params(self) -> dict[str, str]:
        """The form Twilio POSTs to the number's incoming-message webhook (no time in it)."""
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "Body": self.body,
            "From": self.from_ or "",
            "MessageSid": self.sid,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsMessageSid": self.sid,
            "SmsSid": self.sid,
            "SmsStatus": "received",
            "To": self.to,
        }

    def callback_params(self) -> dict[str, str]:
        """The form Twilio POSTs to the StatusCallback URL."""
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "From": self.from_ or "",
            "MessageSid": self.sid,
            "MessageStatus": self.status,
            "SmsSid": self.sid,
            "SmsStatus": self.status,
            "To": self.to,
        }
        if self.messaging_service_sid:
            params["MessagingServiceSid"] = self.messaging_service_sid
        if self.error_code is not None:
            params["ErrorCode"] = str(self.error_code)
        return params


@dataclass(frozen=True)
class CreateRequest:
    """The create form, as the SDK sends it (``values.of`` drops unset fields)."""

    to: str
    from_: str
    body: str
    content_sid: str
    content_variables: str
    messaging_service_sid: str
    status_callback: str
    media_url: str

    @classmethod
    def from_form(cls, form: Mapping[str, Any]) -> CreateRequest:
        def get(key: str, *, strip: bool = True) -> str:
            value = form.get(key)
            if not isinstance(value, str):
                return ""
            return value.strip() if strip else value

        return cls(
            to=get("To"),
            from_=get("From"),
            body=get("Body", strip=False),
            content_sid=get("ContentSid"),
            content_variables=get("ContentVariables"),
            messaging_service_sid=get("MessagingServiceSid"),
            status_callback=get("StatusCallback"),
            media_url=get("MediaUrl"),
        )


def validate_create(req: CreateRequest, config: EmulatorConfig, session_open: bool = True) -> TwilioError | None:
    """Twilio's synchronous 400s for a create, magic numbers included; None if acceptable.

    ``session_open``: the recipient wrote to the sender in the last 24 hours (strict mode only)."""
    if not req.to:
        return TwilioError(21604, "A 'To' phone number is required.")
    if not req.from_ and not req.messaging_service_sid:
        return TwilioError(21603, "A 'From' phone number is required.")
    if not (req.body or req.content_sid or req.media_url):
        return TwilioError(21602, "Message body is required.")
    if len(req.body) > 1600:
        return TwilioError(21617, "The concatenated message body exceeds the 1600 character limit.")
    to_channel, to_number = split_channel(req.to)
    if req.from_:
        from_channel, from_number = split_channel(req.from_)
        if error := _magic_error(MAGIC_FROM, from_number, to=req.to, from_=req.from_):
            return error
        if not (_E164.match(from_number) or (from_channel == "sms" and _ALPHANUMERIC_SENDER.match(from_number))):
            return TwilioError(21212, _INVALID_FROM.format(from_=req.from_))
        if from_channel != to_channel:
            return TwilioError(21910, "Invalid From and To pair. From and To should be of the same channel")
    if error := _magic_error(MAGIC_TO, to_number, to=req.to, from_=req.from_):
        return error
    if (code := config.refusals.get(channel_address(req.to))) is not None:
        return TwilioError(code, REFUSAL_MESSAGES[code].format(to=req.to, from_=req.from_))
    if not _E164.match(to_number):
        return TwilioError(21211, f"The 'To' number {req.to} is not a valid phone number.")
    if req.content_sid and (error := _content_error(req, config)):
        return error
    if _session_closed(req, config, session_open) and config.session_closed_error == "sync":
        return TwilioError(SESSION_CLOSED_CODE, SESSION_CLOSED_MESSAGE)
    return None


def _content_error(req: CreateRequest, config: EmulatorConfig) -> TwilioError | None:
    """21655 for a ContentSid the account has no template for, 21656 for variables that do not fill it."""
    if not (config.strict or config.content_templates):
        return None
    template = config.content_templates.get(req.content_sid)
    if template is None:
        return INVALID_CONTENT_SID
    needed = set(_CONTENT_PLACEHOLDER.findall(template))
    if not req.content_variables:
        return INVALID_CONTENT_VARIABLES if needed else None
    try:
        variables = json.loads(req.content_variables)
    except ValueError:
        return INVALID_CONTENT_VARIABLES
    if not isinstance(variables, dict) or not all(
        isinstance(v, str) and v.strip() and not re.search(r"[\n\t]| {5,}", v) for v in variables.values()
    ):
        return INVALID_CONTENT_VARIABLES
    return INVALID_CONTENT_VARIABLES if needed - set(variables) else None


def render_content(req: CreateRequest, config: EmulatorConfig) -> str:
    """The body Twilio shows for a template send: the template with its variables filled in."""
    template = config.content_templates.get(req.content_sid)
    if template is None:
        return req.body
    try:
        variables = json.loads(req.content_variables or "{}")
    except ValueError:
        variables = {}
    return _CONTENT_PLACEHOLDER.sub(lambda m: str(variables.get(m.group(1), m.group(0))), template)


def _session_closed(req: CreateRequest, config: EmulatorConfig, session_open: bool = True) -> bool:
    """A freeform WhatsApp message (no approved template) to a number whose 24 h window is closed:
    listed in ``whatsapp_session_closed``, or (strict) with no inbound message in 24 hours."""
    channel, number = split_channel(req.to)
    if channel != "whatsapp" or req.content_sid:
        return False
    return number in config.whatsapp_session_closed or (config.strict and not session_open)


Lifecycle = list[tuple[str, int | None]]


def lifecycle(req: CreateRequest, config: EmulatorConfig, session_open: bool = True) -> Lifecycle:
    """The statuses an accepted message goes through, each with its error code (if any)."""
    steps: Lifecycle = [("accepted", None)] if req.messaging_service_sid and not req.from_ else []
    steps.append(("queued", None))
    if _session_closed(req, config, session_open):  # only reached in "async" mode: Twilio accepts, then fails
        return [*steps, ("failed", SESSION_CLOSED_CODE)]
    failure = config.delivery_failures.get(normalize_number(req.to))
    if failure is None:
        return [*steps, ("sent", None), ("delivered", None)]
    if failure.status == "failed":
        return [*steps, ("failed", failure.error_code)]
    return [*steps, ("sent", None), ("undelivered", failure.error_code)]


class MessageStore:
    """Accepted messages in acceptance order: the Twilio resource and the emulator log at once."""

    def __init__(self) -> None:
        self._messages: dict[str, Message] = {}
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add(self, message: Message) -> None:
        self._messages[message.sid] = message

    def get(self, sid: str) -> Message | None:
        return self._messages.get(sid)

    def oldest_first(self) -> list[Message]:
        return list(self._messages.values())

    def newest_first(self) -> list[Message]:
        return list(reversed(self._messages.values()))

    def clear(self) -> int:
        count = len(self._messages)
        self._messages.clear()
        return count


# --- list filters and paging -------------------------------------------------------------------


def _parse_date_filter(raw: str) -> date | datetime:
    """``YYYY-MM-DD`` (a whole UTC day) or an ISO 8601 instant such as ``2024-05-01T10:00:00Z``."""
    if len(raw) == 10:
        return date.fromisoformat(raw)
    parsed = datetime.fromisoformat(raw)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _date_matches(sent: datetime | None, op: str, bound: date | datetime) -> bool:
    """Twilio filters on ``date_sent``, inclusively; a message not yet sent matches no DateSent filter.

    A date bound compares days; an instant compares instants, except ``DateSent=`` (a day).
    """
    if sent is None:
        return False
    if op == "=":
        return sent.date() == (bound.date() if isinstance(bound, datetime) else bound)
    if isinstance(bound, datetime):
        return sent <= bound if op == "<" else sent >= bound
    return sent.date() <= bound if op == "<" else sent.date() >= bound


@dataclass(frozen=True)
class ListQuery:
    to: str | None
    from_: str | None
    date_filters: tuple[tuple[str, date | datetime], ...]
    page: int
    page_size: int
    page_token: str | None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ListQuery:
        filters: list[tuple[str, date | datetime]] = []
        for key, op in (("DateSent", "="), ("DateSent<", "<"), ("DateSent>", ">")):
            if raw := query.get(key):
                filters.append((op, _parse_date_filter(raw)))
        page_size = int(query.get("PageSize") or DEFAULT_PAGE_SIZE)
        page = int(query.get("Page") or 0)
        if not 1 <= page_size <= MAX_PAGE_SIZE or page < 0:
            raise ValueError("PageSize must be within [1, 1000] and Page >= 0")
        return cls(
            to=query.get("To") or None,
            from_=query.get("From") or None,
            date_filters=tuple(filters),
            page=page,
            page_size=page_size,
            page_token=query.get("PageToken") or None,
        )

    def matches(self, m: Message) -> bool:
        if self.to is not None and m.to != self.to:
            return False
        if self.from_ is not None and m.from_ != self.from_:
            return False
        return all(_date_matches(m.date_sent, op, bound) for op, bound in self.date_filters)

    def filter_params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.to is not None:
            params["To"] = self.to
        if self.from_ is not None:
            params["From"] = self.from_
        names = {"=": "DateSent", "<": "DateSent<", ">": "DateSent>"}
        for op, bound in self.date_filters:
            is_instant = isinstance(bound, datetime)
            params[names[op]] = bound.strftime("%Y-%m-%dT%H:%M:%SZ") if is_instant else bound.isoformat()
        return params


def _select_page(matching: list[Message], q: ListQuery) -> list[Message]:
    """Newest first. ``PA<seq>``: the page after (older than) seq; ``PB<seq>``: the page before it."""
    token = q.page_token
    if token and token[:2] in ("PA", "PB") and token[2:].isdigit():
        seq = int(token[2:])
        if token.startswith("PA"):
            return [m for m in matching if m.seq < seq][: q.page_size]
        return [m for m in matching if m.seq > seq][-q.page_size :]
    start = q.page * q.page_size
    return matching[start : start + q.page_size]


def render_page(matching: list[Message], q: ListQuery, path: str) -> dict[str, Any]:
    """Twilio's 2010-04-01 list envelope; page links are URIs relative to the API host."""
    items = _select_page(matching, q)
    base = {**q.filter_params(), "PageSize": str(q.page_size)}

    def link(page: int, token: str | None = None) -> str:
        params = {**base, "Page": str(page), **({"PageToken": token} if token else {})}
        return f"{path}?{urlencode(params)}"

    older = bool(items) and any(m.seq < items[-1].seq for m in matching)
    newer = bool(items) and q.page > 0 and any(m.seq > items[0].seq for m in matching)
    start = q.page * q.page_size
    return {
        "end": start + max(len(items) - 1, 0),
        "first_page_uri": link(0),
        "messages": [m.to_twilio_json() for m in items],
        "next_page_uri": link(q.page + 1, f"PA{items[-1].seq}") if older else None,
        "page": q.page,
        "page_size": q.page_size,
        "previous_page_uri": link(q.page - 1, f"PB{items[0].seq}") if newer else None,
        "start": start,
        "uri": link(q.page, q.page_token),
    }


# --- the emulator's state ----------------------------------------------------------------------


STAT_KEYS: Final = (
    "accepted",  # 201: recorded in the log
    "rate_limited",  # 429 / 20429
    "faults",  # injected 500 / 503
    "rejected",  # 400: validation, magic numbers, 63016
    "unauthorized",  # 401 / 20003
    "listed",  # list requests answered (GET Messages.json): what a test checks a send did not make
    "callbacks_delivered",
    "callbacks_failed",
)


class EmulatorState:
    """All mutable state of one emulator, owned by its aiohttp app (``app[STATE]``)."""

    def __init__(self, account_sid: str, auth_token: str, config: EmulatorConfig, seed: int | None) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.validator = RequestValidator(auth_token)
        self.rng = random.Random(seed)
        self.store = MessageStore()
        self.stats: Counter[str] = Counter()
        self.config = config
        self.buckets: dict[str, TokenBucket] = {}  # one per sender (`From`), as Twilio limits
        self.rate_limited_by_sender: Counter[str] = Counter()
        self.http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # configuration

    def _bucket_for(self, from_: str) -> TokenBucket | None:
        """``from_``'s bucket: its own rate (``sender_rates``), else ``rate_limit``; None: no limit."""
        rate = self.config.sender_rates.get(normalize_number(from_), self.config.rate_limit)
        if rate is None:
            return None
        bucket = self.buckets.get(from_)
        if bucket is None:
            bucket = self.buckets[from_] = TokenBucket(rate, time.monotonic)
        return bucket

    def reconfigure(self, patch: Mapping[str, Any]) -> EmulatorConfig:
        new = self.config.updated(patch)
        if (new.rate_limit, new.sender_rates) != (self.config.rate_limit, self.config.sender_rates):
            self.buckets.clear()
        self.config = new
        log.info("twilio_emulator.configured", **new.as_json())
        return new

    # gates

    def authenticate(self, authorization: str | None, path_account_sid: str) -> bool:
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        return (
            hmac.compare_digest(user.encode(), self.account_sid.encode())
            and hmac.compare_digest(password.encode(), self.auth_token.encode())
            and path_account_sid == self.account_sid
        )

    def admit(self, from_: str) -> TwilioError | None:
        """The sender's rate limit, then the injected fault: decided before anything is accepted."""
        bucket = self._bucket_for(channel_address(from_))
        if bucket is not None and not bucket.try_take():
            self.stats["rate_limited"] += 1
            self.rate_limited_by_sender[channel_address(from_)] += 1
            return TOO_MANY_REQUESTS
        if self.config.fail_rate and self.rng.random() < self.config.fail_rate:
            self.stats["faults"] += 1
            return self.rng.choice(INJECTED_FAULTS)
        return None

    # messages

    def new_sid(self) -> str:
        return "SM" + f"{self.rng.getrandbits(128):032x}"

    def session_open(self, to: str, from_: str) -> bool:
        """Did ``to`` write to ``from_`` in the last 24 hours (an inbound message)?"""
        since = _now() - SESSION_WINDOW
        return any(
            m.direction == "inbound" and m.from_ == to and m.to == from_ and m.date_created >= since
            for m in self.store.newest_first()
        )

    def inbound(self, from_: str, to: str, body: str) -> Message:
        """A message a recipient sent us: it opens the WhatsApp session and lists like Twilio's."""
        now = _now()
        message = Message(
            seq=self.store.next_seq(),
            sid=self.new_sid(),
            account_sid=self.account_sid,
            to=to,
            from_=from_,
            body=body,
            content_sid=None,
            content_variables=None,
            messaging_service_sid=None,
            status_callback=None,
            status="received",
            date_created=now,
            date_updated=now,
            date_sent=now,
            direction="inbound",
        )
        self.store.add(message)
        return message

    def accept(self, req: CreateRequest, session_open: bool = True) -> Message:
        steps = lifecycle(req, self.config, session_open)
        now = _now()
        message = Message(
            seq=self.store.next_seq(),
            sid=self.new_sid(),
            account_sid=self.account_sid,
            to=req.to,
            from_=req.from_ or None,
            body=render_content(req, self.config) if req.content_sid else req.body,
            content_sid=req.content_sid or None,
            content_variables=req.content_variables or None,
            messaging_service_sid=req.messaging_service_sid or None,
            status_callback=req.status_callback or None,
            status=steps[0][0],
            date_created=now,
            date_updated=now,
        )
        self.store.add(message)
        self.stats["accepted"] += 1
        self._spawn(self._advance(message, steps))
        return message

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _advance(self, message: Message, steps: Lifecycle) -> None:
        """Walk the lifecycle; each status is visible to fetch/list before its callback goes out."""
        for status, error_code in steps:
            await asyncio.sleep(self.config.status_delay_ms / 1000)
            _set_status(message, status, error_code)
            if message.status_callback:
                await self.post_signed(message.status_callback, message.callback_params())

    async def post_signed(self, url: str, params: dict[str, str]) -> None:
        """POST one signed status callback (or inbound message); a failure is logged and otherwise
        ignored, as at Twilio."""
        assert self.http is not None, "the app's cleanup context opens the callback session"
        headers = {
            "X-Twilio-Signature": self.validator.compute_signature(url, params),
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "User-Agent": "TwilioProxy/1.1",
        }
        event = {"sid": params["MessageSid"], "status": params.get("MessageStatus", "received")}
        try:
            async with self.http.post(url, data=params, headers=headers) as response:
                ok = response.status < 400
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok = False
            log.warning("twilio_emulator.callback_failed", **event, error=repr(exc))
        else:
            if not ok:
                log.warning("twilio_emulator.callback_refused", **event, http_status=response.status)
        self.stats["callbacks_delivered" if ok else "callbacks_failed"] += 1

    async def open(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_S))

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()

    def stats_json(self) -> dict[str, Any]:
        """The counters, and the 429s by sender (`From`)."""
        return {key: self.stats[key] for key in STAT_KEYS} | {
            "rate_limited_by_sender": dict(sorted(self.rate_limited_by_sender.items()))
        }


def _set_status(message: Message, status: str, error_code: int | None) -> None:
    now = _now()
    message.status = status
    message.date_updated = now
    if status == "sent":
        message.date_sent = now
        message.price = f"-{0.0079 * _num_segments(message.body, split_channel(message.to)[0]):.5f}"
    if error_code is not None:
        message.error_code = error_code
        message.error_message = DELIVERY_ERROR_MESSAGES.get(error_code)


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


# --- HTTP --------------------------------------------------------------------------------------

STATE: Final = web.AppKey("twilio_emulator_state", EmulatorState)
_API_PREFIX: Final = f"/{API_VERSION}/Accounts/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def twilio_api_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency, then basic auth, for every Twilio API route; Twilio-style 404s for the rest."""
    if not request.path.startswith(_API_PREFIX):
        return await handler(request)
    state = request.app[STATE]
    if state.config.latency_ms:
        await asyncio.sleep(state.config.latency_ms / 1000)
    account_sid = request.path[len(_API_PREFIX) :].split("/", 1)[0]
    if not state.authenticate(request.headers.get("Authorization"), account_sid):
        state.stats["unauthorized"] += 1
        return UNAUTHORIZED.response()
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _not_found(request.path).response()
    except web.HTTPMethodNotAllowed:
        return TwilioError(20004, "Method not allowed", 405).response()


def _not_found(path: str) -> TwilioError:
    return TwilioError(20404, f"The requested resource {path} was not found", 404)


async def create_message(request: web.Request) -> web.Response:
    state = request.app[STATE]
    req = CreateRequest.from_form(await request.post())
    if refusal := state.admit(req.from_):
        return refusal.response()
    session_open = not state.config.strict or state.session_open(req.to, req.from_)
    if error := validate_create(req, state.config, session_open):
        state.stats["rejected"] += 1
        log.info("twilio_emulator.rejected", code=error.code, to=req.to)
        return error.response()
    if state.config.accept_delay_ms:
        await asyncio.sleep(state.config.accept_delay_ms / 1000)
    message = state.accept(req, session_open)
    log.debug("twilio_emulator.accepted", sid=message.sid, to=message.to)
    return web.json_response(message.to_twilio_json(), status=201)


async def fetch_message(request: web.Request) -> web.Response:
    message = request.app[STATE].store.get(request.match_info["sid"])
    if message is None:
        return _not_found(request.path).response()
    return web.json_response(message.to_twilio_json())


async def list_messages(request: web.Request) -> web.Response:
    try:
        query = ListQuery.parse(request.query)
    except ValueError as exc:
        return TwilioError(20001, f"Invalid parameter: {exc}").response()
    request.app[STATE].stats["listed"] += 1
    matching = [m for m in request.app[STATE].store.newest_first() if query.matches(m)]
    return web.json_response(render_page(matching, query, request.path))


async def emulator_messages(request: web.Request) -> web.Response:
    store = request.app[STATE].store
    if request.method == "DELETE":
        return web.json_response({"deleted": store.clear()})
    to = request.query.get("to")
    return web.json_response([m.to_log_json() for m in store.oldest_first() if to is None or m.to == to])


async def emulator_inbound(request: web.Request) -> web.Response:
    """``{"from": "whatsapp:+1555...", "to": <our sender>, "body": "hi"}``: a recipient's message,
    recorded as Twilio records one (it opens that recipient's 24 h WhatsApp session)."""
    try:
        data = await request.json()
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data[k] for k in ("from", "to")):
            raise ValueError("expected {from, to, body}")
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    state = request.app[STATE]
    message = state.inbound(data["from"], data["to"], str(data.get("body") or ""))
    if state.config.inbound_webhook:  # as Twilio does; answered after it, so the caller may rely on it
        await state.post_signed(state.config.inbound_webhook, message.inbound_params())
    return web.json_response(message.to_twilio_json(), status=201)


async def emulator_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats_json())


async def emulator_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        try:
            patch = await request.json()
            if not isinstance(patch, dict):
                raise ValueError("expected a JSON object")
            state.reconfigure(patch)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(state.config.as_json())


async def _callback_session(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.open()
    yield
    await state.close()


def create_app(
    account_sid: str = DEFAULT_ACCOUNT_SID,
    auth_token: str = DEFAULT_AUTH_TOKEN,
    *,
    rate_limit: float | None = None,
    sender_rates: Mapping[str, float] | None = None,
    fail_rate: float = 0.0,
    latency_ms: int = 0,
    accept_delay_ms: int = 0,
    seed: int | None = None,
    status_delay_ms: int = DEFAULT_STATUS_DELAY_MS,
    whatsapp_session_closed: Iterable[str] = (),
    session_closed_error: Literal["sync", "async"] = "sync",
    delivery_failures: Mapping[str, DeliveryFailure | int | Mapping[str, Any]] | None = None,
    refusals: Mapping[str, int] | None = None,
    strict: bool = False,
    content_templates: Mapping[str, str] | None = None,
    inbound_webhook: str | None = None,
) -> web.Application:
    """The emulator as an aiohttp app; raises ValueError for an invalid setting."""
    config = EmulatorConfig().updated(
        {
            "rate_limit": rate_limit,
            "sender_rates": dict(sender_rates or {}),
            "fail_rate": fail_rate,
            "latency_ms": latency_ms,
            "accept_delay_ms": accept_delay_ms,
            "status_delay_ms": status_delay_ms,
            "whatsapp_session_closed": list(whatsapp_session_closed),
            "session_closed_error": session_closed_error,
            "delivery_failures": dict(delivery_failures or {}),
            "refusals": dict(refusals or {}),
            "strict": strict,
            "content_templates": dict(content_templates or {}),
            "inbound_webhook": inbound_webhook,
        }
    )
    app = web.Application(middlewares=[twilio_api_gate])
    app[STATE] = EmulatorState(account_sid, auth_token, config, seed)
    messages = f"{_API_PREFIX}{{account_sid}}/Messages"
    app.router.add_post(f"{messages}.json", create_message)
    app.router.add_get(f"{messages}.json", list_messages, allow_head=False)
    app.router.add_get(f"{messages}/{{sid}}.json", fetch_message, allow_head=False)
    app.router.add_route("GET", "/_emulator/messages", emulator_messages)
    app.router.add_route("DELETE", "/_emulator/messages", emulator_messages)
    app.router.add_get("/_emulator/stats", emulator_stats)
    app.router.add_post("/_emulator/inbound", emulator_inbound)
    app.router.add_route("GET", "/_emulator/config", emulator_config)
    app.router.add_route("POST", "/_emulator/config", emulator_config)
    app.cleanup_ctx.append(_callback_session)
    return app


# --- running it --------------------------------------------------------------------------------


class TwilioEmulator:
    """An emulator listening on ``host:port`` (port 0: an ephemeral port, reported by ``url``).

    ``async with TwilioEmulator(fail_rate=0.3) as emu: client = emu.client(async_client=True)``
    """

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        **options: Any,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.app = create_app(account_sid, auth_token, **options)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE]

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the emulator is not started")
        return self._url

    async def start(self) -> TwilioEmulator:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://{_url_host(host)}:{port}"
        config = self.state.config.as_json()
        # the registered templates' texts are the catalogue's: their count, not a screenful per start
        config["content_templates"] = len(config.get("content_templates") or {})
        log.info("twilio_emulator.listening", url=self._url, **config)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("twilio_emulator.stopped", url=self._url)

    async def __aenter__(self) -> TwilioEmulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def client(self, *, async_client: bool = False, timeout: float = 10.0) -> Client:
        """A real SDK client for this emulator (an async one must be built inside the event loop)."""
        return twilio_client(self.url, self.account_sid, self.auth_token, async_client=async_client, timeout=timeout)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@asynccontextmanager
async def serve(host: str = DEFAULT_HOST, port: int = 0, **options: Any) -> AsyncIterator[TwilioEmulator]:
    """Run an emulator for the duration of the block (the dev stack's entry point)."""
    emulator = TwilioEmulator(host=host, port=port, **options)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


async def serve_until_signalled(host: str, port: int, **options: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(host, port, **options):
        await stop.wait()


def run(
    port: int = DEFAULT_PORT,
    rate_limit: float | None = None,
    fail_rate: float = 0.0,
    latency_ms: int = 0,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    auth_token: str = DEFAULT_AUTH_TOKEN,
    *,
    host: str = DEFAULT_HOST,
    seed: int | None = None,
    accept_delay_ms: int = 0,
    strict: bool = False,
    sender_rates: Mapping[str, float] | None = None,
) -> None:
    """``jobctl twilio-emulator``: serve until SIGINT/SIGTERM. ValueError for an invalid setting."""
    options = {
        "rate_limit": rate_limit,
        "sender_rates": dict(sender_rates or {}),
        "fail_rate": fail_rate,
        "latency_ms": latency_ms,
        "accept_delay_ms": accept_delay_ms,
        "strict": strict,
        "seed": seed,
    }
    EmulatorConfig().updated({k: v for k, v in options.items() if k != "seed"})  # fail before binding
    asyncio.run(serve_until_signalled(host, port, account_sid=account_sid, auth_token=auth_token, **options))


def parse_sender_rate(value: str) -> tuple[str, float]:
    """`--sender-rate +15557770001:80` -> ("+15557770001", 80.0); ValueError if malformed."""
    number, sep, rate = value.removeprefix("whatsapp:").rpartition(":")
    try:
        if sep and _E164.match(number) and float(rate) > 0:
            return number, float(rate)
    except ValueError:
        pass
    raise ValueError(f"--sender-rate {value!r}: expected an E.164 number and a rate > 0, e.g. +15557770001:80")


def _sender_rate(value: str) -> tuple[str, float]:
    try:
        return parse_sender_rate(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twilio-emulator", description="Serve the Twilio Messages API emulator.")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--rate-limit", type=float, default=None, help="messages/s per sender (From); 429 (20429) above it"
    )
    parser.add_argument(
        "--sender-rate",
        action="append",
        default=[],
        type=_sender_rate,
        metavar="NUMBER:RATE",
        help="one sender's own messages/s, over --rate-limit (repeatable): --sender-rate +15557770001:80",
    )
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of creates answered 500/503")
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every API request")
    parser.add_argument(
        "--accept-delay-ms", type=int, default=0, help="between admitting a create and recording the message"
    )
    parser.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=DEFAULT_AUTH_TOKEN)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--strict", action="store_true", help="Twilio's WhatsApp session and template rules")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        run(
            args.port,
            args.rate_limit,
            args.fail_rate,
            args.latency_ms,
            args.account_sid,
            args.auth_token,
            host=args.host,
            seed=args.seed,
            accept_delay_ms=args.accept_delay_ms,
            strict=args.strict,
            sender_rates=dict(args.sender_rate),
        )
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:  # the port is taken, the host is not ours
        log.error("twilio_emulator.cannot_listen", host=args.host, port=args.port, error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
