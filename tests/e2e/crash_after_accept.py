"""`jobctl worker`, with one test hook: die like `kill -9` after Twilio accepted a message.

Run as `python -m tests.e2e.crash_after_accept CRASH_FILE worker ...`. When CRASH_FILE exists,
the next send Twilio accepts kills the process before the outbox stores the sid: the ambiguous
moment the outbox's crash recovery is for. The hook wraps the production gateway from outside.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from activities.messaging.twilio_gateway import TwilioGateway
from workers.cli import main


def install(crash_file: Path) -> None:
    send = TwilioGateway.send

    async def send_then_maybe_die(self: TwilioGateway, *args: object, **kwargs: object) -> object:
        accepted = await send(self, *args, **kwargs)
        if crash_file.exists():
            crash_file.unlink(missing_ok=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return accepted

    TwilioGateway.send = send_then_maybe_die  # type: ignore[method-assign]


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    main(sys.argv[2:])
