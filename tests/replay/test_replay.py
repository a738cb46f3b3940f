"""Determinism safety: every recorded history replays against today's workflow code.

A change that alters a running workflow's commands without `workflow.patched` fails here,
before it is deployed. Regenerate the histories with `RECORD_HISTORIES=1 make test`.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from tests.replay.altered_insights import AlteredInsightsRegenerationWorkflow
from workers.families import all_workflows

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def _load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text())


def test_every_workflow_type_has_a_recorded_history() -> None:
    recorded = {
        name for path in HISTORIES for name in re.findall(r'"workflowType":\s*{\s*"name":\s*"(\w+)"', path.read_text())
    }
    assert recorded >= {w.__temporal_workflow_definition.name for w in all_workflows()}  # type: ignore[attr-defined]  # noqa: SLF001 - the SDK keeps each workflow's name there


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays_against_current_code(path: Path) -> None:
    replayer = Replayer(workflows=all_workflows(), data_converter=pydantic_data_converter)
    await replayer.replay_workflow(_load(path))


async def test_a_reordered_workflow_fails_replay() -> None:
    replayer = Replayer(workflows=[AlteredInsightsRegenerationWorkflow], data_converter=pydantic_data_converter)
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(_load(Path(__file__).parent / "histories" / "insights_regeneration.json"))


def _decoded_payloads(path: Path) -> list[str]:
    """Every payload of the history as text (payload data is base64 in the JSON)."""
    raw = path.read_text()
    return [base64.b64decode(d).decode("utf-8", "replace") for d in re.findall(r'"data":\s*"([A-Za-z0-9+/=]+)"', raw)]


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_histories_carry_no_phone_numbers_or_message_text(path: Path) -> None:
    payloads = _decoded_payloads(path)
    assert any(p.startswith("{") for p in payloads), "no JSON payload decoded: the scan would see nothing"
    text = path.read_text() + "\n".join(payloads)
    assert not re.search(r"\+\d{8,15}", text), "a phone number reached a workflow history"
    assert "friendly reminder" not in text and "Hi " not in text, "message text reached a workflow history"
