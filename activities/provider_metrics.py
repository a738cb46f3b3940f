"""`provider_requests_total{provider, outcome}` on the worker's Prometheus endpoint (METRICS_BIND).

Counted in the one HTTP client each provider's gateway uses (`activities/messaging/twilio_gateway.py`,
`activities/payments/client.py`), once per HTTP call, so a provider's error rate can be alerted on.
`outcome` is bounded: `ok` (2xx, 3xx), `client_error` (4xx but 429), `rate_limited` (429),
`server_error` (5xx), `network` (no answer: refused, reset, timed out). Calls made outside an
activity (the API's pay route, the webhook receiver's re-reads) are not counted: the worker's
endpoint is the SDK's, reached through the activity's metric meter.
"""

from __future__ import annotations

from typing import Literal

from temporalio import activity

Provider = Literal["twilio", "stripe"]
OUTCOMES = ("ok", "client_error", "rate_limited", "server_error", "network")


def outcome_of(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "ok"


def count_provider_call(provider: Provider, outcome: str) -> None:
    if not activity.in_activity():
        return
    activity.metric_meter().create_counter(
        "provider_requests_total", "HTTP calls to a provider (twilio, stripe) by outcome"
    ).add(1, {"provider": provider, "outcome": outcome})
