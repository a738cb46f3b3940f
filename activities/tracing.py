"""One span per call to a provider (Twilio, Stripe), for the traces of issue #36.

Only the OpenTelemetry API is used here: until a process sets a tracer provider up
(`workers/tracing.py`, when an OTLP endpoint is configured) every span is a no-op costing next to
nothing. The span is a child of whatever is current, in an activity the SDK's `RunActivity` span,
so a trace shows an API request, its workflow, the activity and the provider's call.

Attributes are a fixed, small set naming what was called and how it ended (the operation, the
channel, the HTTP status, the provider's error code), never its content: no phone number, message
body, customer name, key or token, and exceptions are not recorded (their text may quote a number).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

_tracer = trace.get_tracer("jobctl.providers")  # a proxy: it follows the provider set later


@contextmanager
def provider_call(
    system: str, operation: str, attributes: Mapping[str, AttributeValue] | None = None
) -> Iterator[Span]:
    """`with provider_call("twilio", "messages.create", {...}) as span:` around one provider call;
    an exception leaves the span in error with `error.type` (its class, or an ApplicationError's type)."""
    with _tracer.start_as_current_span(
        f"{system} {operation}",
        kind=SpanKind.CLIENT,
        attributes={"peer.service": system, "jobctl.provider.operation": operation, **(attributes or {})},
        record_exception=False,  # the exception's text may quote a phone number or a body
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            kind = getattr(exc, "type", None)
            error_type = kind if isinstance(kind, str) and kind else type(exc).__name__
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
            raise
