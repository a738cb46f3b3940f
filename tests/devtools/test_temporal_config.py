"""The dev server `jobctl dev` starts holds a cluster's history cache, read off its own metrics.

A dynamic-config key the server does not know is ignored without a word: a session once raised
`history.cacheMaxSize` (the per-shard cache, unused by this server) and saw nothing move. So the
test asks the running server what its cache is, not what we passed it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from config.settings import Settings
from devtools import temporal_config
from devtools.devstack import temporal_server_command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mutable_state_cache_size(metrics_url: str) -> int | None:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    found = re.search(r'^cache_size\{[^}]*cache_type="mutablestate"[^}]*\} (\S+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else None


@pytest.mark.asyncio(loop_scope="session")
async def test_the_dev_server_keeps_a_clusters_history_cache(tmp_path: Path) -> None:
    port, metrics = _free_port(), _free_port()
    settings = Settings(temporal_address=f"127.0.0.1:{port}", temporal_ui_port=_free_port())
    command = [*temporal_server_command(settings, tmp_path / "temporal.db"), "--metrics-port", str(metrics)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        # The cache's gauges read 0 until the history service has put a run in it.
        await client.start_workflow("NoWorkerHere", id=f"cache-{uuid.uuid4()}", task_queue="nobody")
        url, size = f"http://127.0.0.1:{metrics}/metrics", None
        while not size and time.monotonic() < deadline + 30:
            size = _mutable_state_cache_size(url)
            await asyncio.sleep(0.2)
        assert size == int(temporal_config.CLUSTER_CACHE["history.hostLevelCacheMaxSize"]), size
        assert size > 8_192, "the CLI's own dev config holds 8,192 runs"
    finally:
        server.terminate()
        server.wait(timeout=30)
