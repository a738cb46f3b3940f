"""The HTTP API under 50 concurrent clients: requests/s and p50/p99 latency of a read (the risk
view) and a write (checkout started: a new order's clock each request).

Runs `jobctl api` and `jobctl worker` in their own processes, as deployed, against an embedded
PostgreSQL and a Temporal dev server; clients are aiohttp over TCP from this process. Then, as the
floor in the same run, the same loops as bare starts straight to Temporal (`temporal_alone`).
Refuses to run when the 1-minute load average is above 0.5 (the figures would measure the
neighbours). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/api.py [--requests 2000] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_LOAD = 0.5


async def measure(label: str, url: str, clients: int, requests: int, send, rate: float | None = None) -> float:  # type: ignore[no-untyped-def]
    """Requests from `clients` concurrent clients, as fast as they answer or, with `rate`, each
    request sent at its scheduled time (an open loop at `rate` req/s); returns the p99 in ms.

    The clients are aiohttp (one keep-alive connection each): the driver shares the two cores
    with what it measures, and httpx spent about twice its CPU per request."""
    import aiohttp

    async def call(http: aiohttp.ClientSession, n: int) -> bool:
        async with send(http, n) as response:
            await response.read()
        return response.status >= 400

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        base_url=url, connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as http:
        return await load(label, clients, requests, lambda n: call(http, n), rate)


async def load(label: str, clients: int, requests: int, call, rate: float | None = None) -> float:  # type: ignore[no-untyped-def]
    """`requests` calls (`await call(n)` answers whether it failed) from `clients` concurrent
    callers, closed loop or open at `rate`/s; prints the rate and latencies, returns the p99 in ms."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)

    async def caller() -> None:
        nonlocal errors
        while True:
            try:
                n = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if rate:
                await asyncio.sleep(max(0.0, began + n / rate - time.perf_counter()))
            started = time.perf_counter()
            errors += await call(n)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(
        f"{label:<30} {len(latencies) / elapsed:>8.1f} req/s   p50 {p50:>7.1f} ms"
        f"   p99 {p99:>7.1f} ms   errors {errors}"
    )
    return p99


async def temporal_alone(client, clients: int, requests: int, rate: float) -> float:  # type: ignore[no-untyped-def]
    """The floor, in the same run: the same two loops, each call a bare clock's start straight to
    Temporal (no HTTP, no database, no search attributes), its first task run by a worker in its
    own process as `jobctl worker` runs the orders'. Returns the open loop's p99 in ms."""
    from benchmarks.bare_clock import BareClockWorkflow
    from benchmarks.harness import cpu_per, cpu_seconds, process_cpu
    from benchmarks.orders import wait_first_tasks_of

    queue = f"bench-bare-{uuid.uuid4().hex[:6]}"
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.bare_clock",
        client.service_client.config.target_host,
        queue,
        cwd=Path(__file__).resolve().parents[1],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def start(n: int) -> bool:
        await client.start_workflow(BareClockWorkflow.run, id=f"{queue}/{n}", task_queue=queue)
        return False

    def reading() -> dict[str, float]:
        return {"worker": process_cpu(worker.pid), **cpu_seconds()}

    try:
        await load("Temporal alone (bare start)", clients, requests, start)
        await wait_first_tasks_of(client, [f"{queue}/{n}" for n in range(requests)])
        before = reading()
        p99 = await load("Temporal alone at 50/s", clients, requests, lambda n: start(requests + n), rate=rate)
        print("  " + cpu_per(before, reading(), requests, "bare start while the load ran"))
        await wait_first_tasks_of(client, [f"{queue}/{n}" for n in range(requests, 2 * requests)])
        print("  " + cpu_per(before, reading(), requests, "bare start, its first workflow task included"))
        return p99
    finally:
        worker.terminate()
        await worker.wait()


async def ready(url: str, process: asyncio.subprocess.Process) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=2) as http:
        for _ in range(300):
            if process.returncode is not None:
                raise SystemExit(f"the API process exited {process.returncode}")
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the API never became ready")


async def main(requests: int, clients: int, checkout_only: bool = False) -> None:
    """The API and the worker each in their own process, as deployed (`jobctl api`, `jobctl
    worker`); this process only drives the load. One event loop serving the clients, the app and
    the worker at once measured their queueing behind each other, not the API."""
    from datetime import date

    from sqlalchemy import insert

    from benchmarks.harness import (
        cpu_per,
        cpu_seconds,
        figure,
        free_port,
        freeze_startup_heap,
        machine,
        process_cpu,
        stack,
    )
    from benchmarks.orders import wait_first_tasks
    from devtools.seed import seed_retailers
    from schemas.tables import Order
    from workers.api.auth import SCOPES, create_key

    async with stack() as s:
        await seed_retailers(s.engine, 200, today=date.today(), timezone="UTC")
        async with s.engine.begin() as conn:
            orders = (
                (
                    await conn.execute(
                        insert(Order)
                        .values(
                            [
                                {
                                    "retailer_id": 1 + n % 200,
                                    "status": "PENDING",
                                    "payment_mode": "COD",
                                    "total_amount": 80,
                                }
                                for n in range(requests)
                            ]
                        )
                        .returning(Order.id)
                    )
                )
                .scalars()
                .all()
            )
        key, _ = await create_key(s.engine, f"bench-{uuid.uuid4().hex[:6]}", list(SCOPES))
        headers = {"Authorization": f"Bearer {key}"}
        env = {
            **os.environ,
            "DATABASE_URL": s.database_url,
            "TEMPORAL_ADDRESS": s.client.service_client.config.target_host,
            "TASK_QUEUE": "bench-jobs",
            "MESSAGING_TASK_QUEUE": "bench-messaging",
            "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "TWILIO_AUTH_TOKEN": "x",
            "TWILIO_API_BASE": "http://127.0.0.1:9",  # no follow-up is due during the run
            # a worker is whole or refuses to start (the payments activities need a key); no Stripe call is made
            "STRIPE_SECRET_KEY": "sk_test_unused",
            "STRIPE_API_BASE": "http://127.0.0.1:9",
            "LOG_LEVEL": "WARNING",
        }
        jobctl = str(Path(sys.executable).parent / "jobctl")
        port = free_port()
        quiet = {"stdout": asyncio.subprocess.DEVNULL, "stderr": asyncio.subprocess.DEVNULL}
        worker = await asyncio.create_subprocess_exec(jobctl, "worker", env=env, **quiet)
        api = await asyncio.create_subprocess_exec(jobctl, "api", "--port", str(port), env=env, **quiet)
        url = f"http://127.0.0.1:{port}"

        def reading() -> dict[str, float]:
            """CPU seconds so far: the API and the worker apart, then the rest of the stack."""
            return {"api": process_cpu(api.pid), "worker": process_cpu(worker.pid), **cpu_seconds()}

        def report(before: dict[str, float], after: dict[str, float], unit: str) -> None:
            print("  " + cpu_per(before, after, requests // 2, unit).replace("served (`serve`)", "(api + worker)"))

        try:
            await ready(url, api)
            freeze_startup_heap()
            print(f"{machine()}; {clients} concurrent clients, {requests} requests each run")
            if not checkout_only:
                await measure(
                    "risk view (GET)",
                    url,
                    clients,
                    requests,
                    lambda http, n: http.get("/v1/credit/risk", headers=headers),
                )
            before = reading()
            await measure(
                "checkout started",
                url,
                clients,
                requests // 2,
                lambda http, n: http.post(f"/v1/orders/{orders[n]}/checkout-started", headers=headers),
            )
            after = reading()
            report(before, after, "checkout")
            # The closed loop left its clocks' first workflow tasks to the worker: the open loop
            # starts once they ran, so it measures 50 req/s and not the backlog of the last phase.
            await wait_first_tasks(s.client, list(orders[: requests // 2]))
            before = reading()
            p99 = await measure(
                "checkout started at 50 req/s",
                url,
                clients,
                requests // 2,
                lambda http, n: http.post(f"/v1/orders/{orders[requests // 2 + n]}/checkout-started", headers=headers),
                rate=50.0,
            )
            during = reading()
            report(before, during, "checkout while the load ran")
            await wait_first_tasks(s.client, list(orders[requests // 2 :]))
            after = reading()
            report(before, after, "checkout, its first workflow task included")
            figure("api: checkout-started p99 at 50 req/s (50 clients)", p99, "ms", target="< 100")
            # The floor last, once the API and its worker have stopped using the cores.
            for process in (api, worker):
                process.terminate()
            await asyncio.gather(api.wait(), worker.wait())
            floor = await temporal_alone(s.client, clients, requests // 2, 50.0)
            figure(
                "api: checkout-started p99 at 50 req/s, to Temporal alone's",
                p99,
                "ms",
                target="",
                floor=floor,
                floor_name="a bare start at 50/s",
            )
        finally:
            for process in (api, worker):
                if process.returncode is None:
                    process.terminate()
            await asyncio.gather(api.wait(), worker.wait())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--checkout-only", action="store_true", help="skip the read (e.g. to profile the write)")
    args = parser.parse_args()
    from benchmarks.harness import print_load_at_end, require_quiet

    require_quiet(MAX_LOAD)
    asyncio.run(main(args.requests, args.clients, args.checkout_only))
    print_load_at_end()
