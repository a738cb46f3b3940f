"""What every benchmark needs: a real PostgreSQL and Temporal dev server, and action counting.

Benchmarks print figures; they never assert timings. Temporal actions are counted from the
real histories (activity tasks scheduled, timers, child workflow starts, continue-as-new),
following continue-as-new chains.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import workflows
from activities.database import create_engine
from devtools import binaries, temporal_config
from devtools.embedded_db import EmbeddedPostgres
from schemas import search_attributes
from workers import migrate
from workers.heap import freeze_startup_heap
from workers.worker import compile_workflow_modules

ACTION_EVENTS = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}


@dataclass
class Stack:
    client: Client
    engine: AsyncEngine
    database_url: str


@asynccontextmanager
async def stack(*, compile_workflows: bool = True) -> AsyncIterator[Stack]:
    """`compile_workflows=False` measures the worker without `compile_workflow_modules()`: the
    sandbox then compiles each workflow module's source on every import (PYTHONDONTWRITEBYTECODE=1)."""
    if compile_workflows:
        compile_workflow_modules()  # as the production worker does on start
    else:
        for cache in Path(workflows.__file__).parent.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix="jobctl-bench-"))
    pg = EmbeddedPostgres(root / "pg", delete_on_stop=True)
    _OWN_PGDATA.add(str(root / "pg"))
    url = pg.create_database("bench")
    migrate.upgrade(url)
    engine = create_engine(url)  # the workers' pool, as in production
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binaries.temporal_cli(),
        search_attributes=search_attributes.ALL,
        dev_server_extra_args=temporal_config.dev_server_args(),  # priority and fairness, as `jobctl dev`
    )
    freeze_startup_heap()  # the driver's own full collections stalled every request in flight
    try:
        yield Stack(env.client, engine, url)
    finally:
        await env.shutdown()
        await engine.dispose()
        pg.stop()
        _OWN_PGDATA.discard(str(root / "pg"))
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def serve(command: str, port: int, *args: str) -> AsyncIterator[None]:
    """The emulator and the sandbox in their own processes, as in `jobctl dev`: the worker's event
    loop is not also serving Twilio's and Stripe's side of every call."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "jobctl"),
        command,
        "--port",
        str(port),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        yield
    finally:
        process.terminate()
        await process.wait()


@asynccontextmanager
async def worker_process(s: Stack, module: str, task_queue: str, *args: str) -> AsyncIterator[None]:
    """A worker in a process of its own (`python -m {module} ADDRESS DATABASE_URL ... TASK_QUEUE`),
    as production runs a queue's workers apart from the jobs worker: one Python process runs on one
    core at a time. Yields once it polls `task_queue`; its CPU counts as "worker processes"."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        s.client.service_client.config.target_host,
        s.database_url,
        *args,
        task_queue,
        cwd=Path(__file__).resolve().parents[1],
        stdout=asyncio.subprocess.DEVNULL,
    )
    _OWN_WORKERS.add(process.pid)
    try:
        await wait_for_pollers(s, task_queue, 1)
        yield
    finally:
        process.terminate()
        await process.wait()
        _OWN_WORKERS.discard(process.pid)


async def wait_for_pollers(s: Stack, task_queue: str, count: int) -> None:
    """Until `count` workers (by identity) poll `task_queue` for activities."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    for _ in range(600):
        response = await s.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=s.client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            )
        )
        if len({p.identity for p in response.pollers}) >= count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{count} workers never polled {task_queue}")


async def count_actions(client: Client, workflow_id: str, first_run_id: str) -> int:
    """Actions of a workflow summed over its continue-as-new chain, from the first run on."""
    actions = 0
    run_id: str | None = first_run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        actions += sum(1 for event in history.events if event.event_type in ACTION_EVENTS)
        last = history.events[-1]
        continued = last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id if continued else None
    return actions


async def count_billable(client: Client, workflow_id: str, first_run_id: str = "") -> int:
    """Temporal Cloud's billable actions of a workflow (benchmarks/actions.py), summed over its
    continue-as-new chain from `first_run_id` on (the latest run's chain when empty)."""
    from benchmarks.actions import billable_actions

    actions = 0
    run_id: str | None = first_run_id or None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        actions += billable_actions(history.events)
        last = history.events[-1]
        if last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return actions
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id


@dataclass
class Measured:
    """What a family's benchmark measured, as data for benchmarks/scale.py: `units` of work in
    `seconds`, the CPU seconds each process used meanwhile, billable Temporal actions per unit
    (None: not counted) and the family's own targets (name -> value)."""

    units: int
    unit: str
    seconds: float
    cpu: dict[str, float]
    actions_per_unit: float | None = None
    targets: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.units / self.seconds if self.seconds else 0.0

    def cpu_ms_per_unit(self) -> dict[str, float]:
        return {name: seconds * 1000 / self.units for name, seconds in self.cpu.items()}


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds by process between two `cpu_seconds()` readings."""
    return {name: after[name] - before.get(name, 0.0) for name in after}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_OWN_PGDATA: set[str] = set()  # the data directories of the PostgreSQL servers `stack()` started
_OWN_WORKERS: set[int] = set()  # the pids of the worker processes `worker_process()` started


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process, its Temporal dev server, its PostgreSQL and the
    processes `serve` started (with their children: localstripe runs in one), from /proc.

    The difference of two readings says where a run's CPU went: on two shared cores that is
    what bounds throughput, so benchmarks print it per unit of work next to the rate.

    Only this benchmark's own processes count: the dev server and the `serve`d tools are its
    descendants, and its PostgreSQL (which `pg_ctl` leaves parented to init) is the postmaster
    whose `-D` is a data directory `stack()` created, with that postmaster's children. Another
    stack on the machine (a test run, a dev stack) is not charged to the benchmark.

    Each process counts with the children it has reaped (cutime + cstime): a PostgreSQL backend
    lives only as long as its connection, and the pool closes its overflow connections as they
    come back, so a backend's CPU would vanish from /proc with it (the sum could even fall) and
    the database looked nearly free. The postmaster reaps its backends, so it carries their CPU.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    procs: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        used = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # utime stime cutime cstime
        procs[int(entry.name)] = (int(fields[1]), comm, used / ticks)

    def ancestors(pid: int) -> list[int]:
        chain = []
        while pid in procs and pid not in chain:
            chain.append(pid)
            pid = procs[pid][0]
        return chain

    def own_postmaster(pid: int) -> bool:
        try:
            argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        data_dir = argv[argv.index(b"-D") + 1].decode() if b"-D" in argv[:-1] else ""
        return data_dir in _OWN_PGDATA

    totals = {"benchmark process": 0.0, "temporal server": 0.0, "postgresql": 0.0, "served (`serve`)": 0.0}
    if _OWN_WORKERS:
        totals["worker processes"] = 0.0
    for pid, (_, comm, used) in procs.items():
        if pid == me:
            totals["benchmark process"] += used
            continue
        if pid in _OWN_WORKERS:
            totals["worker processes"] += used
            continue
        chain = ancestors(pid)
        if comm == "postgres":
            if any(procs[p][1] == "postgres" and own_postmaster(p) for p in chain):
                totals["postgresql"] += used
        elif me in chain:
            below = chain[: chain.index(me)]
            if comm == "temporal":
                totals["temporal server"] += used
            elif any(procs[p][1] == "jobctl" for p in below):
                totals["served (`serve`)"] += used
    return totals


def process_cpu(pid: int) -> float:
    """CPU seconds one process has used (user + system), from /proc (as `cpu_seconds` reads them)."""
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until_idle(*, busy: float = 0.05, window_s: float = 1.0, timeout_s: float = 600.0) -> float:
    """Wait until this benchmark's processes together use less than `busy` of a core over a
    `window_s` window (the server done with the work a setup phase left it); returns the seconds
    waited. A latency measured while the server still works through a backlog is the backlog's."""
    started = time.monotonic()
    before = cpu_seconds()
    while time.monotonic() - started < timeout_s:
        await asyncio.sleep(window_s)
        after = cpu_seconds()
        if sum(after.values()) - sum(before.values()) < busy * window_s:
            return time.monotonic() - started
        before = after
    raise TimeoutError(f"still busy after {timeout_s:.0f} s")


TASK_TIMEOUT_S = 10.0
"""A workflow task's start-to-close timeout: the server's default, which no starter here overrides."""


async def after_deferred_work() -> None:
    """Wait until the server has done what it defers for the tasks just completed (call it as the
    phase's last task completes), and the processes are idle.

    Every workflow task leaves a start-to-close timeout timer behind, which fires TASK_TIMEOUT_S
    after the task started and loads its run even though the task is long done. A phase's CPU read
    as soon as its last task completes counts that timer only for the units started more than
    10 s before the end: about none at 1,000 clocks (a 10-second phase), 90 % at 10,000, so a
    cost per unit compared across sizes must be read after it (docs/BENCHMARKS.md, the scale curve).
    """
    await asyncio.sleep(TASK_TIMEOUT_S + 1.0)
    await until_idle(busy=0.1)


def cpu_ms(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
    """Milliseconds of CPU per unit of work, by process, from two `cpu_seconds()` readings."""
    return {name: (after[name] - before[name]) * 1000 / units for name in after}


def cpu_per(before: dict[str, float], after: dict[str, float], units: int, unit: str) -> str:
    """`name X ms` per unit of work for each process, from two `cpu_seconds()` readings."""
    parts = [
        f"{name} {(after[name] - before[name]) * 1000 / units:.1f} ms" for name in after if after[name] > before[name]
    ]
    return f"CPU per {unit}: " + ", ".join(parts)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


MAX_START_LOAD = 0.5
ALLOW_LOAD_ENV = "JOBCTL_BENCH_ALLOW_LOAD"


def load_allowed() -> bool:
    """`JOBCTL_BENCH_ALLOW_LOAD=1`: a functional run beside other work (checking that a benchmark
    runs and what it counts). Its timings are noise, so every figure it prints says `"loaded": true`
    and benchmarks/bench.py will not write such figures into docs/BENCHMARKS.md."""
    return os.environ.get(ALLOW_LOAD_ENV, "") == "1"


def require_quiet(max_load: float = MAX_START_LOAD, settle_s: float = 240.0) -> None:
    """Refuse to measure beside other work: print the load average and exit 1 when the 1-minute
    load stays above `max_load`. A run that follows another waits up to `settle_s` for the
    previous run's load to decay (the 1-minute average takes about 80 s to fall from 2 to 0.5).

    With `JOBCTL_BENCH_ALLOW_LOAD=1` it neither waits nor refuses: the run goes on and its figures
    are marked loaded (see `load_allowed`)."""
    if load_allowed():
        load = os.getloadavg()
        print(
            f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f};"
            f" {ALLOW_LOAD_ENV}=1: not checked, every figure is marked loaded (a functional run)",
            flush=True,
        )
        return
    deadline = time.monotonic() + settle_s
    while (load := os.getloadavg())[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    if load[0] > max_load:
        print(
            f"refused: the 1-minute load is {load[0]:.2f} (> {max_load}): something else is running;"
            " no figure is taken beside other work"
            f" ({ALLOW_LOAD_ENV}=1 runs anyway, for a functional check, with every figure marked loaded)",
            flush=True,
        )
        raise SystemExit(1)


def print_load_at_end() -> None:
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)


def figure(
    name: str, value: float, unit: str, *, target: str, floor: float | None = None, floor_name: str = ""
) -> None:
    """One machine-readable figure for `make bench` (benchmarks/bench.py collects them).

    `target` is a comparison applied to the ratio value/floor when there is a floor, else to the
    value: ">= 0.98", "< 0.1", "<= 2", "== 0". Under `JOBCTL_BENCH_ALLOW_LOAD=1` the record carries
    `"loaded": true`: its timings were taken beside other work.
    """
    record = {"name": name, "value": value, "unit": unit, "target": target, "floor": floor, "floor_name": floor_name}
    if load_allowed():
        record["loaded"] = True
    print("FIGURE " + json.dumps(record), flush=True)
