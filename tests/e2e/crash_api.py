"""`jobctl api`, with one test hook: die like `kill -9` in the middle of a checkout-started request.

Run as `python -m tests.e2e.crash_api ARMED_FILE api --port P`. While ARMED_FILE exists, the next
checkout-started whose clock was started (the row written, the workflow started) kills the
process before the answer is stored under its Idempotency-Key or sent: the ambiguous moment a
client's retry must not double. Only one process takes the crash (whoever removes the file first).
The hook wraps the production service from outside.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from services import orders
from workers.cli import main


def install(armed: Path) -> None:
    start = orders.start_pending_order

    async def start_then_maybe_die(*args: object, **kwargs: object) -> object:
        started = await start(*args, **kwargs)  # type: ignore[arg-type]
        try:
            armed.unlink()  # atomic: one process wins the crash
        except FileNotFoundError:
            return started
        os.kill(os.getpid(), signal.SIGKILL)
        return started

    orders.start_pending_order = start_then_maybe_die  # type: ignore[assignment]


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    main(sys.argv[2:])
