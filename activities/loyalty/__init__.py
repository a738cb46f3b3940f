"""The loyalty job family's activities."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.worker import WorkerDeps


def worker_activities(deps: WorkerDeps) -> list[object]:
    """The activities the jobs worker registers for this family."""
    return []
