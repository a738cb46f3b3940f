"""The CLI beside a running dev stack: with only JOBCTL_HOME set, `jobctl` reads the stack's
connection file (and ignores one left by a stack that died); the listing commands; API keys."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from config.settings import DEV_STACK_FILE
from devtools.devstack import write_connection_file
from tests.activities.test_churn import new_member
from tests.e2e.api_harness import api_settings, http, new_key, running_workers  # noqa: F401 - pytest fixtures, taken as test arguments
from tests.e2e.test_schedules import JOBCTL


def jobctl_beside_the_stack(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_", "TASK_QUEUE", "MESSAGING_"))
    }
    return subprocess.run(
        [JOBCTL, *args], capture_output=True, text=True, timeout=60, env={**clean, "JOBCTL_HOME": str(home)}
    )


async def test_commands_from_a_second_shell_find_the_running_stack(
    tmp_path: Path,
    http: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    dev_env: WorkflowEnvironment,
    api_settings,
) -> None:
    company, member, _ = await new_member(engine, offsets=[30])
    opened = await http.post(
        "/v1/churn/cases",
        json={"membership_id": member, "company_id": company},
        headers=await new_key(engine, "churn:write"),
    )
    case_id = opened.json()["case_id"]
    stack_settings = api_settings.model_copy(
        update={"temporal_address": dev_env.client.service_client.config.target_host}
    )
    write_connection_file(tmp_path, stack_settings, database_url, "http://127.0.0.1:8000")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return jobctl_beside_the_stack(tmp_path, *args)

    risk, cases, shown, review, rules = await asyncio.gather(
        *(
            asyncio.to_thread(run, *a)
            for a in [
                ("credit", "risk"),
                ("churn", "cases", "--company", company, "--json"),
                ("churn", "show", str(case_id), "--company", company),
                ("loyalty", "items", "--state", "NEEDS_REVIEW"),
                ("churn", "settings", company, "--json"),
            ]
        )
    )
    assert risk.returncode == 0 and "receivables on" in risk.stdout, risk.stderr
    assert cases.returncode == 0 and [c["case_id"] for c in json.loads(cases.stdout)] == [case_id], cases.stderr
    assert shown.returncode == 0 and f"churn-case/{case_id}: OPEN" in shown.stdout, shown.stderr
    assert review.returncode == 0 and "last error" in review.stdout, review.stderr
    assert rules.returncode == 0 and json.loads(rules.stdout)["reminder_offsets_days"] == [30], rules.stderr
    bad = await asyncio.to_thread(run, "loyalty", "items", "--state", "LOST")
    assert bad.returncode == 2 and "--state must be" in bad.stderr

    # Issue #33: retailers and orders have no company, so a key bound to one could not be confined
    # on them (it read every retailer's credit): such a key is refused, naming the scopes.
    bound = ("--name", "shop-backend", "--scopes", "orders:write,credit:read,churn:read", "--company", company)
    refused = await asyncio.to_thread(run, "api-keys", "create", *bound)
    assert refused.returncode == 2 and "orders:write" in refused.stderr and "credit:read" in refused.stderr
    assert "churn:read" not in refused.stderr.split(";")[0], refused.stderr
    created = await asyncio.to_thread(
        run, "api-keys", "create", "--name", "shop-backend", "--scopes", "orders:write,credit:read", "--json"
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    assert (await http.get("/v1/credit/risk", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    listed = await asyncio.to_thread(run, "api-keys", "list")
    assert "shop-backend" in listed.stdout and key not in listed.stdout
    twice = await asyncio.to_thread(run, "api-keys", "create", "--name", "shop-backend", "--scopes", "orders:write")
    assert twice.returncode == 2 and "exists already" in twice.stderr
    assert (await asyncio.to_thread(run, "api-keys", "revoke", "shop-backend")).returncode == 0
    assert (await http.get("/v1/credit/risk", headers={"Authorization": f"Bearer {key}"})).status_code == 401


def test_a_file_left_by_a_stack_that_died_is_ignored(tmp_path: Path) -> None:
    (tmp_path / DEV_STACK_FILE).write_text(
        "DATABASE_URL=postgresql+psycopg://x@127.0.0.1:1/gone\nJOBCTL_DEV_PID=999999999\n"
    )
    result = jobctl_beside_the_stack(tmp_path, "credit", "risk")
    assert result.returncode == 2 and "DATABASE_URL: not set" in result.stderr
