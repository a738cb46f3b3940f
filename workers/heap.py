"""The cycle collector and long-running processes.

Everything start-up builds (imported modules, the FastAPI app, the SDK's tables, pydantic's
validators) lives as long as the process; a full collection walks all of it anyway, a stall for
every request or task in flight (timed in docs/BENCHMARKS.md, the API section). Frozen, the
start-up heap is left out of every later collection, which then walks only what came after.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Call once the process is ready to serve: collect start-up's garbage, freeze the rest."""
    gc.collect()
    gc.freeze()
