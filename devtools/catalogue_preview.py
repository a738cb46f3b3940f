"""The demo retailers' reminder texts, rendered from the catalogue: `python -m devtools.catalogue_preview`.

The README's "Locales and currencies" block is this output (tests/unit/test_catalogue_preview.py
keeps them equal): each cadence tone's text, as the send path renders it (the catalogue's text
for the retailer's locale, amounts in its currency by CLDR).
"""

from __future__ import annotations

from activities.messaging.templates import load_catalogue
from schemas.credit import REMINDER_OFFSETS_DAYS, reminder_template, reminder_tone

DEMOS = (
    ("Demo Kirana Store (Pune)", "Ravi", "en-IN", "INR", "143450.50"),
    ("Demo Tienda Sol (Madrid)", "Lucía", "es-ES", "EUR", "1544.50"),
)
LINK = "https://pay.example.com/pay/AbC123"


def preview() -> str:
    catalogue = load_catalogue()
    out: list[str] = []
    for shop, first_name, locale, currency, amount in DEMOS:
        out.append(f"{shop}, {locale}, {currency}:")
        out.append("")
        steps: dict[str, list[int]] = {}
        for days in REMINDER_OFFSETS_DAYS:
            steps.setdefault(reminder_template(days), []).append(days)
        for kind, days_list in steps.items():
            template = catalogue.get(kind)
            params = template.localise(
                {"first_name": first_name, "debit_count": 2, "amount_due": amount, "payment_link": LINK},
                currency,
                locale,
            )
            when = ", ".join(f"{d:+d}" for d in days_list)
            text = template.variant(locale).render(params)
            out.append(f"- {reminder_tone(days_list[0])} (days {when}): {text}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(preview(), end="")
