"""Encrypted payloads: Temporal stores ciphertext; the codec server decodes only for token holders."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.insights import InsightActivities, business_day
from schemas.insights import InsightsRequest
from workers.codec import EncryptionCodec
from workers.codec_server import create_app
from config.settings import SettingsError, load_settings
from workers.temporal_client import connect
from workflows.insights import InsightsRegenerationWorkflow

OLD_KEY = base64.b64encode(b"o" * 32).decode()
NEW_KEY = base64.b64encode(b"n" * 32).decode()
TOKEN = "operator-token"
UI = "http://127.0.0.1:8233"


def _payloads(node: object) -> list[dict]:
    """Every payload in a JSON history, but search attributes (the server must index those)."""
    found = []
    if isinstance(node, dict):
        if "metadata" in node and "data" in node:
            found.append(node)
        for key, value in node.items():
            if key != "searchAttributes":
                found += _payloads(value)
    elif isinstance(node, list):
        for value in node:
            found += _payloads(value)
    return found


async def test_history_holds_only_ciphertext_and_the_codec_server_needs_the_token(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    address = dev_env.client.service_client.config.target_host
    settings = load_settings(temporal_address=address, payload_encryption_key=f"k2:{NEW_KEY},k1:{OLD_KEY}")
    client = await connect(settings)
    workflow_id = f"insights/encrypted-{uuid.uuid4()}"
    async with Worker(
        client, task_queue=task_queue, workflows=[InsightsRegenerationWorkflow],
        activities=[InsightActivities(engine).regenerate_insights_chunk, business_day],
    ):
        result = await client.execute_workflow(
            InsightsRegenerationWorkflow.run,
            InsightsRequest(insight_date=date(2026, 11, 23), business_timezone="Europe/Paris"),
            id=workflow_id, task_queue=task_queue,
        )
    assert result.insight_date == date(2026, 11, 23)

    shown = subprocess.run(
        [str(Path(sys.executable).parent / "temporal"), "workflow", "show", "--workflow-id", workflow_id,
         "--address", address, "--output", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    payloads = _payloads(json.loads(shown))
    assert payloads, "no payloads found in the history"
    raw = shown + "".join(base64.b64decode(p["data"]).decode("latin-1") for p in payloads)
    assert "Europe/Paris" not in raw and "insight_date" not in raw
    assert all(base64.b64decode(p["metadata"]["encoding"]) == b"binary/encrypted" for p in payloads)

    codec = EncryptionCodec.from_setting(f"k2:{NEW_KEY},k1:{OLD_KEY}")
    async with TestClient(TestServer(create_app(codec, TOKEN, {UI}))) as http:
        body = json.dumps({"payloads": payloads})
        refused = await http.post("/decode", data=body, headers={"Origin": UI})
        assert refused.status == 401
        decoded = await http.post("/decode", data=body, headers={"Origin": UI, "Authorization": f"Bearer {TOKEN}"})
        assert decoded.status == 200 and decoded.headers["Access-Control-Allow-Origin"] == UI
        text = "".join(base64.b64decode(p["data"]).decode() for p in (await decoded.json())["payloads"])
        assert "Europe/Paris" in text
        preflight = await http.options("/decode", headers={"Origin": UI, "Access-Control-Request-Method": "POST"})
        assert preflight.status == 204 and "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


async def test_rotated_out_keys_still_decrypt_and_unknown_keys_are_refused() -> None:
    old = EncryptionCodec.from_setting(f"k1:{OLD_KEY}")
    rotated = EncryptionCodec.from_setting(f"k2:{NEW_KEY},k1:{OLD_KEY}")
    from temporalio.api.common.v1 import Payload

    written_before_rotation = await old.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
    assert (await rotated.decode(written_before_rotation))[0].data == b'"x"'
    with pytest.raises(ValueError, match="unknown key id 'k2'"):
        await old.decode(await rotated.encode([Payload(data=b"y")]))


def test_a_malformed_key_is_a_one_line_setting_error() -> None:
    with pytest.raises(SettingsError, match="PAYLOAD_ENCRYPTION_KEY: key 'k1' must be 16, 24 or 32 bytes"):
        load_settings(payload_encryption_key="k1:" + base64.b64encode(b"short").decode())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jobctl"), "codec-server"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PAYLOAD_ENCRYPTION_KEY": f"k1:{OLD_KEY}"},
    )
    assert result.returncode == 2 and "CODEC_SERVER_TOKEN" in result.stderr
