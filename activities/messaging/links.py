"""The links a message carries, made when it goes out: workflows pass ids, never URLs.

- `checkout_link` (the order follow-up): ORDER_CHECKOUT_URL_TEMPLATE with the order's ids
  (`{order_id}`, `{order_external_id}`); a database read, made before the message is claimed. Without
  the setting (or an order without the external id the template names) there is no link, and the
  send takes the newest version of the template that needs none (`order_followup` v1).
- `manage_link` (the churn nudges): a stable link of ours, `{PUBLIC_BASE_URL}/manage/{token}`
  (`activities/churn/managelinks.py`), a token signed over the member, its company and the day the
  send was first scheduled: no Stripe call at send time, and the same text on every retry. The
  Stripe customer-portal session (short-lived) is made when the member clicks (`GET /manage/{token}`
  on `jobctl api`). Without PUBLIC_BASE_URL the link is CHURN_MANAGE_URL (`{company_id}`), else
  the link the case passed. A member with no Stripe customer and no CHURN_MANAGE_URL (nowhere to
  send them) has no link: the nudge is refused (`NoManageLink`, permanent) rather than sent with
  an empty link.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from activities.churn.managelinks import DEV_MANAGE_LINK_SECRET, company_url, manage_url, sign
from activities.errors import permanent

if TYPE_CHECKING:
    from schemas.messaging import SendMessage

LINK_FIELDS = frozenset({"checkout_link", "manage_link"})
"""Template variables this module makes at send time (a value a workflow passed is only a fallback)."""


def _issue_date() -> date:
    """A manage link's issue date: the day the send activity was first scheduled (its retries keep
    it, so they render the same text); now outside an activity."""
    if activity.in_activity():
        return activity.info().scheduled_time.astimezone(UTC).date()
    return datetime.now(UTC).date()


@dataclass
class Links:
    """The links of one message, all made before it is claimed (a customer-portal session is made
    when the member clicks, not as the message goes out)."""

    ready: dict[str, str] = field(default_factory=dict)


class MessageLinks:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        checkout_url_template: str | None,
        manage_url: str | None,
        public_base_url: str | None = None,
        manage_secret: bytes = DEV_MANAGE_LINK_SECRET.encode(),
    ) -> None:
        self._engine = engine
        self._checkout = checkout_url_template
        self._manage = manage_url
        self._base_url = public_base_url
        self._secret = manage_secret

    async def prepare(self, request: SendMessage, wanted: set[str], params: dict[str, str]) -> Links | None:
        """The links of `wanted` (template variables) that can be had; None when one cannot."""
        links = Links()
        if "checkout_link" in wanted:
            link = await self._checkout_link(params.get("order_id"))
            if link is None:
                return None
            links.ready["checkout_link"] = link
        if "manage_link" in wanted:
            links.ready["manage_link"] = await self._manage_link(request, params.get("manage_link") or None)
        return links

    async def _manage_link(self, request: SendMessage, passed: str | None) -> str:
        member = await self._member(request)
        fallback = company_url(self._manage, member[1]) if member is not None and self._manage else passed
        if member is not None and self._base_url and (member[0] or self._manage):
            token = sign(self._secret, int(request.recipient_id), member[1], _issue_date())
            return manage_url(self._base_url, token)
        if fallback:
            return fallback
        raise permanent(
            "NoManageLink",
            f"no manage link for {request.recipient_type} {request.recipient_id}: no Stripe customer and no"
            " CHURN_MANAGE_URL (or no PUBLIC_BASE_URL)",
        )

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
