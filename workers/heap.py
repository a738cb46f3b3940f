"""The cycle collector and long-running processes.

Everything start-up builds (imported modules, the FastAPI app, the SDK's tables, pydantic's
validators) lives as long as the process; a full collection walks all of it anyway. Measured
with `gc.callbacks`: 100-400 ms stalls in `jobctl api` and `jobctl worker`, each one a spike in
the latency of every request or task in flight (the API's p99). Freezing the start-up heap,
as Python's docs suggest for long-lived start-up objects, leaves a full collection only what
came after.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Call once the process is ready to serve: collect start-up's garbage, freeze the rest."""
    gc.collect()
    gc.freeze()
