"""A client generated from `docs/openapi.json` by a standard generator (openapi-python-client)
calls the API as a shop's developers would (issue #34): its methods are the operationIds
(`place_order`, not `place_v1_orders__order_id__placement_post`), its classes the schema names,
an amount goes and comes back as a decimal string, a POST retried with its Idempotency-Key is
replayed, and a refusal parses as `ProblemDetails` with its code."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings
from devtools.openapi_client import PACKAGE, generate
from tests.activities.test_orders import new_order
from tests.e2e.api_harness import api_settings, new_key, running_workers  # noqa: F401 - pytest fixtures, taken as test arguments
from workers.api.app import create_app


@pytest.fixture(scope="module")
def client_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The generated package, importable for this module's tests."""
    out = tmp_path_factory.mktemp("generated")
    generate(out / PACKAGE)
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_generated_client_calls_the_api(
    client_package: ModuleType,
    api_settings: Settings,
    engine: AsyncEngine,
    dev_env: WorkflowEnvironment,
    running_workers: None,
) -> None:
    app = create_app(api_settings, engine, dev_env.client)
    headers = await new_key(engine, "orders:write", "orders:read", "credit:read", "credit:write")
    key = headers["Authorization"].removeprefix("Bearer ")
    transport = httpx.ASGITransport(app=app)
    client = _module("client").AuthenticatedClient(
        base_url="http://api", token=key, httpx_args={"transport": transport}, timeout=httpx.Timeout(60)
    )
    public = _module("client").Client(base_url="http://api", httpx_args={"transport": transport})
    models = _module("models")

    health = await _module("api.health.get_health").asyncio(client=public)
    assert health.status == "ok"

    _, retailer_id, _ = await new_order(engine)  # credit limit 1,000
    profile = await _module("api.credit.get_credit_profile").asyncio(retailer_id=retailer_id, client=client)
    assert isinstance(profile, models.Profile) and profile.credit_status == "ACTIVE"
    assert profile.available_credit == "1000.00"  # an amount is a decimal string

    place = _module("api.orders.place_order")
    order_id = int(uuid.uuid4().int % 10**9) + 10**9
    body = models.Placement(retailer_id=retailer_id, amount="120.5", payment_mode=models.PlacementPaymentMode.COD)
    once = f"generated-{uuid.uuid4()}"
    first = await place.asyncio_detailed(order_id, client=client, body=body, idempotency_key=once)
    again = await place.asyncio_detailed(order_id, client=client, body=body, idempotency_key=once)
    assert first.status_code == again.status_code == 200, first.content
    assert isinstance(first.parsed, models.Placed) and first.parsed.amount == "120.50"  # normalised
    assert again.headers.get("Idempotent-Replayed") == "true" and again.parsed == first.parsed

    other = await place.asyncio_detailed(
        order_id,
        client=client,
        body=models.Placement(retailer_id=retailer_id, amount="99.00", payment_mode=models.PlacementPaymentMode.COD),
    )
    assert other.status_code == 409 and isinstance(other.parsed, models.ProblemDetails)
    assert (other.parsed.code, other.parsed.type_) == ("order_mismatch", "https://jobctl.dev/problems/order-mismatch")

    shown = await _module("api.orders.get_order").asyncio_detailed(987654321, client=client)
    assert shown.status_code == 404 and shown.parsed.code == "unknown_order"


async def test_a_generated_client_brings_the_business_data_in_and_subscribes_to_its_events(
    client_package: ModuleType,
    api_settings: Settings,
    engine: AsyncEngine,
    dev_env: WorkflowEnvironment,
    running_workers: None,
) -> None:
    """The shop's backend, written against the generated client alone: its retailer, credit account
    and order go in by its own ids (PUT: 201 new, 200 again with nothing changed), the order's
    checkout clock starts by the shop's order id, and it subscribes to the events it wants."""
    app = create_app(api_settings, engine, dev_env.client)
    headers = await new_key(engine, "directory:read", "directory:write", "orders:write", "events:write", "events:read")
    transport = httpx.ASGITransport(app=app)
    client = _module("client").AuthenticatedClient(
        base_url="http://api",
        token=headers["Authorization"].removeprefix("Bearer "),
        httpx_args={"transport": transport},
        timeout=httpx.Timeout(60),
    )
    models = _module("models")
    shop, order = f"gen-shop-{uuid.uuid4().hex[:8]}", f"gen-order-{uuid.uuid4().hex[:8]}"

    put_retailer = _module("api.directory.put_retailer")
    body = models.RetailerFields(name="Gen Traders", phone="+91 98765 43210", timezone="Asia/Kolkata", locale="en-IN")
    created = await put_retailer.asyncio_detailed(shop, client=client, body=body)
    again = await put_retailer.asyncio_detailed(shop, client=client, body=body)
    assert (created.status_code, again.status_code) == (201, 200), created.content
    assert isinstance(created.parsed, models.RetailerOut) and created.parsed.phone == "+919876543210"
    assert again.parsed.id == created.parsed.id

    account = await _module("api.directory.put_credit_account").asyncio_detailed(
        shop, client=client, body=models.CreditAccountFields(credit_limit="25000.5", currency="INR")
    )
    assert account.status_code == 201 and account.parsed.available_credit == "25000.50"

    cod = models.OrderFieldsPaymentMode.COD
    put_order = _module("api.directory.put_shop_order")
    refused = await put_order.asyncio_detailed(
        order, client=client, body=models.OrderFields(retailer_external_id="nobody", amount="10", payment_mode=cod)
    )
    assert refused.status_code == 404 and refused.parsed.code == "unknown_retailer"
    recorded = await put_order.asyncio_detailed(
        order, client=client, body=models.OrderFields(retailer_external_id=shop, amount="480", payment_mode=cod)
    )
    assert recorded.status_code == 201 and recorded.parsed.amount == "480.00"
    clock = await _module("api.directory.start_shop_order_checkout").asyncio_detailed(
        order, client=client, body=models.ShopCheckoutStarted(follow_up_after_seconds=3600)
    )
    assert clock.status_code == 200, clock.content
    assert clock.parsed.order_id == recorded.parsed.id and clock.parsed.state == models.PendingOrderStatusState.PENDING

    subscription = await _module("api.events.create_event_subscription").asyncio_detailed(
        client=client,
        body=models.NewSubscription(
            url="https://shop.example/hooks/jobctl", event_types=["credit.paused", "order.expired"]
        ),
        idempotency_key=f"subscribe-{shop}",
    )
    assert subscription.status_code == 201, subscription.content
    assert subscription.parsed.secret.startswith("whsec_")
    listed = await _module("api.events.list_event_subscriptions").asyncio(client=client)
    assert subscription.parsed.id in [s.id for s in listed]
