"""Message templates as versioned data: the WhatsApp Content SID and the SMS body of each.

A workflow names a template and version and passes parameters (ids, amounts, links: never
names or phone numbers); the activity renders the text at send time from the database, so
message text never lands in a workflow history.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any


class UnknownTemplate(LookupError):
    pass


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    body: str
    """Python format string; `{first_name}` comes from the recipient row, the rest from params."""
    approved: bool = False
    """Has an approved WhatsApp template, used outside the 24 h session window (error 63016)."""

    @property
    def whatsapp_content_sid(self) -> str | None:
        """Content SID of the approved template (stable per name and version)."""
        if not self.approved:
            return None
        return "HX" + hashlib.md5(f"{self.name}:{self.version}".encode()).hexdigest()

    @property
    def fields(self) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(self.body) if name]

    def render(self, params: dict[str, Any]) -> str:
        missing = [f for f in self.fields if f not in params]
        if missing:
            raise ValueError(f"template {self.name} v{self.version} needs {', '.join(missing)}")
        return self.body.format(**params)

    def content_variables(self, params: dict[str, Any]) -> dict[str, str]:
        """WhatsApp templates take positional variables "1", "2", ... in body order."""
        return {str(i): str(params[f]) for i, f in enumerate(self.fields, start=1)}


TEMPLATES: dict[tuple[str, int], Template] = {
    (t.name, t.version): t
    for t in (
        Template(
            "payment_reminder",
            1,
            "Hi {first_name}, a friendly reminder: {debit_count} invoice(s) totalling {amount_due} "
            "are due. Pay securely here: {payment_link}",
            approved=True,
        ),
        Template(
            "credit_paused",
            1,
            "Hi {first_name}, your credit line is paused ({reason}). You can still order cash on delivery. "
            "Settle {amount_due} to reopen it.",
            approved=True,
        ),
        Template(
            "credit_resumed",
            1,
            "Hi {first_name}, thank you! Your credit line is open again.",
            approved=True,
        ),
        Template(
            "credit_paused_by_admin",
            1,
            "Hi {first_name}, our credit team has paused your credit line. You can still order cash on delivery. "
            "Contact us to reopen it.",
            approved=True,
        ),
        Template(
            "credit_unpaused",
            1,
            "Hi {first_name}, our credit team has reopened your credit line: you can order on credit again.",
            approved=True,
        ),
        Template(
            "credit_blocked",
            1,
            "Hi {first_name}, our credit team has blocked your account: orders cannot be placed for now. "
            "Contact us to talk it through.",
            approved=True,
        ),
        Template(
            "order_followup",
            1,
            "Hi {first_name}, your order #{order_id} is still waiting for you. Complete it before it expires.",
            approved=True,
        ),
        Template(
            "order_failed",
            1,
            "Hi {first_name}, we could not complete order #{order_id}. Any credit it used has been released.",
            approved=True,
        ),
        Template(
            "order_failed_credit",
            1,
            "Hi {first_name}, we could not complete order #{order_id}. {credit_released} of credit is available "
            "to you again and {balance_returned} is back on your account balance.",
            approved=True,
        ),
        Template(
            "order_followup",
            2,
            "Hi {first_name}, your order #{order_id} is still waiting for you. Complete it before it expires: "
            "{checkout_link}",
            approved=True,
        ),
        Template("insight", 1, "{insight_message}"),
        Template(
            "insight_weekly",
            1,
            "Hi {first_name}, your week with us: in the last 30 days you placed {orders_30d} order(s) worth "
            "{gmv_30d} ({gmv_change} on the 30 days before), {avg_order_value} on average. Best sellers: "
            "{top_products}. Invoices paid on time: {on_time_rate}.",
            approved=True,
        ),
        Template(
            "help",
            1,
            "Hi {first_name}, this is your supplier's account line: reminders, credit and order updates. "
            "Reply STOP to stop these messages, START to get them again.",
        ),
        Template(
            "churn_nudge",
            1,
            "Hi {first_name}, we would love to keep you with us. Update your payment details to keep "
            "your membership: {manage_link}",
            approved=True,
        ),
        Template(
            "churn_nudge_payment_failed",
            1,
            "Hi {first_name}, your last payment did not go through. Update your card to keep your membership: "
            "{manage_link}",
            approved=True,
        ),
        Template(
            "churn_nudge_cancel_scheduled",
            1,
            "Hi {first_name}, we are sorry to see you go. Your membership ends with this period; keep it here: "
            "{manage_link}",
            approved=True,
        ),
        Template(
            "churn_nudge_manual",
            1,
            "Hi {first_name}, we would love to keep you with us. Review or update your membership here: {manage_link}",
            approved=True,
        ),
    )
}


def get_template(name: str, version: int | None = None) -> Template:
    """A specific version, or the newest one when `version` is None."""
    if version is not None:
        try:
            return TEMPLATES[(name, version)]
        except KeyError:
            raise UnknownTemplate(f"no template {name} v{version}") from None
    versions = [t for (n, _), t in TEMPLATES.items() if n == name]
    if not versions:
        raise UnknownTemplate(f"no template {name}")
    return max(versions, key=lambda t: t.version)
