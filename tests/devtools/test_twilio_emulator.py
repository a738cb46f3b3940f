"""The Twilio emulator, driven through the real `twilio` SDK over HTTP (no mocks).

What the outbox relies on: Twilio's shapes and error codes reach the SDK intact (so
`TwilioRestException.code`/`.status` classify errors as in production), refused requests never
record a message, status callbacks are signed like Twilio's and arrive in order, and list by
To/DateSent pages the way the SDK expects.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from activities.messaging.twilio_gateway import async_twilio_client, twilio_client
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioEmulator, main

SENDER = "+15005550006"
WA_SENDER = "whatsapp:+15005550006"
ALICE = "+15551230001"
BOB = "+15551230002"


# --- harness -----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[TwilioEmulator]:
    async with TwilioEmulator(status_delay_ms=5, seed=7) as emu:
        yield emu


@pytest_asyncio.fixture
async def client(emulator: TwilioEmulator) -> AsyncIterator[Client]:
    async with async_twilio_client(emulator.url, emulator.account_sid, emulator.auth_token) as c:
        yield c


async def control(emu: TwilioEmulator, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{emu.url}/_emulator/{path}", **kwargs) as resp:
            return resp.status, await resp.json()


async def logged(emu: TwilioEmulator, **params: str) -> list[dict[str, Any]]:
    _, body = await control(emu, "GET", "messages", params=params)
    return body


async def stats(emu: TwilioEmulator) -> dict[str, int]:
    return (await control(emu, "GET", "stats"))[1]


async def configure(emu: TwilioEmulator, **settings: Any) -> None:
    status, body = await control(emu, "POST", "config", json=settings)
    assert status == 200, body


async def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def send(client: Client, to: str = ALICE, from_: str = SENDER, **kwargs: Any) -> Any:
    kwargs.setdefault("body", "hello")
    return await client.messages.create_async(to=to, from_=from_, **kwargs)


@dataclass
class Receiver:
    """A StatusCallback endpoint: records what it got; `/fail` answers 500."""

    url: str = ""
    calls: list[tuple[str, dict[str, str], str]] = field(default_factory=list)

    def statuses(self, sid: str) -> list[str]:
        return [params["MessageStatus"] for _, params, _ in self.calls if params["MessageSid"] == sid]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        params = {k: str(v) for k, v in form.items()}
        rec.calls.append((str(request.url), params, request.headers.get("X-Twilio-Signature", "")))
        return web.Response(status=500 if request.path == "/fail" else 204)

    app = web.Application()
    app.router.add_post("/status", handle)
    app.router.add_post("/fail", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


# --- the Messages resource ---------------------------------------------------------------------


async def test_create_fetch_and_list_through_the_sync_sdk(emulator: TwilioEmulator) -> None:
    sync = twilio_client(emulator.url, emulator.account_sid, emulator.auth_token)

    created = [
        await asyncio.to_thread(sync.messages.create, to=to, from_=SENDER, body=f"m{i}")
        for i, to in enumerate([ALICE, ALICE, BOB, ALICE])
    ]
    first = created[0]
    assert first.sid.startswith("SM") and len(first.sid) == 34
    assert (first.to, first.from_, first.body, first.status) == (ALICE, SENDER, "m0", "queued")
    assert (first.direction, first.api_version) == ("outbound-api", "2010-04-01")
    assert first.account_sid == DEFAULT_ACCOUNT_SID
    assert first.uri == f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages/{first.sid}.json"
    assert first.date_created is not None and first.date_sent is None

    await eventually(lambda: all(m.status == "delivered" for m in emulator.state.store.oldest_first()))
    fetched = await asyncio.to_thread(sync.messages(first.sid).fetch)
    assert (fetched.sid, fetched.status, fetched.error_code) == (first.sid, "delivered", None)
    assert fetched.date_sent is not None and fetched.price is not None

    alice = [m.sid for m in reversed(created) if m.to == ALICE]  # Twilio lists newest first
    assert [m.sid for m in await asyncio.to_thread(sync.messages.list, to=ALICE)] == alice
    assert [m.sid for m in await asyncio.to_thread(sync.messages.list, to=ALICE, page_size=2)] == alice

    now = datetime.now(UTC)
    after = await asyncio.to_thread(sync.messages.list, to=ALICE, date_sent_after=now - timedelta(minutes=1))
    assert [m.sid for m in after] == alice
    minute_ago = now - timedelta(minutes=1)
    paged = await asyncio.to_thread(sync.messages.list, to=ALICE, date_sent_after=minute_ago, page_size=1)
    assert [m.sid for m in paged] == alice  # the filters survive into next_page_uri
    assert await asyncio.to_thread(sync.messages.list, to=ALICE, date_sent_after=now + timedelta(minutes=1)) == []
    assert await asyncio.to_thread(sync.messages.list, to=ALICE, date_sent_before=now - timedelta(days=1)) == []
    assert len(await asyncio.to_thread(sync.messages.list, date_sent=now.date().isoformat())) == 4


async def test_async_list_stream_and_paging(client: Client) -> None:
    sids = [(await send(client, body=f"m{i}")).sid for i in range(5)]
    await send(client, to=BOB)
    newest_first = list(reversed(sids))

    assert [m.sid for m in await client.messages.list_async(to=ALICE, page_size=2)] == newest_first
    assert [m.sid async for m in await client.messages.stream_async(to=ALICE, limit=3)] == newest_first[:3]

    page = await client.messages.page_async(to=ALICE, page_size=2)
    second = await page.next_page_async()
    assert [m.sid for m in second] == newest_first[2:4]
    back = await second.previous_page_async()
    assert [m.sid for m in back] == newest_first[:2]


async def test_fetch_unknown_sid_is_twilio_404(client: Client) -> None:
    with pytest.raises(TwilioRestException) as err:
        await client.messages("SM" + "f" * 32).fetch_async()
    assert (err.value.status, err.value.code) == (404, 20404)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_", "to", "code"),
    [
        ("+15005550001", ALICE, 21212),
        ("+15005550007", ALICE, 21606),
        ("+15005550008", ALICE, 21611),
        (SENDER, "+15005550001", 21211),
        (SENDER, "+15005550002", 21612),
        (SENDER, "+15005550003", 21408),
        (SENDER, "+15005550004", 21610),
        (SENDER, "+15005550009", 21614),
        (WA_SENDER, "whatsapp:+15005550004", 21610),
        ("whatsapp:+15005550007", "whatsapp:" + ALICE, 21606),
        (SENDER, "not-a-number", 21211),
        (SENDER, "whatsapp:" + ALICE, 21910),
    ],
)
async def test_magic_numbers_raise_the_documented_code(
    emulator: TwilioEmulator, client: Client, from_: str, to: str, code: int
) -> None:
    with pytest.raises(TwilioRestException) as err:
        await send(client, to=to, from_=from_)
    assert (err.value.status, err.value.code) == (400, code)
    assert await logged(emulator) == []
    assert (await stats(emulator))["rejected"] == 1


async def test_a_body_or_template_is_required(client: Client) -> None:
    with pytest.raises(TwilioRestException) as err:
        await client.messages.create_async(to=ALICE, from_=SENDER)
    assert err.value.code == 21602


async def test_bad_credentials_are_refused_with_20003(emulator: TwilioEmulator) -> None:
    async with async_twilio_client(emulator.url, emulator.account_sid, "wrong-token") as bad:
        with pytest.raises(TwilioRestException) as err:
            await send(bad)
    assert (err.value.status, err.value.code) == (401, 20003)

    async with async_twilio_client(emulator.url, emulator.account_sid, emulator.auth_token) as other:
        other.account_sid = "AC" + "1" * 32  # right credentials, someone else's account in the path
        with pytest.raises(TwilioRestException) as err:
            await other.messages("SM" + "0" * 32).fetch_async()
    assert (err.value.status, err.value.code) == (401, 20003)
    assert await logged(emulator) == []


async def test_rate_limit_answers_429_then_recovers(emulator: TwilioEmulator, client: Client) -> None:
    await configure(emulator, rate_limit=2)  # burst 2, then a token every 500 ms

    results = await asyncio.gather(*(send(client, body=f"m{i}") for i in range(12)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, Exception)]
    assert refused and all(isinstance(r, TwilioRestException) and (r.status, r.code) == (429, 20429) for r in refused)
    accepted = len(results) - len(refused)
    assert 2 <= accepted <= 3

    await asyncio.sleep(0.6)
    await send(client, body="after")
    counts = await stats(emulator)
    assert (counts["accepted"], counts["rate_limited"]) == (accepted + 1, len(refused))
    assert len(await logged(emulator)) == accepted + 1


async def test_the_rate_limit_is_per_sender_and_a_sender_may_have_its_own(
    emulator: TwilioEmulator, client: Client
) -> None:
    """As at Twilio: each `From` (number and channel) has its own bucket; `sender_rates` overrides one."""
    other, fast = "+15557770001", "+15557770002"
    await configure(emulator, rate_limit=2, sender_rates={fast: 6})  # bursts of 2, 2, 2 and 6

    async def burst(from_: str, to: str = ALICE) -> int:
        results = await asyncio.gather(*(send(client, to=to, from_=from_) for _ in range(10)), return_exceptions=True)
        assert all(isinstance(r, TwilioRestException) and r.code == 20429 for r in results if isinstance(r, Exception))
        return sum(not isinstance(r, Exception) for r in results)

    accepted = [await burst(SENDER), await burst(other), await burst(WA_SENDER, f"whatsapp:{ALICE}"), await burst(fast)]

    assert all(2 <= n <= 3 for n in accepted[:3])  # each its own burst of 2 (a token may come back meanwhile)
    assert 6 <= accepted[3] <= 7
    counts = await stats(emulator)
    assert counts["rate_limited"] == 40 - sum(accepted)
    assert counts["rate_limited_by_sender"] == {
        s: 10 - n for s, n in zip((SENDER, other, WA_SENDER, fast), accepted, strict=True)
    }
    _, current = await control(emulator, "GET", "config")
    assert current["sender_rates"] == {fast: 6.0}


async def test_injected_faults_never_record_a_message(client: Client) -> None:
    async with TwilioEmulator(fail_rate=1.0, seed=1) as emu:
        async with async_twilio_client(emu.url, emu.account_sid, emu.auth_token) as c:
            for _ in range(6):
                with pytest.raises(TwilioRestException) as err:
                    await send(c)
                assert (err.value.status, err.value.code) in {(500, 20500), (503, 20503)}
            assert await logged(emu) == []
            assert (await stats(emu))["faults"] == 6

            await configure(emu, fail_rate=0.0)
            await send(c)
            assert len(await logged(emu)) == 1


async def test_latency_is_injected_at_runtime(emulator: TwilioEmulator, client: Client) -> None:
    await configure(emulator, latency_ms=150)
    started = time.monotonic()
    await send(client)
    assert time.monotonic() - started >= 0.15


async def test_an_accept_delay_keeps_a_message_out_of_the_list_until_it_is_recorded() -> None:
    """As on a slow network: a lookup made while the create is under way does not see it yet."""
    async with TwilioEmulator(accept_delay_ms=500) as emu:
        async with async_twilio_client(emu.url, emu.account_sid, emu.auth_token) as c:
            create = asyncio.create_task(send(c))
            await asyncio.sleep(0.2)
            assert await c.messages.list_async(to=ALICE) == []
            message = await create
            assert [m.sid for m in await c.messages.list_async(to=ALICE)] == [message.sid]
            _, current = await control(emu, "GET", "config")
            assert current["accept_delay_ms"] == 500


async def test_config_endpoint_refuses_invalid_settings(emulator: TwilioEmulator) -> None:
    invalid: list[dict[str, Any]] = [
        {"fail_rate": 2},
        {"rate_limit": 0},
        {"sender_rates": {ALICE: 0}},
        {"sender_rates": [ALICE]},
        {"latency_ms": "slow"},
        {"accept_delay_ms": -1},
        {"bogus": 1},
        {"delivery_failures": {ALICE: "x"}},
        {"refusals": {ALICE: 99999}},
        {"refusals": {ALICE: "21610"}},
        {"inbound_webhook": "ftp://example"},
        {"inbound_webhook": 3},
    ]
    for bad in invalid:
        status, body = await control(emulator, "POST", "config", json=bad)
        assert status == 400, bad
    _, current = await control(emulator, "GET", "config")
    assert (current["fail_rate"], current["rate_limit"], current["latency_ms"]) == (0.0, None, 0)


async def test_a_refusal_is_per_channel_where_a_magic_number_refuses_everywhere(
    emulator: TwilioEmulator, client: Client
) -> None:
    status, _ = await control(emulator, "POST", "config", json={"refusals": {ALICE: 21610}})
    assert status == 200
    with pytest.raises(TwilioRestException) as refused:
        await send(client, to=ALICE)
    assert (refused.value.status, refused.value.code) == (400, 21610)
    on_whatsapp = await send(client, to=f"whatsapp:{ALICE}", from_=WA_SENDER)
    assert on_whatsapp.status == "queued"
    assert [m["to"] for m in await logged(emulator)] == [f"whatsapp:{ALICE}"]


def test_cli_refuses_an_invalid_setting_before_binding() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--port", "0", "--fail-rate", "2"])
    assert exit_.value.code == 2


# --- status callbacks --------------------------------------------------------------------------


async def test_status_callbacks_are_signed_and_in_order(
    emulator: TwilioEmulator, client: Client, receiver: Receiver
) -> None:
    url = f"{receiver.url}/status?tenant=t1"
    message = await send(client, status_callback=url)
    await eventually(lambda: len(receiver.statuses(message.sid)) == 3)

    assert receiver.statuses(message.sid) == ["queued", "sent", "delivered"]
    validator = RequestValidator(DEFAULT_AUTH_TOKEN)
    for requested, params, signature in receiver.calls:
        assert requested == url
        assert validator.validate(requested, params, signature)
        assert not RequestValidator("another-token").validate(requested, params, signature)
        assert (params["To"], params["From"], params["AccountSid"]) == (ALICE, SENDER, DEFAULT_ACCOUNT_SID)
        assert "ErrorCode" not in params
    assert (await client.messages(message.sid).fetch_async()).status == "delivered"
    assert (await stats(emulator))["callbacks_delivered"] == 3


async def test_an_inbound_message_is_posted_signed_to_the_inbound_webhook_before_the_answer(
    emulator: TwilioEmulator, client: Client, receiver: Receiver
) -> None:
    """As Twilio posts a message to the number's incoming-message webhook: its sid, From, To and
    Body, no time; then it is listed like Twilio's, and its WhatsApp session is open."""
    url = f"{receiver.url}/status"
    await configure(emulator, inbound_webhook=url, strict=True)
    status, inbound = await control(
        emulator, "POST", "inbound", json={"from": f"whatsapp:{ALICE}", "to": WA_SENDER, "body": "hi"}
    )
    assert status == 201
    ((requested, params, signature),) = receiver.calls  # there before the 201
    assert requested == url and RequestValidator(DEFAULT_AUTH_TOKEN).validate(url, params, signature)
    assert (params["MessageSid"], params["From"], params["To"], params["Body"]) == (
        inbound["sid"],
        f"whatsapp:{ALICE}",
        WA_SENDER,
        "hi",
    )
    assert not any("Date" in name for name in params)
    listed = await client.messages.list_async(from_=f"whatsapp:{ALICE}", limit=5)
    assert [m.sid for m in listed] == [inbound["sid"]]
    freeform = await send(client, to=f"whatsapp:{ALICE}", from_=WA_SENDER)
    assert freeform.sid and (await stats(emulator))["listed"] == 1


async def test_configured_numbers_fail_or_go_undelivered(
    emulator: TwilioEmulator, client: Client, receiver: Receiver
) -> None:
    failures = {BOB: 30003, "whatsapp:+15551230003": {"status": "failed", "error_code": 30008}}
    await configure(emulator, delivery_failures=failures)
    undelivered = await send(client, to=BOB, status_callback=f"{receiver.url}/status")
    failed = await send(client, to="whatsapp:+15551230003", from_=WA_SENDER, status_callback=f"{receiver.url}/status")
    await eventually(lambda: len(receiver.statuses(undelivered.sid)) == 3 and len(receiver.statuses(failed.sid)) == 2)

    assert receiver.statuses(undelivered.sid) == ["queued", "sent", "undelivered"]
    assert receiver.statuses(failed.sid) == ["queued", "failed"]
    final = {
        params["MessageSid"]: params.get("ErrorCode")
        for _, params, _ in receiver.calls
        if params["MessageStatus"] in ("failed", "undelivered")
    }
    assert final == {undelivered.sid: "30003", failed.sid: "30008"}
    fetched = await client.messages(undelivered.sid).fetch_async()
    assert (fetched.status, fetched.error_code) == ("undelivered", 30003)


async def test_callback_failures_are_ignored(emulator: TwilioEmulator, client: Client, receiver: Receiver) -> None:
    refused = await send(client, status_callback=f"{receiver.url}/fail")
    unreachable = await send(client, status_callback="http://127.0.0.1:1/status")
    store = emulator.state.store
    await eventually(lambda: all(store.get(m.sid).status == "delivered" for m in (refused, unreachable)))
    assert (await stats(emulator))["callbacks_failed"] == 6


# --- WhatsApp ------------------------------------------------------------------------------------


async def test_closed_whatsapp_session_needs_a_template(emulator: TwilioEmulator, client: Client) -> None:
    await configure(emulator, whatsapp_session_closed=[BOB])

    with pytest.raises(TwilioRestException) as err:
        await send(client, to=f"whatsapp:{BOB}", from_=WA_SENDER, body="freeform")
    assert (err.value.status, err.value.code) == (400, 63016)

    template = await client.messages.create_async(
        to=f"whatsapp:{BOB}", from_=WA_SENDER, content_sid="HX" + "a" * 32, content_variables='{"1": "12.50"}'
    )
    sms = await send(client, to=BOB, body="freeform over SMS")
    open_session = await send(client, to=f"whatsapp:{ALICE}", from_=WA_SENDER, body="freeform")

    log = await logged(emulator)
    assert [m["sid"] for m in log] == [template.sid, sms.sid, open_session.sid]
    assert (log[0]["to"], log[0]["content_sid"]) == (f"whatsapp:{BOB}", "HX" + "a" * 32)
    assert log[0]["content_variables"] == '{"1": "12.50"}'
    assert [m["sid"] for m in await logged(emulator, to=BOB)] == [sms.sid]


async def test_closed_session_can_fail_asynchronously_like_production(emulator: TwilioEmulator, client: Client) -> None:
    await configure(emulator, whatsapp_session_closed=[BOB], session_closed_error="async")
    message = await send(client, to=f"whatsapp:{BOB}", from_=WA_SENDER, body="freeform")
    assert message.status == "queued"
    await eventually(lambda: emulator.state.store.get(message.sid).status == "failed")
    fetched = await client.messages(message.sid).fetch_async()
    assert (fetched.status, fetched.error_code) == ("failed", 63016)


# --- the emulator's own surface ------------------------------------------------------------------


async def test_log_can_be_filtered_and_cleared(emulator: TwilioEmulator, client: Client) -> None:
    await send(client, to=ALICE)
    await send(client, to=BOB)
    assert [m["to"] for m in await logged(emulator)] == [ALICE, BOB]
    assert [m["to"] for m in await logged(emulator, to=BOB)] == [BOB]

    status, body = await control(emulator, "DELETE", "messages")
    assert (status, body) == (200, {"deleted": 2})
    assert await logged(emulator) == []
    assert (await stats(emulator))["accepted"] == 2  # counters are not part of the log


async def test_ephemeral_port_and_real_twilio_default() -> None:
    async with TwilioEmulator(port=0) as emu:
        assert not emu.url.endswith(":0") and emu.url.startswith("http://127.0.0.1:")
    real = twilio_client(None, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)
    assert real.api.base_url == "https://api.twilio.com"


async def test_async_client_times_out_instead_of_hanging(emulator: TwilioEmulator) -> None:
    await configure(emulator, latency_ms=500)
    async with async_twilio_client(emulator.url, emulator.account_sid, emulator.auth_token, timeout=0.1) as c:
        with pytest.raises(TimeoutError):
            await send(c)


async def test_cli_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "devtools.twilio_emulator", "--port", "0", "--rate-limit", "50"),
        cwd=Path(__file__).resolve().parents[2],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        url = re.search(r"url=(http://127\.0\.0\.1:\d+)", line)
        assert "twilio_emulator.listening" in line and url, line
        async with async_twilio_client(url.group(1), DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN) as c:
            assert (await send(c)).status == "queued"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
