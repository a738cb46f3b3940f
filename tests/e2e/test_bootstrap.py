"""`jobctl bootstrap` against a fresh dev server: ready for the worker, and a second run changes nothing."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from aiohttp.test_utils import TestServer
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from devtools import binaries
from schemas import search_attributes
from workers import families
from workers.codec import EncryptionCodec
from workers.codec_server import create_app
from workflows.brake import BRAKE_WORKFLOW_ID

JOBCTL = str(Path(sys.executable).parent / "jobctl")
KEY = "k1:" + base64.b64encode(b"b" * 32).decode()
OTHER_KEY = "k1:" + base64.b64encode(b"x" * 32).decode()
TOKEN = "bootstrap-test-token"


@pytest_asyncio.fixture(scope="module")
async def fresh_server() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server of its own, with none of jobctl's search attributes (the session's has them)."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binaries.temporal_cli(), dev_server_log_level="error"
    )
    yield env
    await env.shutdown()


async def jobctl(env: WorkflowEnvironment, *args: str, **extra: str) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_", "PAYLOAD_"))}
    environ = {
        **clean,
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "TEMPORAL_CONFIG_FILE": os.devnull,  # the machine's `temporal` CLI profile is not this test's
        "PAYLOAD_ENCRYPTION_KEY": KEY,
        "CODEC_SERVER_TOKEN": TOKEN,
        **extra,
    }
    process = await asyncio.create_subprocess_exec(
        JOBCTL, *args, env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def outcomes(stdout: str) -> dict[str, str]:
    lines = [line for line in stdout.splitlines() if ": " in line and not line.startswith("bootstrapping")]
    return {name: rest.split(" ", 1)[0] for name, rest in (line.split(": ", 1) for line in lines)}


async def test_bootstrap_twice_leaves_a_fresh_server_ready_and_the_second_run_changes_nothing(
    fresh_server: WorkflowEnvironment,
) -> None:
    code, first, err = await jobctl(fresh_server, "bootstrap")
    assert code == 0, first + err
    schedule_ids = [d.schedule_id for d in families.all_schedules()]
    expected = (
        [f"search attribute {key.name}" for key in search_attributes.ALL]
        + [f"workflow {BRAKE_WORKFLOW_ID}", "codec key"]
        + [f"schedule {sid}" for sid in schedule_ids]
    )
    assert list(outcomes(first)) == expected, first
    assert {o for name, o in outcomes(first).items() if name != "codec key"} == {"created"}, first
    assert outcomes(first)["codec key"] == "unchanged" and "key k1 encrypts" in first

    client = fresh_server.client
    attributes = (
        await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=client.namespace))
    ).custom_attributes
    assert {key.name: attributes.get(key.name) for key in search_attributes.ALL} == {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in search_attributes.ALL
    }
    brake = await client.get_workflow_handle(BRAKE_WORKFLOW_ID).describe()
    assert brake.status == WorkflowExecutionStatus.RUNNING
    assert sorted([s.id async for s in await client.list_schedules()]) == sorted(schedule_ids)
    updates = {sid: (await client.get_schedule_handle(sid).describe()).info.last_updated_at for sid in schedule_ids}

    code, second, err = await jobctl(fresh_server, "bootstrap")
    assert code == 0, second + err
    assert outcomes(second) == dict.fromkeys(expected, "unchanged"), second
    assert (await client.get_workflow_handle(BRAKE_WORKFLOW_ID).describe()).run_id == brake.run_id
    again = {sid: (await client.get_schedule_handle(sid).describe()).info.last_updated_at for sid in schedule_ids}
    assert again == updates, "the second run wrote a schedule"


async def test_a_changed_setting_updates_only_what_it_changes(fresh_server: WorkflowEnvironment) -> None:
    await jobctl(fresh_server, "bootstrap")
    code, out, err = await jobctl(fresh_server, "bootstrap", BUSINESS_TIMEZONE="Europe/Berlin")
    assert code == 0, out + err
    changed = {name for name, outcome in outcomes(out).items() if outcome == "updated"}
    daily = {f"schedule {d.schedule_id}" for d in families.all_schedules() if d.daily_at}
    assert changed == daily and daily, out
    await jobctl(fresh_server, "bootstrap")  # back to UTC for the other tests


async def test_the_codec_check_asks_the_codec_server_and_fails_on_another_key(
    fresh_server: WorkflowEnvironment,
) -> None:
    async with TestServer(create_app(EncryptionCodec.from_setting(KEY), TOKEN, set())) as same:
        code, out, err = await jobctl(fresh_server, "bootstrap", "--codec-server", str(same.make_url("")))
        assert code == 0 and f"codec server {same.make_url('')}: unchanged" in out, out + err
    async with TestServer(create_app(EncryptionCodec.from_setting(OTHER_KEY), TOKEN, set())) as other:
        code, out, err = await jobctl(fresh_server, "bootstrap", "--codec-server", str(other.make_url("")))
        assert code == 1 and f"codec server {other.make_url('')}: failed" in out, out + err
        assert "does not decode this key's payloads" in out and "1 step(s) failed" in err


async def test_a_rotation_rewrites_the_schedules_and_a_key_dropped_too_early_is_refused(
    fresh_server: WorkflowEnvironment,
) -> None:
    await jobctl(fresh_server, "bootstrap")
    new_only = f"k2:{OTHER_KEY[3:]}"
    code, out, err = await jobctl(fresh_server, "bootstrap", PAYLOAD_ENCRYPTION_KEY=new_only)
    assert code == 1 and outcomes(out)["codec key"] == "failed", out + err
    assert "unknown key id 'k1'" in out and "schedules: failed (skipped" in out, out

    rotated = f"{new_only},{KEY}"  # the new key first, the old one kept for what it encrypted
    code, out, err = await jobctl(fresh_server, "bootstrap", PAYLOAD_ENCRYPTION_KEY=rotated)
    assert code == 0 and "key k2 encrypts" in out, out + err
    assert {o for n, o in outcomes(out).items() if n.startswith("schedule ")} == {"updated"}, "re-encrypted"
    code, out, err = await jobctl(fresh_server, "bootstrap", PAYLOAD_ENCRYPTION_KEY=rotated)
    assert code == 0 and set(outcomes(out).values()) == {"unchanged"}, out + err
    code, out, err = await jobctl(fresh_server, "bootstrap", PAYLOAD_ENCRYPTION_KEY=new_only)
    assert code == 0 and set(outcomes(out).values()) == {"unchanged"}, "the schedules no longer need k1"

    code, out, err = await jobctl(fresh_server, "bootstrap", PAYLOAD_ENCRYPTION_KEY=f"{KEY},{new_only}")
    assert code == 0, out + err  # rotated back to k1 for the other tests


async def test_bad_settings_are_exit_2_and_an_unreachable_cluster_exit_1(fresh_server: WorkflowEnvironment) -> None:
    code, _, err = await jobctl(fresh_server, "bootstrap", TEMPORAL_TLS_CERT="/nowhere/cert.pem")
    assert code == 2 and "TEMPORAL_TLS_CERT" in err, err
    code, _, err = await jobctl(fresh_server, "bootstrap", TEMPORAL_ADDRESS="127.0.0.1:1")
    assert code == 1 and "Temporal at 127.0.0.1:1" in err, err
