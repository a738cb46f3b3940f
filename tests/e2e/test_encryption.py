"""Encrypted payloads: Temporal stores ciphertext; the codec server decodes only for token holders."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import pytest
import stripe
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.common.v1 import Payload, Payloads, WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import SignalWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.business_calendar import business_day
from activities.insights import InsightActivities
from activities.messaging.twilio_gateway import TwilioGateway
from config.settings import SettingsError, load_settings
from schemas import ids
from schemas.churn import CaseStatus
from schemas.insights import InsightsRequest
from services import churn as churn_api
from tests.activities.test_churn import churn_workers, new_member
from workers.codec import EncryptionCodec
from workers.codec_server import create_app
from workers.temporal_client import connect
from workflows.churn import ChurnCaseWorkflow
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
        client,
        task_queue=task_queue,
        workflows=[InsightsRegenerationWorkflow],
        activities=[InsightActivities(engine).regenerate_insights_chunk, business_day],
    ):
        result = await client.execute_workflow(
            InsightsRegenerationWorkflow.run,
            InsightsRequest(insight_date=date(2026, 11, 23), business_timezone="Europe/Paris"),
            id=workflow_id,
            task_queue=task_queue,
        )
    assert result.insight_date == date(2026, 11, 23)

    shown = subprocess.run(
        [
            str(Path(sys.executable).parent / "temporal"),
            "workflow",
            "show",
            "--workflow-id",
            workflow_id,
            "--address",
            address,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
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

    written_before_rotation = await old.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
    assert (await rotated.decode(written_before_rotation))[0].data == b'"x"'
    with pytest.raises(ValueError, match="unknown key id 'k2'"):
        await old.decode_strict(await rotated.encode([Payload(data=b"y")]))


def garbage(key_id: str) -> Payload:
    return Payload(metadata={"encoding": b"binary/encrypted", "encryption-key-id": key_id.encode()}, data=b"\x00" * 40)


async def test_the_codec_server_answers_400_for_payloads_it_cannot_decrypt() -> None:
    codec = EncryptionCodec.from_setting(f"k1:{OLD_KEY}")
    auth = {"Origin": UI, "Authorization": f"Bearer {TOKEN}"}
    async with TestClient(TestServer(create_app(codec, TOKEN, {UI}))) as http:
        for payload in (
            garbage("k1"),
            garbage("nobody-has-this-key"),
            Payload(metadata=garbage("k1").metadata, data=b"x"),
        ):
            body = json_format.MessageToJson(Payloads(payloads=[payload]))
            answer = await http.post("/decode", data=body, headers=auth)
            assert answer.status == 400, await answer.text()
            assert "bad payloads" in (await answer.json())["message"]


async def _signal_raw(client: Client, workflow_id: str, name: str, payload: Payload) -> None:
    """A signal exactly as a buggy or hostile sender could write it: our converter never sees it."""
    await client.workflow_service.signal_workflow_execution(
        SignalWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id),
            signal_name=name,
            input=Payloads(payloads=[payload]),
            identity="test",
            request_id=str(uuid.uuid4()),
        )
    )


async def _tasks_after_last_signal(handle: WorkflowHandle) -> tuple[int, int]:
    """(workflow tasks completed, failed) after the last signal event in the history. A signal
    that arrives while a workflow task runs is buffered: until that task ends it is in no history."""
    events = (await handle.fetch_history()).events
    signals = [i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
    after = events[signals[-1] + 1 :] if signals else []
    return (
        sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in after),
        sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in events),
    )


async def test_an_undecodable_signal_is_dropped_and_the_encrypted_case_keeps_answering(
    engine: AsyncEngine,
    dev_env: WorkflowEnvironment,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    address = dev_env.client.service_client.config.target_host
    settings = load_settings(
        temporal_address=address,
        payload_encryption_key=f"k1:{OLD_KEY}",
        task_queue=task_queue,
        messaging_task_queue=f"{task_queue}-msg",
    )
    client = await connect(settings)
    company, member, _phone = await new_member(engine, offsets=[30])
    async with churn_workers(client, engine, gateway, stripe_api, task_queue):
        case_id = await churn_api.start_case(client, engine, settings, member, "payment_failed", company_id=company)
        handle = client.get_workflow_handle(ids.churn_case(case_id), result_type=CaseStatus)
        assert (await handle.query(ChurnCaseWorkflow.status)).status == "OPEN"

        await _signal_raw(client, handle.id, "recovered", garbage("nobody-has-this-key"))
        await _signal_raw(client, handle.id, "recovered", garbage("k1"))  # a known key, a bad tag
        deadline = asyncio.get_running_loop().time() + 20
        while (counts := await _tasks_after_last_signal(handle)) == (0, 0):
            assert asyncio.get_running_loop().time() < deadline, "the worker never took the signals"
            await asyncio.sleep(0.2)
        assert counts[1] == 0, f"{counts[1]} workflow task failures"
        assert (await handle.query(ChurnCaseWorkflow.status)).status == "OPEN"

        await handle.signal(
            ChurnCaseWorkflow.recovered, {"actor_id": None, "company_id": company}
        )  # the real one ends it
        assert (await handle.result()).status == "RECOVERED"
    assert (await _tasks_after_last_signal(handle))[1] == 0


def test_a_malformed_key_is_a_one_line_setting_error() -> None:
    with pytest.raises(SettingsError, match="PAYLOAD_ENCRYPTION_KEY: key 'k1' must be 16, 24 or 32 bytes"):
        load_settings(payload_encryption_key="k1:" + base64.b64encode(b"short").decode())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jobctl"), "codec-server"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PAYLOAD_ENCRYPTION_KEY": f"k1:{OLD_KEY}"},
    )
    assert result.returncode == 2 and "CODEC_SERVER_TOKEN" in result.stderr
