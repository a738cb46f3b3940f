"""Sender pools: the settings that name them, and which number a recipient's messages go from."""

from __future__ import annotations

from collections import Counter

import pytest

from activities.messaging.senders import Sender, Senders, recipient_key, rendezvous
from config.settings import SEND_RATE_HEADROOM, SettingsError, load_settings
from workers.families.messaging import sender_pools

POOL = tuple(Sender(f"whatsapp:+1555777000{i}", 80.0) for i in range(1, 4))
RECIPIENTS = [recipient_key("retailer", str(n)) for n in range(12_000)]


def test_a_pool_setting_gives_each_number_its_own_rate_and_the_queue_their_sum() -> None:
    settings = load_settings(
        twilio_whatsapp_senders="+15557770001:80, whatsapp:+15557770002:40",
        twilio_sms_senders="+15557770003:10",
        sender_sticky=True,
    )
    senders = sender_pools(settings)

    assert senders.sticky
    assert senders.pool("whatsapp") == (
        Sender("whatsapp:+15557770001", 80 * SEND_RATE_HEADROOM),
        Sender("whatsapp:+15557770002", 40 * SEND_RATE_HEADROOM),
    )
    assert senders.pool("sms") == (Sender("+15557770003", 10 * SEND_RATE_HEADROOM),)
    assert settings.send_rate == pytest.approx(130 * SEND_RATE_HEADROOM)
    paces = {s.pace for s in senders.pool("whatsapp")}
    assert paces == {"twilio:whatsapp:+15557770001", "twilio:whatsapp:+15557770002"}


def test_without_a_pool_the_single_sender_settings_work_as_before() -> None:
    settings = load_settings(twilio_sms_from="+15557770009", messages_per_second=20)
    senders = sender_pools(settings)

    assert senders.pool("sms") == (Sender("+15557770009"),)  # on the shared pace, at MESSAGES_PER_SECOND
    assert senders.pool("sms")[0].pace == "twilio" and not senders.sticky
    assert settings.send_rate == pytest.approx(20 * SEND_RATE_HEADROOM)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("+15557770001", "TWILIO_SMS_SENDERS: entry 1 must be an E.164 number and its messages/s"),
        ("+15557770001:80,15557770002:80", "TWILIO_SMS_SENDERS: entry 2: not an E.164 phone number"),
        ("+1 555 777 0001:80", "TWILIO_SMS_SENDERS: entry 1: not an E.164 phone number"),
        ("+15557770001:0", "TWILIO_SMS_SENDERS: entry 1: the messages per second must be > 0"),
        ("+15557770001:fast", "TWILIO_SMS_SENDERS: entry 1: the messages per second is not a number"),
        ("+15557770001:80,+15557770001:80", "TWILIO_SMS_SENDERS: entry 2: the same number twice"),
        ("+15557770001:80,", "TWILIO_SMS_SENDERS: entry 2 must be"),
    ],
)
def test_a_malformed_pool_is_refused_at_start_in_one_line_naming_the_entry_not_the_number(
    value: str, error: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(twilio_sms_senders=value)
    message = str(raised.value)
    assert message.startswith(error) and "\n" not in message
    assert "5557770001" not in message.removeprefix(error)  # the entry's position, not its number


def test_real_twilio_refuses_a_pool_of_test_numbers() -> None:
    with pytest.raises(SettingsError, match="^TWILIO_SMS_SENDERS: a number is one of Twilio's test numbers"):
        load_settings(
            twilio_account_sid="AC" + "1" * 32,
            twilio_auth_token="token",
            twilio_whatsapp_from="whatsapp:+15557770001",
            twilio_sms_senders="+15557770002:80,+15005550006:80",
            actor_hash_key="k",
        )


def test_a_sticky_recipient_keeps_its_number_whatever_the_pool_order() -> None:
    first = {who: rendezvous(POOL, who) for who in RECIPIENTS[:500]}
    again = {who: rendezvous(tuple(reversed(POOL)), who) for who in RECIPIENTS[:500]}
    assert first == again
    # A fixed answer: the choice is a hash of the id (not Python's per-process hash), so every worker agrees.
    assert rendezvous(POOL, "retailer:42") == rendezvous(POOL, "retailer:42")
    assert Counter(rendezvous(POOL, who).address for who in RECIPIENTS).keys() == {s.address for s in POOL}


def test_a_number_added_to_the_pool_takes_about_a_quarter_of_recipients_and_moves_no_other() -> None:
    grown = (*POOL, Sender("whatsapp:+15557770004", 80.0))
    before = {who: rendezvous(POOL, who) for who in RECIPIENTS}
    after = {who: rendezvous(grown, who) for who in RECIPIENTS}

    moved = [who for who in RECIPIENTS if after[who] != before[who]]
    assert {after[who].address for who in moved} == {"whatsapp:+15557770004"}  # only to the new number
    assert 0.22 < len(moved) / len(RECIPIENTS) < 0.28  # ~1/4


def test_recipients_spread_over_the_pool_in_proportion_to_each_numbers_rate() -> None:
    pool = (Sender("+15557770001", 90.0), Sender("+15557770002", 30.0))
    shares = Counter(rendezvous(pool, who).address for who in RECIPIENTS)
    assert 0.72 < shares["+15557770001"] / len(RECIPIENTS) < 0.78


def test_sticky_senders_choose_by_the_recipient_not_sticky_ones_may_take_any_number() -> None:
    sticky = Senders(whatsapp=POOL, sms="+15557770009", sticky=True)
    loose = Senders(whatsapp=POOL, sms="+15557770009")
    chosen = sticky.of("whatsapp", "member:7")

    assert chosen == rendezvous(POOL, "member:7") and sticky.candidates("whatsapp", chosen) == (chosen,)
    assert loose.candidates("whatsapp", loose.of("whatsapp", "member:7")) == POOL
    assert sticky.of("sms", "member:7") == Sender("+15557770009")
