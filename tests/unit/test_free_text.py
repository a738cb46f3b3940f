"""Free text from outside (issue #33): one type refuses what PostgreSQL cannot store and what no
reason means (NUL, control characters, lone surrogates); every HTTP body refuses unknown fields;
the CLI refuses a control character with exit 2 before touching anything."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.text import Actor, Reason
from tests.unit.test_cli_input import jobctl
from workers.api.app import openapi_document


class _Note(BaseModel):
    reason: Reason
    actor: Actor | None = None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("bad\x00x", "NUL (U+0000 at position 3)"),
        ("\x1b[31mred", "a control character (U+001B at position 0)"),
        ("ends with\r", "a control character (U+000D"),
        ("c1 \x85", "a control character (U+0085"),
        ("half \ud800", "a lone surrogate"),
        ("   ", "at least 1 character"),
        ("x" * 501, "at most 500 characters"),
    ],
)
def test_free_text_refuses_what_cannot_be_stored(raw: str, why: str) -> None:
    with pytest.raises(ValidationError) as refused:
        _Note(reason=raw)
    assert refused.value.errors()[0]["loc"] == ("reason",)
    assert why in refused.value.errors()[0]["msg"]


def test_free_text_keeps_tabs_newlines_and_any_script_and_strips_the_ends() -> None:
    assert _Note(reason="  line one\n\tline two — ünïcödé 日本 ").reason == "line one\n\tline two — ünïcödé 日本"
    with pytest.raises(ValidationError):
        _Note(reason="fine", actor="ops\x00")


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return [(name, components[name])]
    return [found for part in schema.get("anyOf", []) + schema.get("oneOf", []) for found in _resolve(part, components)]


def test_every_request_body_refuses_unknown_fields() -> None:
    document = openapi_document()
    components = document["components"]["schemas"]
    bodies = [
        (f"{method.upper()} {path}", name, schema)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
        for content in operation["requestBody"]["content"].values()
        for name, schema in _resolve(content["schema"], components)
    ]
    assert len(bodies) >= 20
    lax = [f"{route} ({name})" for route, name, schema in bodies if schema.get("additionalProperties") is not False]
    assert not lax, f"request bodies that would ignore an unknown field: {lax}"


@pytest.mark.parametrize(
    "args",
    [
        ("credit", "pause", "1", "--reason", "late\x07", "--actor", "ops"),
        ("orders", "fail", "1", "--reason", "bad\x1bx"),
        ("messaging", "pause", "--actor", "ops", "--reason", "\x01"),
        ("churn", "nudge", "1", "--actor", "ops", "--company", "gym", "--note", "n\x7f"),
        ("loyalty", "resolve", "1", "--actor", "ops", "--note", "\x0bnote"),
    ],
)
def test_the_cli_refuses_a_control_character_with_exit_2_before_connecting(args: tuple[str, ...]) -> None:
    result = jobctl(*args, DATABASE_URL="postgresql+psycopg://u@127.0.0.1:1/never", TEMPORAL_ADDRESS="127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "must not contain a control character" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
