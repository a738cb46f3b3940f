"""The only code that builds a Stripe client: real Stripe, or the dev/test sandbox (STRIPE_API_BASE)."""

from __future__ import annotations

import aiohttp
import stripe

STRIPE_TIMEOUT_S = 20.0


def stripe_client(api_key: str, api_base: str | None, *, timeout_s: float = STRIPE_TIMEOUT_S) -> stripe.StripeClient:
    """A ``StripeClient`` for real Stripe (``api_base=None``) or the sandbox.

    Use its async methods (``client.v1.customers.create_async(params, {"idempotency_key": k})``):
    they go through aiohttp (``stripe.AIOHTTPClient``; httpx is not installed), the sync ones
    through requests. ``max_network_retries=0``: Temporal's retry policy does the retrying, with
    the same business-id key. Close it with ``await close_stripe_client(client)``.
    """
    http_client = stripe.RequestsClient(
        timeout=timeout_s,
        async_fallback_client=stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout_s, connect=5.0)),
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
