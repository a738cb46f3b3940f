"""Traces (workers/tracing.py): off unless an OTLP endpoint is configured, where the spans go, and
the trace id on log lines. The whole trace, API to Twilio, is tests/e2e/test_tracing.py."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from config.settings import SettingsError, load_settings
from workers import tracing
from workers.log import configure_logging


def test_tracing_is_off_unless_an_endpoint_is_configured() -> None:
    settings = load_settings()
    assert tracing.traces_endpoint(settings) is None
    assert tracing.start_tracing(settings, "jobctl-api") is None
    assert tracing.active_provider() is None and tracing.client_interceptors() == []


def test_the_traces_go_to_the_collectors_v1_traces_unless_a_traces_url_is_given() -> None:
    base = load_settings(otel_exporter_otlp_endpoint="http://otel-collector:4318/")
    assert tracing.traces_endpoint(base) == "http://otel-collector:4318/v1/traces"
    both = load_settings(
        otel_exporter_otlp_endpoint="http://otel-collector:4318",
        otel_exporter_otlp_traces_endpoint="https://tempo.example.com/otlp/v1/traces",
    )
    assert tracing.traces_endpoint(both) == "https://tempo.example.com/otlp/v1/traces"


def test_an_endpoint_that_is_not_an_http_url_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_ENDPOINT: must be an http"):
        load_settings(otel_exporter_otlp_endpoint="otel-collector:4317")


def test_otel_sdk_disabled_keeps_tracing_off_whatever_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    settings = load_settings(otel_exporter_otlp_endpoint="http://otel-collector:4318")
    assert tracing.start_tracing(settings, "jobctl-worker") is None
    assert tracing.client_interceptors() == []


def test_a_line_written_under_a_span_carries_its_trace_id_unmasked() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    try:
        tracer = TracerProvider().get_tracer("test")  # not installed: the lines read the current span
        log = structlog.get_logger("test")
        with tracer.start_as_current_span("checkout") as span:
            log.info("inside", to="+15551234567")
        log.info("outside")
    finally:
        configure_logging("console", "WARNING")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    context = span.get_span_context()
    # 32 hex digits is also a Twilio auth token's shape: the masking leaves these two alone
    assert inside["trace_id"] == format(context.trace_id, "032x") and inside["trace_id"] != "***"
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "+15551234567" not in inside["to"]
    assert "trace_id" not in outside and "span_id" not in outside
