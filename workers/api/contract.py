"""The OpenAPI document's conventions, applied to every router the app mounts (issue #34).

The document is the API's contract, and clients are generated from it in any language, so what a
generator turns into names must read well there:

- an operation's `operationId` is camelCase (`placeOrder`, `listCases`): a route's explicit
  `operation_id`, else its function's name camel-cased (FastAPI's default,
  `place_v1_orders__order_id__placement_post`, becomes a method name in every generated client);
- a family route's `summary` is that id in words ("Place order") unless the route gives one;
- each tag carries a description: the docstring of the module whose router carries it;
- an operation says who may call it: a route of `IdempotentRoute` (every family router) is
  authenticated, whether or not its function names its scope, so it lists the key's schemes; any
  other route (health, readiness, `/pay/{token}`) is public and says so with `security: []`;
- a POST documents 409 (`idempotency_key_in_use`) whatever else it answers.

`IdempotentRoute` applies the route-level ones as each route is made; `finish` the rest, once the
document is generated.
- `servers` is this API itself, relative (`/`), so the document is the same on every deployment.

`tests/unit/test_openapi_contract.py` holds every operation to them (and to a documented status
for each refusal), so a new router follows them or fails there.
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter
    from fastapi.routing import APIRoute

SECURITY: list[dict[str, list[str]]] = [{"HTTPBearer": []}, {"APIKeyHeader": []}]
SERVERS = [{"url": "/", "description": "this API (the document is served by it, at /openapi.json)"}]


def camel_case(name: str) -> str:
    """`list_cases` -> `listCases`."""
    first, *rest = name.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


def operation_id(route: APIRoute) -> str:
    """The app's `generate_unique_id_function` (an explicit `operation_id` wins over it)."""
    return camel_case(route.name)


def words(operation: str) -> str:
    """`placeOrder` -> "Place order"."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", operation).lower()
    return spaced[:1].upper() + spaced[1:]


def tag_description(router: APIRouter) -> str | None:
    """The first paragraph of the docstring of the module defining the router's routes."""
    for route in router.routes:
        module = inspect.getmodule(getattr(route, "endpoint", None))
        if module is not None and module.__doc__:
            return " ".join(module.__doc__.strip().split("\n\n")[0].split())
    return None


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """What FastAPI does not write by itself: `servers`, and each operation's security.

    A family route declares the key's schemes twice when its function also names its scope
    (FastAPI's from the scope's dependency, `IdempotentRoute`'s own): once is kept. An operation
    declaring none is public, and says so."""
    document["servers"] = SERVERS
    for operations in document["paths"].values():
        for operation in operations.values():
            declared = operation.get("security") or []
            operation["security"] = [s for i, s in enumerate(declared) if s not in declared[:i]]
    return document
