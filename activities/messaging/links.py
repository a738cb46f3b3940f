"""The links a message carries, made when it goes out: workflows pass ids, never URLs.

- `checkout_link` (the order follow-up): ORDER_CHECKOUT_URL_TEMPLATE with the order's ids
  (`{order_id}`, `{order_external_id}`); a database read, made before the message is claimed. Without
  the setting (or an order without the external id the template names) there is no link, and the
  send takes the newest version of the template that needs none (`order_followup` v1).
- `manage_link` (the churn nudges): a Stripe Billing customer-portal session for a member with a
  Stripe customer, made through the one Stripe gateway only once the outbox lets the message go
  (a message held by quiet hours makes none: the session is short-lived), under
  `billing-portal:{message key}`, so a retried send gets the same session and the same text; a
  member without a customer (or one Stripe no longer knows) gets CHURN_MANAGE_URL (`{company_id}`),
  or the link the case passed if that is unset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError

from activities.errors import permanent

if TYPE_CHECKING:
    from activities.payments.gateway import StripeGateway
    from schemas.messaging import SendMessage

log = structlog.get_logger(__name__)

LINK_FIELDS = frozenset({"checkout_link", "manage_link"})
"""Template variables this module makes at send time (a value a workflow passed is only a fallback)."""


@dataclass
class Links:
    """The links of one message: those made already, and the portal session still to make."""

    ready: dict[str, str] = field(default_factory=dict)
    portal_member: int | None = None
    fallback: str | None = None

    @property
    def later(self) -> set[str]:
        return {"manage_link"} if self.portal_member is not None else set()


class MessageLinks:
    def __init__(
        self,
        engine: AsyncEngine,
        stripe: StripeGateway | None,
        *,
        checkout_url_template: str | None,
        manage_url: str | None,
    ) -> None:
        self._engine = engine
        self._stripe = stripe
        self._checkout = checkout_url_template
        self._manage = manage_url

    async def prepare(self, request: SendMessage, wanted: set[str], params: dict[str, str]) -> Links | None:
        """The links of `wanted` (template variables) that can be had; None when one cannot."""
        links = Links()
        if "checkout_link" in wanted:
            link = await self._checkout_link(params.get("order_id"))
            if link is None:
                return None
            links.ready["checkout_link"] = link
        if "manage_link" in wanted:
            member = await self._member(request)
            passed = params.get("manage_link") or None
            links.fallback = (
                self._manage.format(company_id=quote(member[1], safe="")) if self._manage and member else passed
            )
            if member is not None and member[0] and self._stripe is not None:
                links.portal_member = int(request.recipient_id)
            elif links.fallback:
                links.ready["manage_link"] = links.fallback
            else:
                return None
        return links

    async def finish(self, request: SendMessage, links: Links) -> dict[str, str]:
        """Every link of `links`, the portal session made now (call only when the message goes out)."""
        made = dict(links.ready)
        if links.portal_member is None:
            return made
        assert self._stripe is not None
        try:
            url = await self._stripe.billing_portal_session(
                links.portal_member, return_url=links.fallback, message_key=request.idempotency_key
            )
        except ApplicationError as error:
            if not error.non_retryable or not links.fallback:
                raise
            log.warning("message.portal_refused", idempotency_key=request.idempotency_key, error_type=error.type)
            url = None
        if url is None:
            if not links.fallback:
                raise permanent("NoManageLink", f"no customer-portal link for member {links.portal_member}")
            url = links.fallback
        made["manage_link"] = url
        return made

    async def _checkout_link(self, order_id: str | None) -> str | None:
        if not self._checkout or not order_id or not order_id.isdigit():
            return None
        external_id = None
        if "{order_external_id}" in self._checkout:
            async with self._engine.connect() as conn:
                external_id = await conn.scalar(
                    text("SELECT external_id FROM orders WHERE id = :i"), {"i": int(order_id)}
                )
            if not external_id:
                return None
        return self._checkout.format(order_id=order_id, order_external_id=quote(external_id or "", safe=""))

    async def _member(self, request: SendMessage) -> tuple[str | None, str] | None:
        """(Stripe customer id, company id) of a member recipient; None for anyone else."""
        if request.recipient_type != "member" or not request.recipient_id.isdigit():
            return None
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT stripe_customer_id, company_id FROM memberships WHERE id = :i"),
                    {"i": int(request.recipient_id)},
                )
            ).first()
        return None if row is None else (row[0], row[1])
