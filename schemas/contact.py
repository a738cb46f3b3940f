"""How to reach someone, checked once for every door (issue #34): phone numbers, time zones,
locales and currencies.

A number the database would take (`phone ~ E164`) is not one Twilio can deliver to: "+15551234567"
matches the pattern and is no number at all, and a landline takes no WhatsApp message. So a phone
is parsed with `phonenumbers` (the library Twilio's own lookups follow), must be valid for its
region, and is stored in E.164, however it was written. A time zone must be one `zoneinfo` knows
(the nudges and reminders compute local hours with it), a locale one CLDR knows (stored as a BCP 47
tag, e.g. `hi-IN`), a currency an ISO 4217 code. Each refusal says what is expected, and never
repeats the value (a phone number is personal data; the refusal may be logged).

The directory's models (`schemas/directory.py`) and the older doors that take a time zone use these
types and functions, so there is one rule per kind of value.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

PHONE_EXAMPLE = "+14155550123"
PHONE_EXPECTED = f"give it in E.164, e.g. {PHONE_EXAMPLE}"


_KINDS: dict[str, int] = {}
"""E.164 number -> its `PhoneNumberType`, as `e164` found it: `reaches_whatsapp` asks next, and an
import validates thousands of rows a second (parsing and matching a number is most of a retailer
row's validation: docs/BENCHMARKS.md, imports). Bounded: cleared at `_KINDS_MAX`."""
_KINDS_MAX = 65_536


def e164(value: str) -> str:
    """`value` as an E.164 number (`+` country code, national number), or ValueError saying why."""
    import phonenumbers

    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a phone number is required; {PHONE_EXPECTED}")
    try:
        number = phonenumbers.parse(value.strip(), None)
    except phonenumbers.NumberParseException:
        raise ValueError(f"not a phone number with a country code; {PHONE_EXPECTED}") from None
    # `is_valid_number` is "its region's metadata gives it a type": one match, kept for WhatsApp
    kind = phonenumbers.number_type(number)
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        raise ValueError(f"not a valid number for any region; {PHONE_EXPECTED}")
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(_KINDS) >= _KINDS_MAX:
        _KINDS.clear()
    _KINDS[formatted] = kind
    return formatted


def reaches_whatsapp(phone: str) -> bool:
    """May this (valid, E.164) number hold a WhatsApp account: a mobile number, or one its region
    does not tell apart from a landline (the United States, Canada). A landline never does."""
    import phonenumbers

    kind = _KINDS.get(phone)
    if kind is None:
        kind = phonenumbers.number_type(phonenumbers.parse(phone, None))
    return kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)


def check_channel(phone: str | None, channel: str | None) -> str | None:
    """The phone, if `channel` can reach it; ValueError (for the field `phone`) if not."""
    if phone is not None and channel == "whatsapp" and not reaches_whatsapp(phone):
        raise ValueError(
            "not a mobile number, and WhatsApp is the preferred channel; give a mobile number or prefer sms"
        )
    return phone


def _phone(value: Any) -> Any:
    return e164(value) if isinstance(value, str) else value


Phone = Annotated[
    str,
    BeforeValidator(_phone),
    Field(description="any notation with the country code; stored in E.164", examples=[PHONE_EXAMPLE]),
]
"""A valid phone number, normalised to E.164 (`+14155550123`)."""


@cache
def _zones() -> frozenset[str]:
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


def time_zone(value: str) -> str:
    """`value` if it is an IANA time zone `zoneinfo` knows; ValueError otherwise."""
    if value not in _zones():
        raise ValueError("not an IANA time zone; give one such as Europe/Berlin, America/New_York or UTC")
    return value


TimeZone = Annotated[
    str, AfterValidator(time_zone), Field(min_length=1, max_length=64, examples=["America/New_York", "UTC"])
]
"""An IANA time zone (`zoneinfo.available_timezones()`): local hours are computed in it."""


def locale_tag(value: str) -> str:
    """`value` as a BCP 47 tag CLDR knows (`hi_in` -> `hi-IN`); ValueError otherwise."""
    from babel import Locale, UnknownLocaleError

    try:
        locale = Locale.parse(value.strip().replace("_", "-"), sep="-")
    except (UnknownLocaleError, ValueError, TypeError):
        raise ValueError("not a known locale; give a BCP 47 tag such as en, en-US or hi-IN") from None
    return "-".join(part for part in (locale.language, locale.script, locale.territory, locale.variant) if part)


LocaleTag = Annotated[str, AfterValidator(locale_tag), Field(min_length=2, max_length=35, examples=["en", "hi-IN"])]
"""A BCP 47 locale (the messages' language), normalised (`en-US`)."""

NOT_CURRENCIES = frozenset({"XXX", "XTS"})
"""ISO 4217's codes for "no currency" and "testing": nothing an account is kept in."""


@cache
def _currencies() -> frozenset[str]:
    from babel.numbers import list_currencies

    return frozenset(list_currencies()) - NOT_CURRENCIES


def currency(value: str) -> str:
    """`value` as an ISO 4217 code (upper case); ValueError otherwise."""
    code = value.strip().upper()
    if len(code) != 3 or code not in _currencies():
        raise ValueError("not an ISO 4217 currency; give a three-letter code such as USD, EUR or INR")
    return code


Currency = Annotated[str, AfterValidator(currency), Field(min_length=3, max_length=3, examples=["USD"])]
"""An ISO 4217 currency code, upper case."""
