"""The Twilio emulator in its own process, as Twilio is: a test's event loop (which may also be
running hundreds of workflows) is then not what spaces the requests reaching its rate limit."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def twilio_emulator_process(log_dir: Path, *args: str) -> AsyncIterator[str]:
    """Serve `python -m devtools.twilio_emulator --port 0 *args` for the block; yields its URL.

    Its log (a line per accepted message) goes to `log_dir/twilio-emulator.log`, not a pipe
    nobody drains.
    """
    log_path = log_dir / "twilio-emulator.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.twilio_emulator", "--port", "0", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        url = None
        for _ in range(1200):  # up to a minute: a loaded CI machine starts Python slowly
            assert process.poll() is None, f"the emulator exited: {log_path.read_text()}"
            found = re.search(r"twilio_emulator\.listening.*url=(http://127\.0\.0\.1:\d+)", log_path.read_text())
            if found:
                url = found.group(1)
                break
            await asyncio.sleep(0.05)
        assert url, f"the emulator did not start: {log_path.read_text()}"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
