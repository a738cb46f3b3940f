"""Sender pools: which of a channel's numbers a message goes from.

A channel (WhatsApp, SMS) has one sender number or a pool of them, each with its own rate: Twilio
(and Meta, about 80 msg/s per WhatsApp number) limits each sender, so a pool's throughput is the sum
of its numbers'. Each paced number has its own row in `messaging_pace` (`Sender.pace`); the senders
outside a pool share the one row `twilio` at MESSAGES_PER_SECOND, as a single sender always did.

Sticky (SENDER_STICKY): a recipient's messages always go from the same number, chosen by weighted
rendezvous hashing of the recipient's type and id (never its phone) over the pool. The choice needs
no state: it is the same on every worker, every attempt and after a restart, and a number added to
the pool takes over only the recipients it now scores highest for (about 1/n of them, weighted by
rate); the others keep theirs. Not sticky, a message takes the number whose next slot is soonest
(`outbox.reserve_pool_slot_within`), so every number of the pool is kept busy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

SHARED_PACE = "twilio"
"""The `messaging_pace` row of the senders without a rate of their own."""


@dataclass(frozen=True)
class Sender:
    address: str
    """Twilio's `From`: `+15557770001` for SMS, `whatsapp:+15557770001` for WhatsApp."""
    per_second: float | None = None
    """Its own pace (messages per second, the headroom taken); None: the shared pace."""

    @property
    def pace(self) -> str:
        """Its row in `messaging_pace`: its own, or the shared one."""
        return f"twilio:{self.address}" if self.per_second else SHARED_PACE


def _score(sender: Sender, who: str) -> float:
    """Weighted rendezvous score: the highest wins; a number's share of recipients is its rate's share."""
    digest = hashlib.blake2b(f"{who}\x00{sender.address}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)  # in (0, 1)
    return -(sender.per_second or 1.0) / math.log(unit)


def rendezvous(pool: Sequence[Sender], who: str) -> Sender:
    """The pool's number for `who` (a stable id, e.g. `retailer:42`): the same wherever it is asked."""
    return max(pool, key=lambda sender: _score(sender, who))


@dataclass(frozen=True)
class Senders:
    """Each channel's sender: one address (paced at the activities' shared rate) or a pool."""

    whatsapp: str | tuple[Sender, ...]
    sms: str | tuple[Sender, ...]
    sticky: bool = False

    def __post_init__(self) -> None:
        for channel in ("whatsapp", "sms"):
            if not self.pool(channel):
                raise ValueError(f"the {channel} sender pool is empty")

    def pool(self, channel: str) -> tuple[Sender, ...]:
        value = self.whatsapp if channel == "whatsapp" else self.sms
        return (Sender(value),) if isinstance(value, str) else value

    def of(self, channel: str, who: str) -> Sender:
        """The number `who`'s message is recorded as going from when its row is claimed: its sticky
        number, or (not sticky) a first guess that the slot reservation may change."""
        pool = self.pool(channel)
        return pool[0] if len(pool) == 1 else rendezvous(pool, who)

    def candidates(self, channel: str, chosen: Sender) -> tuple[Sender, ...]:
        """The numbers a message may go from once `chosen` was recorded: that one when sticky, else the pool."""
        return (chosen,) if self.sticky else self.pool(channel)

    def default(self, channel: str) -> str:
        """Where rows recorded before senders were stored were sent from."""
        return self.pool(channel)[0].address


def recipient_key(recipient_type: str, recipient_id: str) -> str:
    """What a sticky choice hashes: the recipient's type and id, never its phone."""
    return f"{recipient_type}:{recipient_id}"
