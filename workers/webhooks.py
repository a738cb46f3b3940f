"""`jobctl webhooks`: Stripe and Twilio callbacks, verified before anything changes.

- `POST /webhooks/stripe`: `Stripe-Signature` checked with STRIPE_WEBHOOK_SECRET, the event
  recorded as received in `processed_webhook_events` in one short statement, handed to the domain
  handler registered for its type holding no database connection (a burst never drains the pool),
  then marked processed. A replay of a processed event is acknowledged and ignored; a replay of one
  whose handler failed for now runs it again. A handler error that no retry can fix (a malformed
  object inside a validly signed event) is recorded as failed and answered 2xx, so Stripe does not
  retry it for three days; any other error is a 5xx and Stripe's retry gets another chance.
- `POST /webhooks/twilio/status`: `X-Twilio-Signature` checked; the message's delivery status is
  recorded in `message_log`.
- `POST /webhooks/twilio/inbound`: `X-Twilio-Signature` checked; Twilio's default keywords, on
  the channel the message came in on: an opt-out word (STOP...) records an opt-out, an opt-in
  word (START, UNSTOP, YES) lifts it (both audited in `recipient_opt_out_events`), a help word
  (HELP, INFO) gets the `help` template in reply, once per inbound message. An opt-out or opt-in
  applies once per MessageSid, so a redelivered START never undoes a newer STOP. Every WhatsApp
  message, whatever its body, also records when the number last wrote to our sender (`To`) in
  `whatsapp_sessions`: the send path reads it to send freeform inside the 24 h window, a template
  outside it. A redelivered MessageSid keeps its first time; the time never moves back.
Unsigned, badly signed or malformed bodies get 400 and change nothing.

Also `GET /healthz` (the process answers), `GET /readyz` (the database answers; 503 otherwise) and
`GET /metrics` (Prometheus: `jobctl_http_requests_total` and `jobctl_http_request_duration_seconds`
with `process="webhooks"`, by route template). Every request gets an `X-Request-ID` (the caller's
when well-formed), bound into its log lines, and one `http.request` access log line (method, route
template, status, milliseconds: no path, query or body, so no phone number).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

import stripe
import structlog
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from twilio.request_validator import RequestValidator

from activities.messaging import outbox
from schemas.errors import Refused
from services import StripeHandler
from workers.http_metrics import HttpMetrics, aiohttp_metrics_handler, aiohttp_middleware
from workers.log import mask_text
from workers.process import database_problem

log = structlog.get_logger(__name__)

# Twilio's default Advanced Opt-Out keywords.
OPT_OUT_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
OPT_IN_WORDS = {"START", "UNSTOP", "YES"}
HELP_WORDS = {"HELP", "INFO"}

HelpReply = Callable[[str, str, str], Awaitable[None]]
"""(recipient_type, recipient_id, inbound MessageSid): send the `help` template to that recipient."""

PERMANENT_HANDLER_ERRORS: tuple[type[BaseException], ...] = (KeyError, TypeError, ValueError, AttributeError, Refused)
"""What a handler raises for an event no retry can fix: a malformed object (pydantic's
ValidationError is a ValueError) or a domain refusal. Anything else (Temporal, the database,
the network) is transient."""

HANDLER_LEASE = timedelta(minutes=5)
"""A received event whose handler started longer ago than this is taken to have crashed: a
delivery then runs it again (a delivery within the lease gets 409 and Stripe retries later)."""

# Received now, or taken again if it was received before but never finished and nobody holds it.
_CLAIM = text(
    """
INSERT INTO processed_webhook_events AS e (provider, event_id, event_type, status, claimed_at)
VALUES ('stripe', :id, :type, 'received', now())
ON CONFLICT (provider, event_id) DO UPDATE SET claimed_at = now()
WHERE e.status = 'received' AND (e.claimed_at IS NULL OR e.claimed_at < now() - :lease)
RETURNING event_id
"""
)
_STATUS = text("SELECT status FROM processed_webhook_events WHERE provider = 'stripe' AND event_id = :id")
_FINISH = text(
    "UPDATE processed_webhook_events SET status = :status, processed_at = now(), claimed_at = NULL, error = :error"
    " WHERE provider = 'stripe' AND event_id = :id"
)
_RELEASE = text(
    "UPDATE processed_webhook_events SET claimed_at = NULL, error = :error WHERE provider = 'stripe' AND event_id = :id"
)


def _describe(error: BaseException) -> str:
    return mask_text(f"{type(error).__name__}: {error}")[:500]


def create_app(
    engine: AsyncEngine,
    *,
    stripe_webhook_secret: str,
    twilio_auth_token: str,
    public_base_url: str | None = None,
    stripe_handlers: Mapping[str, StripeHandler] | None = None,
    help_reply: HelpReply | None = None,
) -> web.Application:
    """`public_base_url` is the URL Twilio signs (behind a proxy it differs from the request's)."""
    validator = RequestValidator(twilio_auth_token)
    handlers = dict(stripe_handlers or {})

    def bad_request(reason: str) -> web.Response:
        log.warning("webhook.refused", reason=reason)
        return web.json_response({"error": reason}, status=400)

    async def stripe_webhook(request: web.Request) -> web.Response:
        payload = await request.text()
        try:  # verifies the signature and the timestamp tolerance
            stripe.Webhook.construct_event(payload, request.headers.get("Stripe-Signature"), stripe_webhook_secret)
        except stripe.SignatureVerificationError:
            return bad_request("invalid Stripe signature")
        except (ValueError, KeyError):
            return bad_request("malformed Stripe event")
        event_dict = json.loads(payload)
        event_id, event_type = event_dict.get("id"), event_dict.get("type")
        if not isinstance(event_id, str) or not isinstance(event_type, str):
            return bad_request("Stripe event without id or type")
        async with engine.begin() as conn:
            claimed = await conn.scalar(_CLAIM, {"id": event_id, "type": event_type, "lease": HANDLER_LEASE})
            status = None if claimed else await conn.scalar(_STATUS, {"id": event_id})
        if status == "received":  # another delivery of it is being handled right now
            log.info("webhook.stripe_in_progress", event_id=event_id, event_type=event_type)
            return web.json_response({"received": False, "in_progress": True}, status=409)
        if status is not None:
            log.info("webhook.stripe_replayed", event_id=event_id, event_type=event_type, status=status)
            return web.json_response({"received": True, "duplicate": True})
        handler = handlers.get(event_type)
        try:
            if handler is not None:
                await handler(event_dict)  # holding no connection: it takes its own
        except PERMANENT_HANDLER_ERRORS as error:
            await _finish(event_id, "failed", _describe(error))
            log.error("webhook.stripe_failed", event_id=event_id, event_type=event_type, error=_describe(error))
            return web.json_response({"received": True, "duplicate": False, "failed": True})
        except Exception as error:
            async with engine.begin() as conn:
                await conn.execute(_RELEASE, {"id": event_id, "error": _describe(error)})
            log.exception("webhook.stripe_retry_later", event_id=event_id, event_type=event_type)
            return web.json_response({"received": False, "retry": True}, status=503)
        await _finish(event_id, "processed", None)
        log.info("webhook.stripe_processed", event_id=event_id, event_type=event_type, handled=handler is not None)
        return web.json_response({"received": True, "duplicate": False})

    async def _finish(event_id: str, status: str, error: str | None) -> None:
        async with engine.begin() as conn:
            await conn.execute(_FINISH, {"id": event_id, "status": status, "error": error})

    async def verified_twilio_form(request: web.Request) -> dict[str, str] | None:
        form = {k: str(v) for k, v in (await request.post()).items()}
        url = (public_base_url.rstrip("/") + request.path_qs) if public_base_url else str(request.url)
        if not validator.validate(url, form, request.headers.get("X-Twilio-Signature", "")):
            return None
        return form

    async def twilio_status(request: web.Request) -> web.Response:
        form = await verified_twilio_form(request)
        if form is None:
            return bad_request("invalid Twilio signature")
        sid, status = form.get("MessageSid"), form.get("MessageStatus")
        if not sid or not status:
            return bad_request("status callback without MessageSid or MessageStatus")
        code = form.get("ErrorCode")
        changed = await outbox.record_delivery(engine, sid, status, int(code) if code and code.isdigit() else None)
        log.info("webhook.twilio_status", provider_sid=sid, status=status, changed=changed)
        return web.Response(status=204)

    async def twilio_inbound(request: web.Request) -> web.Response:
        form = await verified_twilio_form(request)
        if form is None:
            return bad_request("invalid Twilio signature")
        sender, body = form.get("From", ""), form.get("Body", "").strip().upper()
        if not sender:
            return bad_request("inbound message without From")
        channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
        phone, sid = sender.removeprefix("whatsapp:"), form.get("MessageSid") or None
        # Our WhatsApp sender it was written to (Twilio's `To`): the session is with that number.
        ours = (form.get("To") or None) if channel == "whatsapp" else None
        if body in OPT_OUT_WORDS:
            count = await outbox.opt_out_by_phone(
                engine, phone, channel, reason=f"inbound {body}", message_sid=sid, sender=ours
            )
            log.info("webhook.twilio_opt_out", phone=phone, channel=channel, recipients=count, message_sid=sid)
        elif body in OPT_IN_WORDS:
            count = await outbox.opt_in_by_phone(
                engine, phone, channel, reason=f"inbound {body}", message_sid=sid, sender=ours
            )
            log.info("webhook.twilio_opt_in", phone=phone, channel=channel, recipients=count, message_sid=sid)
        elif ours is not None:  # any other WhatsApp message: its session opens (HELP's too)
            opened = await outbox.record_inbound(engine, phone, ours, message_sid=sid)
            log.info("webhook.twilio_whatsapp_inbound", message_sid=sid, session_recorded=opened)
        if body in HELP_WORDS and help_reply is not None:
            recipient = await outbox.recipient_by_phone(engine, phone)
            if recipient is not None and sid:
                await help_reply(*recipient, sid)
                log.info("webhook.twilio_help", phone=phone, channel=channel, message_sid=sid)
        return web.Response(text="<Response></Response>", content_type="application/xml")

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        """Ready when the database answers (every webhook writes there first); 503 otherwise."""
        problem = await database_problem(engine)
        database = f"unavailable: {problem}" if problem else "ok"
        ready = problem is None
        return web.json_response(
            {"status": "ready" if ready else "not ready", "database": database}, status=200 if ready else 503
        )

    metrics = HttpMetrics("webhooks")
    # 413 above 1 MB (aiohttp's default, made explicit: issue #33)
    app = web.Application(client_max_size=1024**2, middlewares=[aiohttp_middleware(metrics)])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", aiohttp_metrics_handler(metrics))
    app.router.add_post("/webhooks/stripe", stripe_webhook)
    app.router.add_post("/webhooks/twilio/status", twilio_status)
    app.router.add_post("/webhooks/twilio/inbound", twilio_inbound)
    return app
