"""The dev stack's supervisor on real child processes: a killed child comes back; one that cannot
come back stops the stack with one line naming it (`devtools/supervise.py`)."""

from __future__ import annotations

import asyncio
import signal
import subprocess

from structlog.testing import capture_logs

from devtools.supervise import Child, Supervisor


class Sleeper:
    """A child process that serves until killed; `broken` makes every restart fail as a child whose
    port is taken would (it exits at once)."""

    def __init__(self) -> None:
        self.broken = False
        self.process = subprocess.Popen(["sleep", "60"])
        self.starts = 1

    def alive(self) -> bool:
        return self.process.poll() is None

    async def restart(self) -> None:
        self.process.wait()
        self.process = subprocess.Popen(["false"] if self.broken else ["sleep", "60"])
        self.starts += 1
        await asyncio.sleep(0.2)
        if self.process.poll() is not None:
            raise RuntimeError(f"exited with {self.process.returncode}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def test_a_killed_child_is_restarted_and_one_that_cannot_be_stops_the_stack() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop, backoff=(0.05, 0.05))
    sleeper = Sleeper()
    supervisor.watch(Child("sleeper", sleeper.alive, sleeper.restart, hint="sleeper.log"))
    watching = asyncio.create_task(supervisor.run())
    try:
        with capture_logs() as logs:
            first = sleeper.process.pid
            sleeper.process.send_signal(signal.SIGKILL)
            for _ in range(100):
                if logs:
                    break
                await asyncio.sleep(0.05)
            assert sleeper.alive() and sleeper.process.pid != first
            assert not stop.is_set() and supervisor.failure is None
        assert [(e["event"], e["child"], e["attempt"]) for e in logs] == [("dev.child_restarted", "sleeper", 1)]

        sleeper.broken = True
        sleeper.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(stop.wait(), timeout=10)
        await asyncio.wait_for(watching, timeout=5)
        assert supervisor.failure is not None
        assert supervisor.failure.startswith(
            "the sleeper died and could not be restarted (2 attempts; last: RuntimeError: exited with 1)"
        )
        assert supervisor.failure.endswith("the dev stack stopped (see sleeper.log)")
        assert "\n" not in supervisor.failure
    finally:
        watching.cancel()
        sleeper.stop()
