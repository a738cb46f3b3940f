"""The dev stack's supervisor: a child that dies is restarted, or the stack stops with one line.

`jobctl dev` runs the Temporal dev server and PostgreSQL as child processes. Before this, a `kill -9`
of either left the stack up and useless: the worker retried gRPC forever while `/readyz` answered
503. Now each child is watched; one that dies is started again on its own data (the Temporal
SQLite file, PostgreSQL's data directory: nothing is lost) after a back-off, a bounded number of
times, with one log line each time. When it cannot be restarted, the supervisor records why and
sets the stack's stop event: the stack drains and exits non-zero with that one line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
"""The waits before each restart attempt of one death; after the last attempt fails, the stack stops."""
MAX_DEATHS = 5
DEATH_WINDOW_S = 300.0
"""A child that dies more than MAX_DEATHS times in DEATH_WINDOW_S is not restarted again: something
outside it is wrong (a full disk, a port taken), and restarting would only hide it."""
POLL_S = 0.5


class StackFailed(Exception):
    """A child of the dev stack died and could not be restarted; the message is the one line to print."""


@dataclass
class Child:
    """A supervised child: `alive()` answers at once; `restart()` starts it again on the same data and
    address and returns once it serves (it raises when it cannot)."""

    name: str
    alive: Callable[[], bool]
    restart: Callable[[], Awaitable[None]]
    hint: str = ""
    """Where to look when it cannot be restarted (its log file)."""
    deaths: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(self, stop: asyncio.Event, *, backoff: tuple[float, ...] = BACKOFF_S) -> None:
        self._stop = stop
        self._backoff = backoff
        self._children: list[Child] = []
        self.failure: str | None = None
        """Why the stack stopped (set before `stop`), or None."""

    def watch(self, child: Child) -> None:
        self._children.append(child)

    async def run(self) -> None:
        """Watch until the stack stops; children that died together are restarted side by side."""
        reviving: dict[str, asyncio.Task[bool]] = {}
        try:
            while not self._stop.is_set():
                for child in self._children:
                    task = reviving.get(child.name)
                    if task is not None and task.done():
                        del reviving[child.name]
                        if not task.result():
                            return
                    if child.name not in reviving and not child.alive():
                        reviving[child.name] = asyncio.create_task(self._revive(child))
                try:
                    await asyncio.wait_for(self._stop.wait(), POLL_S)
                except TimeoutError:
                    pass
        finally:
            for task in reviving.values():
                task.cancel()

    async def _revive(self, child: Child) -> bool:
        now = time.monotonic()
        child.deaths = [t for t in child.deaths if now - t < DEATH_WINDOW_S] + [now]
        if len(child.deaths) > MAX_DEATHS:
            return self._give_up(child, f"died {len(child.deaths)} times in {DEATH_WINDOW_S:.0f} s")
        error: BaseException | None = None
        for attempt, wait in enumerate(self._backoff, start=1):
            await asyncio.sleep(wait)
            if self._stop.is_set():
                return False
            try:
                await child.restart()
            except Exception as exc:  # noqa: BLE001 - any failure to start is retried, then reported
                error = exc
                continue
            log.warning("dev.child_restarted", child=child.name, attempt=attempt, deaths=len(child.deaths))
            return True
        detail = f"{type(error).__name__}: {error}".splitlines()[0] if error else "no attempt"
        return self._give_up(child, f"died and could not be restarted ({len(self._backoff)} attempts; last: {detail})")

    def _give_up(self, child: Child, why: str) -> bool:
        self.failure = f"the {child.name} {why}; the dev stack stopped" + (f" (see {child.hint})" if child.hint else "")
        log.error("dev.child_failed", child=child.name, detail=self.failure)
        self._stop.set()
        return False
