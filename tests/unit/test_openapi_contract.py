"""The OpenAPI document is the contract, and reads well in any language (issue #34): every
operation, whichever router adds it, has a camelCase operationId, a tag with a description, a
summary, the statuses it can answer, and says who may call it; schema names are plain class names;
amounts are decimal strings; every refusal code the source raises is one `CODES` documents."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from activities.credit.guardrails import CreditPosition, PlacementRefused, validate_order_placement
from schemas.errors import Refused
from workers.api.app import openapi_document
from workers.api.problems import CODES, PROBLEM_TYPE_BASE, problem_response, refusal_status, snake_case, type_uri

ROOT = Path(__file__).parents[2]
DOCUMENT = openapi_document()
PUBLIC = {"getHealth", "getReadiness", "openPayLink", "openManageLink"}
"""The operations that need no API key (the pay and manage links' tokens are their capabilities)."""


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, by_method in DOCUMENT["paths"].items()
        for method, operation in by_method.items()
    ]


def test_every_operation_has_a_unique_camel_case_id_a_described_tag_and_a_summary() -> None:
    described = {tag["name"] for tag in DOCUMENT.get("tags", []) if tag.get("description")}
    ids = [operation.get("operationId", "") for _, _, operation in operations()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for method, path, operation in operations():
        where = f"{method} {path}"
        assert re.fullmatch(r"[a-z]+(?:[A-Z0-9][a-z0-9]*)*", operation["operationId"]), where
        assert operation.get("tags") and set(operation["tags"]) <= described, where
        assert operation.get("summary"), where


def test_every_operation_documents_what_it_can_answer() -> None:
    for method, path, operation in operations():
        where, statuses = f"{method} {path}", set(operation["responses"])
        if operation["operationId"] in PUBLIC:
            continue
        # the route class's: key (401), scope (403), body size (413), JSON depth (400), any field (422)
        assert {"400", "401", "403", "413", "422"} <= statuses, where
        if method == "POST":  # Idempotency-Key: a retry while the first still runs
            assert "409" in statuses and any(p["name"] == "Idempotency-Key" for p in operation["parameters"]), where
        if "{" in path and method in ("GET", "DELETE"):  # an id in the path may name nothing (a PUT may create it)
            assert "404" in statuses, where
        for status, response in operation["responses"].items():
            if status[0] in "45":
                schema = response["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ProblemDetails"}, (where, status)
    pay = DOCUMENT["paths"]["/pay/{token}"]["get"]["responses"]
    assert {"303", "404", "410", "429", "503"} <= set(pay) and "Retry-After" in pay["429"]["headers"]
    manage = DOCUMENT["paths"]["/manage/{token}"]["get"]
    assert {"303", "404", "410", "429", "503"} <= set(manage["responses"]) and manage["security"] == []


def test_every_request_body_has_an_example() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    for method, path, operation in operations():
        if "requestBody" not in operation:
            continue
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        refs = [s["$ref"] for s in schema.get("anyOf", [schema]) if "$ref" in s]
        assert refs, f"{method} {path}: an inline body (no model) has no name in a generated client"
        for ref in refs:
            examples = schemas[ref.rsplit("/", 1)[-1]].get("examples")
            assert examples, f"{method} {path}: {ref} has no example"


def test_public_operations_declare_no_security_and_the_others_the_keys_schemes() -> None:
    schemes = set(DOCUMENT["components"]["securitySchemes"])
    for method, path, operation in operations():
        if operation["operationId"] in PUBLIC:
            assert operation["security"] == [], f"{method} {path}"
        else:
            named = [name for requirement in operation["security"] for name in requirement]
            assert named and set(named) <= schemes and len(named) == len(set(named)), f"{method} {path}"
    assert DOCUMENT["servers"] and DOCUMENT["servers"][0]["url"] == "/"


def test_schema_names_are_plain_class_names() -> None:
    """`Page[Case]` would be `Page_Case_`, a model used in and out `Case-Input`/`Case-Output`:
    every generated client would name its classes so."""
    odd = [name for name in DOCUMENT["components"]["schemas"] if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", name)]
    assert not odd


def _properties(schema: Any) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, dict):
        for name, sub in schema.get("properties", {}).items():
            found.append((name, sub))
        for value in schema.values():
            found.extend(_properties(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(_properties(value))
    return found


@pytest.mark.parametrize("name", ["amount", "available_credit", "credit_limit", "outstanding", "order_total"])
def test_amounts_are_decimal_strings_in_and_out(name: str) -> None:
    fields = [s for n, s in _properties(DOCUMENT["components"]["schemas"]) if n == name]
    assert fields, name
    for schema in fields:
        variants = [v for v in schema.get("anyOf", [schema]) if v.get("type") != "null"]
        if any("$ref" in v for v in variants):  # another model's field of that name (a path, not money)
            continue
        assert all(v.get("type") == "string" and v.get("format") == "decimal" for v in variants), (name, schema)


def test_the_company_has_one_name() -> None:
    """`company_id` wherever a parameter or field names a company (the old `company` query
    parameter of listCases is still read, marked deprecated)."""
    for method, path, operation in operations():
        for parameter in operation.get("parameters", []):
            if parameter["name"] in ("company", "tenant", "tenant_id"):
                assert parameter.get("deprecated") is True, (method, path, parameter["name"])
    assert not [n for n, _ in _properties(DOCUMENT["components"]["schemas"]) if n in ("company", "tenant", "tenant_id")]


def test_every_code_the_source_raises_is_documented() -> None:
    """A `code="..."` written at a raise is one `CODES` lists (with its status and meaning)."""
    raised: set[str] = set()
    for folder in ("activities", "services", "workflows", "workers", "schemas"):
        for path in (ROOT / folder).rglob("*.py"):
            raised |= set(re.findall(r'\bcode="([a-z][a-z0-9_]*)"', path.read_text()))
    assert raised, "no code found: the pattern no longer matches the source"
    assert not raised - set(CODES), (
        f"add to workers/api/problems.py CODES (and README.md): {sorted(raised - set(CODES))}"
    )
    assert "credit_paused" in raised and "over_credit_limit" in raised


def test_the_readme_and_the_api_description_list_every_code() -> None:
    readme = (ROOT / "README.md").read_text()
    for code, (status, _) in CODES.items():
        assert f"| `{code}` | {status} |" in readme, f"README.md's table of codes lacks {code}"
        assert f"| `{code}` | {status} |" in DOCUMENT["info"]["description"], code


def test_a_problem_answers_its_code_and_the_type_made_from_it() -> None:
    body = problem_response(409, "credit is paused", code="credit_paused").body
    assert b'"type":"https://jobctl.dev/problems/credit-paused"' in body and b'"code":"credit_paused"' in body
    assert b'"code":"not_found"' in problem_response(404, "no such thing").body  # no code: the status's
    assert type_uri("unknown_order") == PROBLEM_TYPE_BASE + "unknown-order"
    assert [snake_case(c) for c in ("UnknownOrder", "NoSubscription", "credit_paused", "HTTPError")] == [
        "unknown_order",
        "no_subscription",
        "credit_paused",
        "http_error",
    ]


def test_a_paused_retailers_credit_order_is_refused_as_credit_paused() -> None:
    paused = CreditPosition(credit_status="PAUSED", available_credit=Decimal("100"), max_order_value=None)
    with pytest.raises(PlacementRefused) as refused:
        validate_order_placement(paused, Decimal("10"), "CREDIT")
    assert (snake_case(refused.value.code), refusal_status(refused.value)) == ("credit_paused", 409)
    active = CreditPosition(credit_status="ACTIVE", available_credit=Decimal("100"), max_order_value=Decimal("50"))
    for amount, code in ((Decimal("60"), "over_max_order_value"), (Decimal("40.01"), None)):
        if code is None:
            validate_order_placement(active, amount, "CREDIT")
            continue
        with pytest.raises(PlacementRefused) as refused:
            validate_order_placement(active, amount, "CREDIT")
        assert refused.value.code == code


def test_a_refusal_answers_the_status_its_code_documents() -> None:
    assert refusal_status(Refused("no retailer 9", code="unknown_retailer")) == 404
    assert refusal_status(Refused("member 7 has no Stripe subscription", code="NoSubscription")) == 409
    assert refusal_status(Refused("x", code="UnknownOrder")) == 404
    for code, (status, meaning) in CODES.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code) and 400 <= status < 600 and meaning, code
