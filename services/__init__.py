"""The service layer: what the CLI (and the HTTP API) call to start, signal and read jobs.

One module per family; each raises a `schemas.errors.Refused` subclass for a request that cannot
apply. Nothing here knows which process or interface it serves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

StripeHandler = Callable[[dict[str, Any]], Awaitable[None]]
"""A Stripe event handler: takes the verified event, raises to have Stripe retry it."""
