"""The only code that builds a Stripe client: real Stripe, or the dev/test sandbox (STRIPE_API_BASE)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import stripe

from activities.provider_metrics import count_provider_call, outcome_of

STRIPE_TIMEOUT_S = 20.0


class _CountedAIOHTTPClient(stripe.AIOHTTPClient):
    """The SDK's aiohttp client, each call counted (`provider_requests_total{provider="stripe"}`)."""

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            content, status, response_headers = await super().request_async(method, url, headers, post_data)
        except Exception:
            count_provider_call("stripe", "network")
            raise
        count_provider_call("stripe", outcome_of(status))
        return content, status, response_headers


def stripe_client(api_key: str, api_base: str | None, *, timeout_s: float = STRIPE_TIMEOUT_S) -> stripe.StripeClient:
    """A ``StripeClient`` for real Stripe (``api_base=None``) or the sandbox.

    Use its async methods (``client.v1.customers.create_async(params, {"idempotency_key": k})``):
    they go through aiohttp (``stripe.AIOHTTPClient``; httpx is not installed), the sync ones
    through requests. ``max_network_retries=0``: Temporal's retry policy does the retrying, with
    the same business-id key. Close it with ``await close_stripe_client(client)``.
    """
    http_client = stripe.RequestsClient(
        timeout=timeout_s,
        async_fallback_client=_CountedAIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout_s, connect=5.0)),
    )
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base.rstrip("/")} if api_base else None,
        max_network_retries=0,
        http_client=http_client,
    )


async def close_stripe_client(client: stripe.StripeClient) -> None:
    """Close the client's aiohttp session (the SDK has no public close on ``StripeClient``)."""
    http_client = client._requestor._client  # noqa: SLF001 - the SDK exposes no other way to close it
    if http_client is not None:
        await http_client.close_async()
