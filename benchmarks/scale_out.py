"""The scale-out drill (issue #36 point 7): pods lost and added under a reminders day plus checkouts.

    python benchmarks/scale_out.py --retailers 20000 --checkouts 1500 --workers 3 --apis 2

One Temporal dev server and PostgreSQL; `--workers` `jobctl worker` processes per queue (jobs and
messaging) and `--apis` `jobctl api` processes, as pods are deployed; the Twilio emulator in its own
process at `--limit` msg/s (the messaging workers pace at MESSAGES_PER_SECOND = the limit). The load:
one reminders day of `--retailers` retailers (one debit each, due today) and, beside it, an open loop
of `--checkouts` checkouts at `--checkout-rate`/s through the API processes: each a credit placement
(a DEBIT, the money row) then checkout-started (the order's clock, ORDER_TTL `--ttl` s with its
follow-up half-way), both POSTs with an Idempotency-Key and a client that retries like a real HTTP
client (30 s timeout; connection errors, 5xx and 409 "still being answered" retried, same key, on the
next API process, as a load balancer would send it).

The drill: after `--before` seconds of load, kill -9 one worker of each queue (the messaging one a
worker in the middle of a batch of sends) and one API process at once, and add one of each back.
Throughput (messages/s accepted by the emulator, on its own clock, and checkouts/s answered) is
measured in a window before the kills and one that opens `--recovery` seconds after them (the
killed worker's batch waits out its 15 s heartbeat timeout), each `--window` seconds long. Then
it waits for the day and every clock to end and counts:

- messages lost or doubled: each retailer (one reminder, or one follow-up for a checkout's retailer)
  must appear exactly once among the emulator's accepted messages (its `to`);
- money doubled: a checkout's order with more than one DEBIT, or an account whose available credit
  is not its limit less its orders' debits (credit taken twice); checkouts lost (no DEBIT or no clock);
- clocks: each checkout's `pending_orders` row EXPIRED with exactly one `pending_order_expired`
  audit row and no reversal.

Figures: the ratio of each throughput after recovery to before (target >= 0.9), and the zero counts.
It prints the load average at start and end. tests/e2e/test_scale_out.py runs the same drill small.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowHandle

from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from schemas.credit import RemindersRequest
from workflows.credit import PaymentRemindersWorkflow

ROOT = Path(__file__).resolve().parents[1]
JOBCTL = str(Path(sys.executable).parent / "jobctl")
AVAILABLE = 50_000  # each checkout retailer's credit
ORDER_AMOUNT = 80
CLIENT_TIMEOUT_S = 30.0  # the checkout client's per-request timeout, as a real HTTP client's

SEED_REMINDED = text(
    """
WITH shops AS (
    INSERT INTO retailers (name, phone, preferred_channel, timezone)
    SELECT 'Drill Shop ' || g, '+1563' || lpad(g::text, 7, '0'), 'sms', 'UTC' FROM generate_series(1, :n) g
    RETURNING id
), accounts AS (
    INSERT INTO credit_accounts (retailer_id, available_credit) SELECT id, :available FROM shops
)
INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference)
SELECT id, 'DEBIT', 120, CAST(:day AS date), 'inv-' || id FROM shops
"""
)

# A retailer per checkout (its own phone: its follow-up counts apart from the reminders), the
# order row PENDING as the shop's backend writes it before checkout starts.
SEED_CHECKOUTS = text(
    """
WITH shops AS (
    INSERT INTO retailers (name, phone, preferred_channel, timezone)
    SELECT 'Drill Buyer ' || g, '+1564' || lpad(g::text, 7, '0'), 'sms', 'UTC' FROM generate_series(1, :n) g
    RETURNING id
), accounts AS (
    INSERT INTO credit_accounts (retailer_id, available_credit) SELECT id, :available FROM shops
)
INSERT INTO orders (retailer_id, status, payment_mode, total_amount)
SELECT id, 'PENDING', 'CREDIT', :amount FROM shops
RETURNING id, retailer_id
"""
)


@dataclass
class CrashHook:
    """API processes started as `prefix api --port P` (tests/e2e/crash_api.py): touching `armed`
    makes the next one to answer a hooked request kill itself -9 mid-request."""

    prefix: tuple[str, ...]
    armed: Path


@dataclass
class DrillSize:
    retailers: int
    checkouts: int
    checkout_rate: float  # checkouts started per second (open loop)
    workers: int  # per queue
    apis: int
    limit: float  # msg/s at the emulator and the messaging workers' pace
    ttl_s: float  # ORDER_TTL of the checkouts' clocks
    before_s: float  # load before the kills
    recovery_s: float  # from the kills to the after-window
    window_s: float  # each throughput window
    abandoned_s: float = 31.0  # IDEMPOTENCY_ABANDONED_SECONDS: above the client's 30 s timeout
    page_size: int = 500
    deadline_s: float = 600.0  # for the day and every clock to end
    shared_workers: bool = False  # each worker process polls both queues (`jobctl worker`): fewer to start
    lease_s: float = 20.0  # MESSAGE_LEASE_SECONDS: how long a killed worker's sends stay held
    kill_after_messages: int = 0  # > 0: kill once the emulator accepted this many, not after `before_s`
    trace: bool = False  # print what happened around the kills (`trace`)


@dataclass
class Counts:
    reminded: int = 0  # retailers expected to get one message
    messages: int = 0  # accepted by the emulator
    lost: int = 0  # expected recipients with no message
    doubled: int = 0  # recipients with more than one
    marks_wrong: int = 0  # reminded debits not marked exactly once (reminder_count != 1)
    checkouts_answered: int = 0
    checkouts_lost: int = 0  # no DEBIT or no clock after the client's retries
    money_doubled: int = 0  # orders with more than one DEBIT, accounts whose credit was taken twice
    clocks_expired_once: int = 0
    clocks_not_once: int = 0  # not EXPIRED, or expired (audited) more than once, or reversed
    retries: int = 0  # checkout requests the client sent again
    replayed: int = 0  # answers with Idempotent-Replayed: true


@dataclass
class DrillResult:
    counts: Counts
    messages_before: float = float("nan")  # msg/s in the window before the kills
    messages_after: float = float("nan")
    checkouts_before: float = float("nan")
    checkouts_after: float = float("nan")
    kills: list[str] = field(default_factory=list)
    accepted_at_kill: int = 0  # messages the emulator had accepted when the kills began
    killed_mid_send: bool = False  # the killed messaging worker was running a batch of sends
    api_killed_mid_request: bool = False  # the client had a request in flight to the killed API process
    day_sent: int = 0
    day_duplicates: int = 0
    kill_at: float = 0.0  # wall clock of the kills
    stamps: list[float] = field(default_factory=list)  # the emulator's accept times, sorted
    day_id: str = ""  # the reminders day's workflow id


class Pods:
    """The `jobctl worker` and `jobctl api` processes: started, killed (-9) and added, each logging
    to a file of its own in `log_dir`."""

    def __init__(self, env: dict[str, str], log_dir: Path, crash_hook: CrashHook | None = None) -> None:
        self.env = env
        self.log_dir = log_dir
        self.crash_hook = crash_hook
        self.workers: dict[str, list[subprocess.Popen[bytes]]] = {"jobs": [], "messaging": [], "both": []}
        self.apis: list[tuple[subprocess.Popen[bytes], str]] = []
        self.live_urls: list[str] = []  # what the load balancer routes to
        self._n = itertools.count(1)

    def _spawn(self, name: str, *argv: str, prefix: tuple[str, ...] = (JOBCTL,)) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}-{next(self._n)}.log", "ab") as log:
            return subprocess.Popen([*prefix, *argv], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def add_worker(self, queue: str) -> subprocess.Popen[bytes]:
        """`queue` "both": one process polling the jobs and the messaging queues, as `jobctl worker`."""
        only = [] if queue == "both" else ["--task-queue", queue]
        process = self._spawn(f"worker-{queue}", "worker", *only)
        self.workers[queue].append(process)
        return process

    def add_api(self) -> tuple[subprocess.Popen[bytes], str]:
        port = _free_port()
        prefix = self.crash_hook.prefix if self.crash_hook else (JOBCTL,)
        process = self._spawn("api", "api", "--port", str(port), prefix=prefix)
        pod = (process, f"http://127.0.0.1:{port}")
        self.apis.append(pod)
        return pod

    def kill_worker(self, queue: str, busy: set[int]) -> tuple[int, bool]:
        """kill -9 a worker of `queue`, one running an activity (its pid in `busy`) if there is one;
        returns its exit status and whether it was busy."""
        live = [p for p in self.workers[queue] if p.poll() is None]
        victim = next((p for p in live if p.pid in busy), live[0])
        victim.send_signal(signal.SIGKILL)
        return victim.wait(), victim.pid in busy

    async def kill_api(self, timeout_s: float, in_flight: Callable[[], set[str]]) -> tuple[int, bool]:
        """kill -9 one API process, one with a request in flight (`in_flight()`: their URLs) if one
        comes within a few seconds; with a crash hook, the one that next answers the hooked request
        kills itself -9 once its handler has written, before its answer is stored or sent. Returns its
        exit status and whether the client had a request in flight to it."""
        if self.crash_hook is None:
            live = [(p, u) for p, u in self.apis if p.poll() is None and u in self.live_urls]
            deadline = time.monotonic() + min(timeout_s, 5.0)
            while not (busy := [(p, u) for p, u in live if u in in_flight()]) and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            victim, url = (busy or live)[0]
            self.live_urls.remove(url)  # the balancer's health check drops it; requests in flight fail
            victim.send_signal(signal.SIGKILL)
            return victim.wait(), bool(busy)
        self.crash_hook.armed.touch()
        deadline = time.monotonic() + timeout_s
        while not (dead := [(p, u) for p, u in self.apis if p.poll() is not None and u in self.live_urls]):
            if time.monotonic() > deadline:
                raise TimeoutError("no API process took the crash hook")
            await asyncio.sleep(0.02)
        (victim, url), *_ = dead
        self.live_urls.remove(url)
        return int(victim.returncode), True

    def stop_all(self) -> None:
        processes = [*itertools.chain(*self.workers.values()), *(p for p, _ in self.apis)]
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(http: aiohttp.ClientSession, process: subprocess.Popen[bytes], url: str) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"the API process at {url} exited {process.returncode}")
        try:
            async with http.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as response:
                if response.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the API at {url} never became ready")


async def wait_for_pollers(client: Client, task_queue: str, count: int, timeout_s: float = 120) -> None:
    """Until `count` workers (by identity) poll `task_queue` for activities (a killed one drops out
    of the list after a minute, so only use this for the initial set)."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            )
        )
        if len({p.identity for p in response.pollers}) >= count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{count} workers never polled {task_queue}")


class CheckoutClient:
    """The shop's backend: POSTs with an Idempotency-Key, retried like a real HTTP client (a timeout
    per request; connection errors, timeouts, 5xx, 429 and 409 `idempotency_key_in_use` retried with
    the same key and body on the next API process), giving up after `give_up_s`."""

    def __init__(self, http: aiohttp.ClientSession, pods: Pods, headers: dict[str, str], give_up_s: float) -> None:
        self.http = http
        self.pods = pods
        self.headers = headers
        self.give_up_s = give_up_s
        self.retries = 0
        self.replayed = 0
        self.in_flight: Counter[str] = Counter()  # requests sent and not yet answered, by API URL
        self._turn = itertools.count()

    def busy_urls(self) -> set[str]:
        return {url for url, n in self.in_flight.items() if n}

    async def post(self, path: str, body: dict[str, Any], key: str) -> bool:
        """True once answered 2xx; False when refused for good or given up."""
        deadline = time.monotonic() + self.give_up_s
        pause = 0.2
        while True:
            urls = self.pods.live_urls
            url = urls[next(self._turn) % len(urls)] if urls else None
            retry = True
            if url is not None:
                self.in_flight[url] += 1
                try:
                    async with self.http.post(
                        f"{url}{path}",
                        json=body,
                        headers={**self.headers, "Idempotency-Key": key},
                        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S),
                    ) as response:
                        payload = await response.read()
                        if 200 <= response.status < 300:
                            self.replayed += response.headers.get("Idempotent-Replayed") == "true"
                            return True
                        in_use = response.status == 409 and b"idempotency_key_in_use" in payload
                        retry = response.status >= 500 or response.status == 429 or in_use
                except (aiohttp.ClientError, TimeoutError):
                    pass  # the process died mid-request or never answered: the same key again
                finally:
                    self.in_flight[url] -= 1
            if not retry or time.monotonic() > deadline:
                return False
            self.retries += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


async def emulator_messages(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/_emulator/messages") as response:
        rows = await response.json()
    return rows if isinstance(rows, list) else list(rows.get("messages", []))


def rate_in(stamps: list[float], begin: float, end: float) -> float:
    """Events per second in [begin, end)."""
    return sum(begin <= t < end for t in stamps) / (end - begin) if end > begin else float("nan")


def pod_env(database_url: str, temporal_address: str, twilio_url: str, queue: str, size: DrillSize) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "TASK_QUEUE": queue,
        "MESSAGING_TASK_QUEUE": f"{queue}-msg",
        "TWILIO_API_BASE": twilio_url,
        "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
        # A worker is whole or refuses to start: the payments activities need a key. The drill never
        # pays through Stripe; nothing listens on port 9, so a call made after all fails at once.
        "STRIPE_SECRET_KEY": "sk_test_unused",
        "STRIPE_API_BASE": "http://127.0.0.1:9",
        "PUBLIC_BASE_URL": "https://jobctl.example.test",  # the reminders link to its /pay/{token}
        "MESSAGES_PER_SECOND": str(size.limit),
        "MESSAGE_DAILY_CAP": "100",
        "QUIET_HOURS_START": "0",
        "QUIET_HOURS_END": "0",
        "ORDER_TTL": f"PT{size.ttl_s:g}S",
        "ORDER_FOLLOWUP_AFTER": f"PT{size.ttl_s / 2:g}S",
        "IDEMPOTENCY_ABANDONED_SECONDS": str(size.abandoned_s),
        "MESSAGE_LEASE_SECONDS": str(size.lease_s),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
    }


def worker_queues(size: DrillSize) -> tuple[str, ...]:
    """The worker processes of one "pod per queue": a jobs and a messaging one, or one polling both."""
    return ("both",) if size.shared_workers else ("jobs", "messaging")


@asynccontextmanager
async def pods_running(
    env: dict[str, str], size: DrillSize, client: Client, log_dir: Path, crash_hook: CrashHook | None = None
) -> AsyncIterator[Pods]:
    """`size.workers` per queue and `size.apis` API processes, started together; yields once every
    worker polls and every API answers /readyz."""
    pods = Pods(env, log_dir, crash_hook)
    try:
        for _ in range(size.workers):
            for queue in worker_queues(size):
                pods.add_worker(queue)
        for _ in range(size.apis):
            pods.add_api()
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(wait_ready(http, p, u) for p, u in pods.apis))
        pods.live_urls = [u for _, u in pods.apis]
        await wait_for_pollers(client, env["TASK_QUEUE"], size.workers)
        await wait_for_pollers(client, env["MESSAGING_TASK_QUEUE"], size.workers)
        yield pods
    finally:
        pods.stop_all()


async def seed(engine: AsyncEngine, size: DrillSize, day: date) -> tuple[list[str], list[tuple[int, int]]]:
    """The reminded retailers' phones and the checkouts' (order id, retailer id)."""
    async with engine.begin() as conn:
        await conn.execute(SEED_REMINDED, {"n": size.retailers, "day": day, "available": AVAILABLE})
        orders = [
            (r.id, r.retailer_id)
            for r in await conn.execute(
                SEED_CHECKOUTS, {"n": size.checkouts, "available": AVAILABLE, "amount": ORDER_AMOUNT}
            )
        ]
        phones = list(
            (
                await conn.execute(
                    text("SELECT phone FROM retailers WHERE id = ANY(CAST(:ids AS bigint[]))"),
                    {"ids": [r for _, r in orders]},
                )
            ).scalars()
        )
    reminded = [f"+1563{g:07d}" for g in range(1, size.retailers + 1)]
    return reminded + phones, orders


async def run_drill(
    client: Client,
    engine: AsyncEngine,
    database_url: str,
    twilio_url: str,
    size: DrillSize,
    log_dir: Path,
    api_headers: dict[str, str],
    on_phase: Callable[[str], None] = lambda line: None,
    crash_hook: CrashHook | None = None,
) -> DrillResult:
    """The whole drill on a running dev server, database (migrated) and emulator; returns its counts
    and throughputs. Leaves no process behind."""
    day = date.today()
    queue = f"drill-{uuid.uuid4().hex[:8]}"
    env = pod_env(database_url, client.service_client.config.target_host, twilio_url, queue, size)
    expected, orders = await seed(engine, size, day)
    result = DrillResult(Counts(reminded=len(expected)))
    answered_at: list[float] = []

    async with pods_running(env, size, client, log_dir, crash_hook) as pods, aiohttp.ClientSession() as http:
        on_phase(f"{size.workers} workers per queue and {size.apis} API processes up")
        shop = CheckoutClient(http, pods, api_headers, give_up_s=size.deadline_s / 2)

        async def checkout(i: int, order_id: int, retailer_id: int, began: float) -> None:
            await asyncio.sleep(max(0.0, began + i / size.checkout_rate - time.monotonic()))
            placed = await shop.post(
                f"/v1/orders/{order_id}/placement",
                {"retailer_id": retailer_id, "amount": str(ORDER_AMOUNT), "payment_mode": "CREDIT"},
                key=f"place-{order_id}",
            )
            if placed and await shop.post(f"/v1/orders/{order_id}/checkout-started", {}, key=f"checkout-{order_id}"):
                answered_at.append(time.time())

        day_handle = await client.start_workflow(
            PaymentRemindersWorkflow.run,
            RemindersRequest(reminder_date=day, page_size=size.page_size, messaging_task_queue=f"{queue}-msg"),
            id=f"payment-reminders/drill-{queue}",
            task_queue=queue,
        )
        began, started_at = time.monotonic(), time.time()
        load = asyncio.gather(*(checkout(i, o, r, began) for i, (o, r) in enumerate(orders)))
        try:
            await asyncio.sleep(size.before_s)
            while (accepted := len(await emulator_messages(http, twilio_url))) < size.kill_after_messages:
                if time.monotonic() > began + size.deadline_s:
                    raise TimeoutError(f"the day never reached {size.kill_after_messages} messages")
                await asyncio.sleep(0.05)
            result.accepted_at_kill = accepted
            sending = await running_activities(day_handle, "send_messages", size.deadline_s)
            kill_at = time.time()
            queues = worker_queues(size)
            killed = [pods.kill_worker(q, sending if q != "jobs" else set()) for q in queues]
            result.killed_mid_send = any(busy for _, busy in killed)
            api_code, result.api_killed_mid_request = await pods.kill_api(size.deadline_s, shop.busy_urls)
            codes = [*(code for code, _ in killed), api_code]
            victims = [*(f"{q} worker" for q in queues), "API"]
            result.kills = [f"{what} (exit {code})" for what, code in zip(victims, codes, strict=True)]
            for q in queues:
                pods.add_worker(q)
            process, url = pods.add_api()
            await wait_ready(http, process, url)
            pods.live_urls.append(url)
            on_phase(f"killed -9 {', '.join(result.kills)}; one of each added back")
            status = await asyncio.wait_for(day_handle.result(), size.deadline_s)
            await asyncio.wait_for(load, size.deadline_s)
        finally:
            if not load.done():
                load.cancel()
        result.day_sent, result.day_duplicates = status.sent, status.duplicates
        on_phase(f"the day ended: {status.sent} sent, {status.duplicates} duplicates, {status.due} due")
        await until_settled(engine, [o for o, _ in orders], size.ttl_s + size.deadline_s)
        messages = await until_quiet(http, twilio_url, len(expected), size.deadline_s)

    stamps = sorted(datetime.fromisoformat(m["accepted_at"]).timestamp() for m in messages)
    result.kill_at, result.stamps, result.day_id = kill_at, stamps, day_handle.id
    window_before = (max(started_at, kill_at - size.window_s), kill_at)
    after_begin = kill_at + size.recovery_s
    window_after = (after_begin, after_begin + size.window_s)
    result.messages_before = rate_in(stamps, *window_before)
    result.messages_after = rate_in(stamps, *window_after)
    result.checkouts_before = rate_in(answered_at, *window_before)
    result.checkouts_after = rate_in(answered_at, *window_after)

    counts = result.counts
    per_phone = Counter(m["to"] for m in messages)
    counts.messages = len(messages)
    counts.lost = sum(1 for phone in expected if per_phone[phone] == 0)
    counts.doubled = sum(1 for n in per_phone.values() if n > 1)
    counts.checkouts_answered = len(answered_at)
    counts.retries, counts.replayed = shop.retries, shop.replayed
    await count_money_and_clocks(engine, [o for o, _ in orders], day, counts)
    return result


async def trace(client: Client, result: DrillResult, begin_s: float = -10.0, end_s: float = 70.0) -> list[str]:
    """What happened around the kills (`--trace`): the emulator's accepts per second, and the
    reminders day's activities and slow workflow tasks, in seconds from the kills, with the pid of
    the worker that ran each (the killed ones are in the kill line)."""
    kill = result.kill_at
    lines = ["accepted per second from the kills:"]
    for second in range(int(begin_s), int(end_s), 10):
        per_second = [sum(kill + t <= s < kill + t + 1 for s in result.stamps) for t in range(second, second + 10)]
        lines.append(f"  {second:+4d} s: {' '.join(f'{n:4d}' for n in per_second)}")
    activities: dict[int, dict[str, str]] = {}
    tasks: dict[int, dict[str, str]] = {}

    def at(event: Any) -> float:
        return event.event_time.ToDatetime().replace(tzinfo=UTC).timestamp() - kill

    async for run in client.list_workflows(f"WorkflowId = '{result.day_id}'"):
        history = await client.get_workflow_handle(result.day_id, run_id=run.run_id).fetch_history()
        for e in history.events:
            t, kind = at(e), e.WhichOneof("attributes") or ""
            attrs: Any = getattr(e, kind) if kind else None
            if kind == "activity_task_scheduled_event_attributes":
                activities[e.event_id] = {"what": attrs.activity_type.name, "scheduled": f"{t:+.1f}"}
            elif kind == "activity_task_started_event_attributes":
                started = f"{t:+.1f} #{attrs.attempt} {attrs.identity.split('@')[0]}"
                activities[attrs.scheduled_event_id]["started"] = started
            elif kind.startswith("activity_task_") and hasattr(attrs, "scheduled_event_id"):
                activities[attrs.scheduled_event_id]["ended"] = f"{t:+.1f} {kind[14:-17]}"
            elif kind == "workflow_task_scheduled_event_attributes":
                tasks[e.event_id] = {"scheduled": f"{t:+.1f}"}
            elif kind == "workflow_task_started_event_attributes":
                tasks[attrs.scheduled_event_id]["started"] = f"{t:+.1f} {attrs.identity.split('@')[0]}"
            elif kind.startswith("workflow_task_") and hasattr(attrs, "scheduled_event_id"):
                tasks[attrs.scheduled_event_id]["ended"] = f"{t:+.1f} {kind[14:-17]}"
            elif kind == "workflow_execution_continued_as_new_event_attributes":
                lines.append(f"  continued as new at {t:+.1f}")
    lines.append("the day's activities (scheduled, started #attempt pid, ended):")
    for row in activities.values():
        ended = float(row.get("ended", "nan x").split()[0])
        if begin_s <= float(row["scheduled"]) <= end_s or begin_s <= ended <= end_s:
            lines.append(
                f"  {row['what']:<22} {row['scheduled']:>7} {row.get('started', '-'):>18} {row.get('ended', '-')}"
            )
    lines.append("the day's workflow tasks over 0.5 s or not completed:")
    for w in tasks.values():
        took = float(w.get("ended", "nan x").split()[0]) - float(w["scheduled"])
        if begin_s <= float(w["scheduled"]) <= end_s and not took <= 0.5:
            lines.append(f"  {w['scheduled']:>7} {w.get('started', '-'):>14} {w.get('ended', '-')}")
    return lines


async def running_activities(handle: WorkflowHandle[Any, Any], activity_type: str, timeout_s: float) -> set[int]:
    """The pids of the workers running `activity_type` for the workflow (a worker's identity is
    `pid@host`), once there is one: the worker to kill is one in the middle of a batch of sends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        description = await handle.describe()
        pids = {
            int(a.last_worker_identity.split("@")[0])
            for a in description.raw_description.pending_activities
            if a.activity_type.name == activity_type
            and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            and a.last_worker_identity.split("@")[0].isdigit()
        }
        if pids:
            return pids
        await asyncio.sleep(0.02)
    return set()


async def until_settled(engine: AsyncEngine, order_ids: list[int], timeout_s: float) -> None:
    """Until no checkout's clock is PENDING (each ends at its ORDER_TTL)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            pending = await conn.scalar(
                text("SELECT count(*) FROM pending_orders WHERE order_id = ANY(:ids) AND status = 'PENDING'"),
                {"ids": order_ids},
            )
        if not pending:
            return
        await asyncio.sleep(0.5)


async def until_quiet(http: aiohttp.ClientSession, url: str, expected: int, timeout_s: float) -> list[dict[str, Any]]:
    """The emulator's messages once it has `expected` and nothing more arrived for a second (a
    double would come late: a retried batch after its heartbeat timeout)."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while True:
        messages = await emulator_messages(http, url)
        if (len(messages) >= expected and len(messages) == seen) or time.monotonic() > deadline:
            return messages
        seen = len(messages)
        await asyncio.sleep(1.0)


MONEY_SQL = text(
    """
SELECT
  (SELECT count(*) FROM (SELECT order_id FROM credit_transactions WHERE order_id = ANY(:ids) AND type = 'DEBIT'
                         GROUP BY order_id HAVING count(*) > 1) d) AS doubled_debits,
  (SELECT count(*) FROM orders o WHERE o.id = ANY(:ids) AND NOT EXISTS
      (SELECT 1 FROM credit_transactions t WHERE t.order_id = o.id AND t.type = 'DEBIT')) AS no_debit,
  (SELECT count(*) FROM orders o JOIN credit_accounts a ON a.retailer_id = o.retailer_id
    WHERE o.id = ANY(:ids) AND a.available_credit <> :available - (SELECT coalesce(sum(t.amount), 0)
      FROM credit_transactions t WHERE t.retailer_id = o.retailer_id AND t.type = 'DEBIT')) AS credit_wrong,
  (SELECT count(*) FROM credit_transactions WHERE order_id = ANY(:ids) AND type <> 'DEBIT') AS reversals,
  (SELECT count(*) FROM credit_transactions WHERE due_date = :day AND type = 'DEBIT' AND order_id IS NULL
     AND reminder_count <> 1) AS marks_wrong
"""
)

CLOCKS_SQL = text(
    """
SELECT p.order_id, p.status,
       (SELECT count(*) FROM audit_log a WHERE a.reference = 'order:' || p.order_id
          AND a.action = 'pending_order_expired') AS expiries
FROM pending_orders p WHERE p.order_id = ANY(:ids)
"""
)


async def count_money_and_clocks(engine: AsyncEngine, order_ids: list[int], day: date, counts: Counts) -> None:
    async with engine.connect() as conn:
        money = (await conn.execute(MONEY_SQL, {"ids": order_ids, "available": AVAILABLE, "day": day})).one()
        clocks = (await conn.execute(CLOCKS_SQL, {"ids": order_ids})).all()
    counts.money_doubled = money.doubled_debits + money.credit_wrong
    counts.marks_wrong = money.marks_wrong
    once = sum(1 for c in clocks if c.status == "EXPIRED" and c.expiries == 1)
    counts.checkouts_lost = money.no_debit + (len(order_ids) - len(clocks))
    counts.clocks_expired_once = once
    counts.clocks_not_once = len(clocks) - once + money.reversals


def ratio(after: float, before: float) -> float:
    return after / before if before else float("nan")


def describe(result: DrillResult, size: DrillSize) -> list[str]:
    c = result.counts
    return [
        f"load: a reminders day of {size.retailers} retailers and {size.checkouts} checkouts at"
        f" {size.checkout_rate:g}/s through {size.apis} API processes; {size.workers} workers per queue;"
        f" emulator and pace at {size.limit:g} msg/s; clocks of {size.ttl_s:g} s",
        f"kills after {size.before_s:g} s: {', '.join(result.kills)};"
        f" the killed worker was {'in the middle of' if result.killed_mid_send else 'between'} batches of sends,"
        f" the API process {'with' if result.api_killed_mid_request else 'without'} a request in flight",
        f"messages/s at the emulator: {result.messages_before:,.1f} in the {size.window_s:g} s before the kills,"
        f" {result.messages_after:,.1f} from {size.recovery_s:g} s after them"
        f" (ratio {ratio(result.messages_after, result.messages_before):.3f})",
        f"checkouts/s answered: {result.checkouts_before:,.2f} before, {result.checkouts_after:,.2f} after"
        f" (ratio {ratio(result.checkouts_after, result.checkouts_before):.3f})",
        f"messages: {c.messages} accepted for {c.reminded} recipients; {c.lost} lost, {c.doubled} doubled"
        f" (the day: {result.day_sent} sent, {result.day_duplicates} found sent by a killed attempt);"
        f" debits not marked reminded exactly once: {c.marks_wrong}",
        f"checkouts: {c.checkouts_answered} answered, {c.checkouts_lost} lost; {c.retries} requests retried,"
        f" {c.replayed} answers replayed; money rows doubled {c.money_doubled}",
        f"clocks: {c.clocks_expired_once} expired exactly once, {c.clocks_not_once} not",
    ]


async def main(size: DrillSize) -> None:
    from benchmarks.harness import figure, free_port, machine, print_load_at_end, serve, stack
    from workers.api.auth import create_key
    from workers.log import configure_logging

    configure_logging("json", "WARNING")
    logs = Path(tempfile.mkdtemp(prefix="jobctl-drill-"))  # one log file per pod
    async with stack() as s:
        port = free_port()
        async with serve("twilio-emulator", port, "--rate-limit", str(size.limit)):
            key, _ = await create_key(s.engine, f"drill-{uuid.uuid4().hex[:6]}", ["orders:write", "orders:read"])
            result = await run_drill(
                s.client,
                s.engine,
                s.database_url,
                f"http://127.0.0.1:{port}",
                size,
                logs,
                {"Authorization": f"Bearer {key}"},
                on_phase=lambda line: print(line, flush=True),
            )
            lines = await trace(s.client, result) if size.trace else []
    print(f"machine: {machine()}; pod logs in {logs}")
    for line in [*describe(result, size), *lines]:
        print(line)
    c = result.counts
    figure(
        "scale-out: messages/s after recovery, to before the kills",
        result.messages_after,
        "msg/s",
        floor=result.messages_before,
        floor_name="before the kills",
        target=">= 0.9",
    )
    figure(
        "scale-out: checkouts/s after recovery, to before the kills",
        result.checkouts_after,
        "checkouts/s",
        floor=result.checkouts_before,
        floor_name="before the kills",
        target=">= 0.9",
    )
    figure("scale-out: messages lost or doubled", c.lost + c.doubled, "messages", target="== 0")
    figure("scale-out: money rows doubled", c.money_doubled, "rows", target="== 0")
    figure("scale-out: checkouts lost", c.checkouts_lost, "checkouts", target="== 0")
    figure("scale-out: clocks not expired exactly once", c.clocks_not_once, "clocks", target="== 0")
    print_load_at_end()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retailers", type=int, default=20_000, help="the reminders day's retailers")
    parser.add_argument("--checkouts", type=int, default=1_000)
    parser.add_argument("--checkout-rate", type=float, default=10.0, help="checkouts started per second")
    parser.add_argument("--workers", type=int, default=3, help="worker processes per queue")
    parser.add_argument("--apis", type=int, default=2, help="API processes")
    parser.add_argument("--limit", type=float, default=200.0, help="msg/s at the emulator (and the workers' pace)")
    parser.add_argument("--ttl", type=float, default=30.0, help="seconds of each checkout's clock (ORDER_TTL)")
    parser.add_argument("--before", type=float, default=30.0, help="seconds of load before the kills")
    parser.add_argument("--recovery", type=float, default=35.0, help="seconds from the kills to the after-window")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of each throughput window")
    parser.add_argument(
        "--trace", action="store_true", help="print messages per second and the day's tasks around the kills"
    )
    args = parser.parse_args()
    if min(args.retailers, args.checkouts, args.workers, args.apis) < 1 or args.workers < 2 or args.apis < 2:
        parser.error("sizes must be positive, with at least 2 workers per queue and 2 API processes")
    load_s = min(args.checkouts / args.checkout_rate, args.retailers / args.limit)
    if args.before + args.recovery + args.window > load_s:
        parser.error(
            f"the after-window ends at {args.before + args.recovery + args.window:g} s but the load (the day, the"
            f" checkouts) ends at about {load_s:g} s: more --retailers or --checkouts, or shorter windows"
        )
    from benchmarks.harness import require_quiet

    require_quiet()
    asyncio.run(
        main(
            DrillSize(
                retailers=args.retailers,
                checkouts=args.checkouts,
                checkout_rate=args.checkout_rate,
                workers=args.workers,
                apis=args.apis,
                limit=args.limit,
                ttl_s=args.ttl,
                before_s=args.before,
                recovery_s=args.recovery,
                window_s=args.window,
                trace=args.trace,
            )
        )
    )
