"""The console's Messaging and jobs page (issue #37), for operators (read-only users see it too):
the messaging brake with its pause and resume (`services.messaging.pause|resume`, as `jobctl
messaging pause|resume` and `POST /v1/messaging/brake/*`, with `console:{username}` as the actor
on the brake's row), the messages held by reason and failed by Twilio error code (24 h), and, from
Temporal through the API process's client, the task queues' backlog, every schedule's last and
next run and each job family's latest run per workflow type, linked into the Temporal Web UI.

The Temporal half is read at most every JOBS_MAX_AGE_S per process (the page says when). Temporal
unreachable: the database half is shown, the Temporal half says it did not answer (200).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from schemas.text import Reason
from services import messaging
from workers.console import users
from workers.console.pages import _form, _session, _signed_in, _stack, redirect, render

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/console/ops", include_in_schema=False)
_reason = TypeAdapter(Reason)
TEMPORAL_TIMEOUT_S = 3.0
"""The whole Temporal half of the page: past this, the page says Temporal did not answer."""
JOBS_MAX_AGE_S = 10.0
"""The Temporal half is read at most this often per API process, whoever asks (concurrent pages
share one reading): about 30 RPCs a reading, and the dev server's visibility store stalls now and
then (a second on a busy machine) that every page would otherwise wait for."""
RPC_TIMEOUT = timedelta(seconds=2)


def temporal_ui(settings: Settings) -> str:
    """TEMPORAL_UI_URL, else the dev server's UI beside TEMPORAL_ADDRESS (as `jobctl dev` prints it)."""
    if settings.temporal_ui_url:
        return settings.temporal_ui_url.rstrip("/")
    host = settings.temporal_address.rsplit(":", 1)[0]
    return f"http://{host}:{settings.temporal_ui_port}"


def workflow_url(settings: Settings, workflow_id: str, run_id: str | None = None) -> str:
    """The workflow's page in the Temporal Web UI (its latest run without `run_id`)."""
    base = f"{temporal_ui(settings)}/namespaces/{quote(settings.temporal_namespace, safe='')}/workflows"
    return f"{base}/{quote(workflow_id, safe='')}" + (f"/{quote(run_id, safe='')}/history" if run_id else "")


def schedule_url(settings: Settings, schedule_id: str) -> str:
    namespace = quote(settings.temporal_namespace, safe="")
    return f"{temporal_ui(settings)}/namespaces/{namespace}/schedules/{quote(schedule_id, safe='')}"


@dataclass
class Jobs:
    """What Temporal said; `problem` when it did not answer."""

    schedules: list[dict[str, Any]]
    latest: list[dict[str, Any]]
    backlog: list[tuple[str, int]]
    problem: str | None = None
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class JobsCache:
    """The last reading of the Temporal half, renewed when older than JOBS_MAX_AGE_S (one reader
    at a time). A failed reading is kept as long: a cluster that is down is not asked again by
    every page view, and each answers at once saying so."""

    def __init__(self) -> None:
        self.reading: Jobs | None = None
        self.read = float("-inf")
        self.lock = asyncio.Lock()

    async def get(self, client: Client, settings: Settings) -> Jobs:
        async with self.lock:
            if self.reading is None or time.monotonic() - self.read >= JOBS_MAX_AGE_S:
                self.reading, self.read = await read_jobs(client, settings), time.monotonic()
            return self.reading


async def _schedule(client: Client, settings: Settings, definition: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": definition.schedule_id,
        "summary": definition.summary,
        "url": schedule_url(settings, definition.schedule_id),
    }
    try:
        described = await client.get_schedule_handle(definition.schedule_id).describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
        return {**row, "missing": True}  # not applied yet (`jobctl schedules apply`)
    info = described.info
    last = max(info.recent_actions, key=lambda a: a.started_at, default=None)
    started = last.action if last and isinstance(last.action, ScheduleActionExecutionStartWorkflow) else None
    last_id = started.workflow_id if started else None
    last_run = started.first_execution_run_id if started else None
    return {
        **row,
        "missing": False,
        "paused": described.schedule.state.paused,
        "note": described.schedule.state.note,
        "last_at": last.started_at if last else None,
        "last_workflow": last_id,
        "last_url": workflow_url(settings, last_id, last_run) if last_id else None,
        "next_at": info.next_action_times[0] if info.next_action_times else None,
        "actions": info.num_actions,
        "missed": info.num_actions_missed_catchup_window,
    }


async def _latest(client: Client, settings: Settings, family: str, workflow_type: str) -> dict[str, Any]:
    row: dict[str, Any] = {"family": family, "type": workflow_type, "run": None}
    async for execution in client.list_workflows(
        f'WorkflowType = "{workflow_type}"', limit=1, page_size=1, rpc_timeout=RPC_TIMEOUT
    ):
        row["run"] = {
            "id": execution.id,
            "status": execution.status.name.replace("_", " ").lower() if execution.status else "unknown",
            "started": execution.start_time,
            "closed": execution.close_time,
            "url": workflow_url(settings, execution.id, execution.run_id),
        }
    return row


async def _backlog(client: Client, queue: str) -> tuple[str, int]:
    total = 0
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind, report_stats=True
            ),
            timeout=RPC_TIMEOUT,
        )
        total += response.stats.approximate_backlog_count
    return queue, int(total)


async def read_jobs(client: Client, settings: Settings) -> Jobs:
    """Schedules, each workflow type's latest run and the queues' backlog, read concurrently."""
    from workers.families import FAMILIES

    types = [(f.name, wf.__name__) for f in FAMILIES for wf in f.workflows()]
    schedules = [s for f in FAMILIES for s in f.schedules()]

    async def everything() -> Jobs:
        described, latest, queues = await asyncio.gather(
            asyncio.gather(*(_schedule(client, settings, s) for s in schedules)),
            asyncio.gather(*(_latest(client, settings, family, name) for family, name in types)),
            asyncio.gather(*(_backlog(client, q) for q in (settings.task_queue, settings.messaging_task_queue))),
        )
        return Jobs(list(described), list(latest), list(queues))

    try:
        return await asyncio.wait_for(everything(), timeout=TEMPORAL_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - Temporal down or slow: the page says so and shows the rest
        log.warning("console.temporal_unavailable", page="ops", error=type(error).__name__)
        problem = f"Temporal did not answer ({type(error).__name__}): schedules and runs are unknown for now."
        return Jobs([], [], [], problem=problem)


async def _page(
    request: Request,
    user: users.User,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    stack = _stack(request)
    brake = await messaging.status(stack.engine)
    held, failed = await messaging.held_and_failed(stack.engine)
    cache = getattr(request.app.state, "console_jobs", None)
    if cache is None:
        cache = request.app.state.console_jobs = JobsCache()
    jobs = await cache.get(stack.client, stack.settings)
    context = {
        "user": user,
        "section": "ops",
        "brake": brake,
        "held": held,
        "failed": failed,
        "jobs": jobs,
        "ui": temporal_ui(stack.settings),
        "brake_url": workflow_url(stack.settings, "messaging-brake"),
        "now": datetime.now(stack.settings.tz),
        "errors": errors or {},
        "values": values or {},
    }
    return render(request, "ops_jobs.html", context, status=status)


@router.get("")
async def ops(request: Request) -> Response:
    user = await _signed_in(request, "messaging:read")
    if isinstance(user, Response):
        return user
    return await _page(request, user)


@router.post("/brake/{action}")
async def brake(request: Request, action: str) -> Response:
    user = await _signed_in(request, "messaging:write")
    if isinstance(user, Response):
        return user
    fields = await _form(request)
    if isinstance(fields, Response):
        return fields
    if action not in ("pause", "resume"):
        return render(request, "not_found.html", {"user": user, "what": f"brake action {action!r}"}, status=404)
    engine = _stack(request).engine
    raw = fields.get("reason", "")
    values = {f"{action}.reason": raw}
    reason: str | None = None
    if raw.strip() or action == "pause":
        try:
            reason = _reason.validate_python(raw)
        except ValidationError:
            say = "Say why (1-500 characters): it is shown with the brake's state."
            if action == "resume":
                say = "At most 500 characters, or leave it blank."
            return await _page(request, user, errors={f"{action}.reason": say}, values=values, status=422)
    try:
        if action == "pause":
            assert reason is not None
            state = await messaging.pause(engine, reason=reason, actor=user.actor)
            done = "Messaging paused: every outbound message is held from now on."
        else:
            state = await messaging.resume(engine, reason=reason, actor=user.actor)
            done = f"Messaging resumed: {state.held_by_brake} held messages go out as their jobs try them again."
    except messaging.BrakeRefused as refused:
        return await _page(request, user, errors={f"{action}.reason": str(refused)}, values=values, status=409)
    log.info("console.brake", user_id=user.id, action=action, paused=state.paused)
    _session(request).flash(done)
    return redirect(request, "/console/ops")
