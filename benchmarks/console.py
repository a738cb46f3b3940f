"""Benchmark: the business console's server time per page, signed in as each role.

    python benchmarks/console.py --retailers 1000 --churn-cases 10000 --loyalty-items 1000

Real stack: the embedded PostgreSQL and the Temporal dev server (the schedules applied), the API's
app (`create_app`, which mounts the console) called in-process. Seeded: N retailers with their
orders and debits (`devtools.seed.seed_retailers`), 20 messages each (sent, held by quiet hours or
the brake, failed with Twilio codes) and 10 audit rows each; a company with M churn cases; L loyalty
items in every state, each with its customer and a few ledger rows.

A user per role signs in through the form and crawls the console: every `/console` link of each
page it can open, from the home page on (new pages are found as the nav links them), at most
`--per-kind` URLs of each kind (the path with its numbers as `{n}` and its query's names), so a
few retailers, items and customers are opened, not all. Each page found is then requested
`--repeat` times and its `Server-Timing: app;dur=` read (the server's own time, without the
client's). Printed: p50 and p95 per page kind (over every role and URL of the kind), and the
worst p95 as the figure (target < 300 ms), with the load average at start and at end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import uuid
from collections import defaultdict
from datetime import date
from pathlib import Path
from urllib.parse import urljoin, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from benchmarks.harness import figure, machine, print_load_at_end, require_quiet, stack
from config.settings import Settings
from devtools.seed import seed_retailers
from workers.api.app import create_app
from workers.console.users import add_user
from workers.families import all_schedules
from workers.log import configure_logging
from workers.schedules import apply

PASSWORD = "bench-console-password"
ROLES = ("finance", "support", "company_admin", "operator", "read_only")
LINK = re.compile(r'href="((?:/console|\?)[^"#]*)')
"""The console's own links: absolute (`/console/...`) or its pagers' (`?offset=25`, on the same page)."""
TIMING = re.compile(r"app;dur=([0-9.]+)")

SEED_MESSAGES = text(
    """
INSERT INTO message_log (idempotency_key, recipient_type, recipient_id, channel, template, template_version,
                         status, reason, error_code, created_at, updated_at)
SELECT 'bench-' || r.id || '-' || g, 'retailer', r.id::text, 'sms', 'reminder', 1,
       CASE WHEN g % 20 = 1 THEN 'deferred' WHEN g % 20 = 2 THEN 'failed' WHEN g % 20 = 3 THEN 'undelivered'
            ELSE 'delivered' END,
       CASE WHEN g % 20 = 1 THEN (CASE WHEN r.id % 2 = 0 THEN 'quiet_hours' ELSE 'paused' END) END,
       CASE WHEN g % 20 = 2 THEN (ARRAY[30003, 30007, 21610, 30008])[1 + r.id % 4]
            WHEN g % 20 = 3 THEN 30005 END,
       now() - g * interval '1 hour', now() - g * interval '1 hour'
FROM retailers r, generate_series(1, 20) g
"""
)
SEED_AUDIT = text(
    """
INSERT INTO audit_log (retailer_id, action, performed_by, reason, created_at)
SELECT r.id, 'credit_limit_changed', 'console:bench', 'bench ' || g, now() - g * interval '1 day'
FROM retailers r, generate_series(1, 10) g
"""
)
SEED_CHURN = text(
    """
WITH company AS (
    INSERT INTO companies (id, name) VALUES (:company, 'Bench Gym') RETURNING id
), members AS (
    INSERT INTO memberships (company_id, name, phone, preferred_channel)
    SELECT :company, 'Member ' || g, '+1561' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(1, :n) g
    RETURNING id
)
INSERT INTO recovery_cases (company_id, membership_id, trigger, status)
SELECT :company, id, 'payment_failed', CASE WHEN id % 5 = 0 THEN 'RECOVERED' ELSE 'OPEN' END FROM members
"""
)
SEED_LOYALTY = text(
    """
WITH customers_ AS (
    INSERT INTO customers (name, loyalty_points)
    SELECT 'Bench Customer ' || g, 30 FROM generate_series(1, :n) g RETURNING id
), ledger AS (
    INSERT INTO loyalty_transactions (customer_id, type, points, balance_before, balance_after, reference_type,
                                      reference_id)
    SELECT c.id, 'earned', 10, 10 * (k - 1), 10 * k, 'order', 'bench-earn-' || c.id || '-' || k
    FROM customers_ c, generate_series(1, 3) k
)
INSERT INTO loyalty_reconciliation_queue (customer_id, order_reference, points_redeemed, order_total, status,
                                          attempts, last_error)
SELECT id, 'bench-order-' || id, 40, 25.00,
       (ARRAY['NEEDS_REVIEW', 'PENDING', 'RESOLVED'])[1 + id % 3], id % 7, 'InsufficientPoints: bench'
FROM customers_
"""
)


def kind_of(url: str) -> str:
    """The page's kind: its path with numbers as {n}, and its query's names (`?offset`)."""
    parts = urlsplit(url)
    path = re.sub(r"/\d+(?=/|$)", "/{n}", parts.path)
    names = sorted({pair.split("=", 1)[0] for pair in parts.query.split("&") if pair})
    return path + ("?" + "&".join(names) if names else "")


async def sign_in(app: FastAPI, username: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://console", timeout=60)
    form = await client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text[:300]
    answer = await client.post(
        "/console/login", data={"username": username, "password": PASSWORD, "csrf": csrf.group(1), "next": "/console"}
    )
    assert answer.status_code == 303, answer.text[:300]
    return client


async def crawl(client: httpx.AsyncClient, per_kind: int, most: int) -> list[str]:
    """Every page reachable from /console through its links (GET only), `per_kind` of each kind."""
    seen: set[str] = set()
    taken: dict[str, int] = defaultdict(int)
    queue = ["/console"]
    found: list[str] = []
    while queue and len(found) < most:
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        kind = kind_of(url)
        if taken[kind] >= per_kind:
            continue
        page = await client.get(url)
        if page.status_code != 200 or "text/html" not in page.headers.get("content-type", ""):
            continue
        taken[kind] += 1
        found.append(url)
        for link in LINK.findall(page.text):
            link = urljoin(url, link.replace("&amp;", "&"))
            if link.startswith(("/console/static", "/console/login", "/console/logout")):
                continue
            if link.startswith("/console?") or link == "/console/":
                continue
            if link.startswith("/console") and link not in seen:
                queue.append(link)
    return found


async def main(retailers: int, churn_cases: int, loyalty_items: int, repeat: int, per_kind: int) -> None:
    configure_logging("json", "WARNING")
    load_at_start = os.getloadavg()
    async with stack() as s:
        settings = Settings(
            database_url=s.database_url,
            temporal_address=s.client.service_client.config.target_host,
            task_queue=f"bench-{uuid.uuid4().hex[:8]}",
        )
        started = time.perf_counter()
        await seed_retailers(s.engine, retailers, today=date.today(), prefix="Bench")
        company = "bench-gym"
        async with s.engine.begin() as conn:
            await conn.execute(SEED_MESSAGES)
            await conn.execute(SEED_AUDIT)
            await conn.execute(SEED_CHURN, {"company": company, "n": churn_cases})
            await conn.execute(SEED_LOYALTY, {"n": loyalty_items})
        async with s.engine.connect() as conn:
            await conn.execute(
                text(
                    "ANALYZE message_log, audit_log, recovery_cases, memberships, customers, loyalty_transactions,"
                    " loyalty_reconciliation_queue"
                )
            )
            await conn.commit()
            messages = await conn.scalar(text("SELECT count(*) FROM message_log"))
        await apply(s.client, settings, all_schedules())
        for role in ROLES:
            bound = company if role == "company_admin" else None
            await add_user(s.engine, f"bench-{role.replace('_', '-')}", PASSWORD, role, bound)
        print(
            f"seeded {retailers} retailers ({messages} messages, {retailers * 10} audit rows), {churn_cases} churn"
            f" cases, {loyalty_items} loyalty items in {time.perf_counter() - started:.1f}s"
        )

        app = create_app(settings, s.engine, s.client)
        timings: dict[str, list[float]] = defaultdict(list)
        roles_of: dict[str, set[str]] = defaultdict(set)
        async with app.router.lifespan_context(app):
            for role in ROLES:
                client = await sign_in(app, f"bench-{role.replace('_', '-')}")
                try:
                    pages = await crawl(client, per_kind, most=200)
                    print(f"{role}: {len(pages)} pages: {', '.join(sorted({kind_of(p) for p in pages}))}")
                    for url in pages:
                        for _ in range(repeat):
                            answer = await client.get(url)
                            dur = TIMING.search(answer.headers.get("server-timing", ""))
                            if answer.status_code != 200 or dur is None:
                                raise SystemExit(f"{role} {url}: {answer.status_code}, no Server-Timing")
                            timings[kind_of(url)].append(float(dur.group(1)))
                            roles_of[kind_of(url)].add(role)
                finally:
                    await client.aclose()

    print(f"machine: {machine()}")
    print(f"load average at start: {load_at_start[0]:.2f} {load_at_start[1]:.2f} {load_at_start[2]:.2f}")
    print(f"{'page':<48}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}  roles")
    worst = ("", 0.0)
    for kind, values in sorted(timings.items()):
        p50 = statistics.median(values)
        p95 = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
        worst = max(worst, (kind, p95), key=lambda w: w[1])
        print(f"{kind:<48}{len(values):>9}{p50:>9.1f}{p95:>9.1f}  {','.join(sorted(roles_of[kind]))}")
    print(f"worst p95: {worst[1]:.1f} ms ({worst[0]})")
    figure("console: worst page's p95 server time", worst[1], "ms", target="< 300")
    print_load_at_end()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retailers", type=int, default=1000)
    parser.add_argument("--churn-cases", type=int, default=10000)
    parser.add_argument("--loyalty-items", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20, help="requests per page found")
    parser.add_argument("--per-kind", type=int, default=3, help="pages of each kind opened (detail links followed)")
    args = parser.parse_args()
    if min(args.retailers, args.churn_cases, args.loyalty_items, args.repeat, args.per_kind) < 1:
        parser.error("every size must be at least 1")
    require_quiet()
    asyncio.run(main(args.retailers, args.churn_cases, args.loyalty_items, args.repeat, args.per_kind))
