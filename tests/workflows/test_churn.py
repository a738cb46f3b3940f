"""The churn case's decisions in seconds: nudges on the company's days, endings, manual steps, incentives."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from schemas.churn import (
    ApplyIncentive,
    CaseAction,
    CaseContext,
    CaseStatus,
    ChurnCaseInput,
    DecideNudge,
    LoadCase,
    ManualNudge,
    NudgeDecision,
    NudgeOutcome,
)
from schemas.messaging import SendMessage, SendOutcome
from schemas.payments import (
    CancelSubscription,
    ExtendSubscription,
    SubscriptionCancellation,
    SubscriptionPeriod,
    SubscriptionState,
    SubscriptionStateRequest,
)
from tests.workflows.harness import eventually, family_worker, started_at, task_failures

COMPANY = "co-gym"
MEMBERSHIP = 55
DAY = timedelta(days=1)
LAPSED = SubscriptionState(
    subscription_id="sub_1", status="past_due", cancel_at_period_end=False, current_period_end=None
)
"""What Stripe answers before the termination unless a test says otherwise: still not paying."""


@dataclass
class FakeChurn:
    """The case's activities, the messaging gateway and Stripe's subscription calls, by registered name."""

    offsets: list[int]
    grace: int = 3
    status: str = "OPEN"
    daily_cap: int | None = None
    quiet_until: list[timedelta] = field(default_factory=list)
    """Hold-backs to answer first: each one defers the nudge by that much (quiet hours)."""
    send_holds: list[timedelta] = field(default_factory=list)
    """Hold-backs the outbox answers first: each defers a send by that much (`deliver` sends again)."""
    subscription: SubscriptionState = field(default_factory=LAPSED.model_copy)
    decisions: list[DecideNudge] = field(default_factory=list)
    sends: list[tuple[datetime, SendMessage]] = field(default_factory=list)
    """Every send that went out; a deferred attempt is in `deferred_sends`."""
    deferred_sends: list[tuple[datetime, SendMessage]] = field(default_factory=list)
    state_reads: list[tuple[datetime, SubscriptionStateRequest]] = field(default_factory=list)
    actions: list[CaseAction] = field(default_factory=list)
    extensions: list[ExtendSubscription] = field(default_factory=list)
    cancellations: list[tuple[datetime, CancelSubscription]] = field(default_factory=list)

    @activity.defn(name="churn_load_case")
    async def load_case(self, request: LoadCase) -> CaseContext:
        return CaseContext(
            case_id=request.case_id,
            company_id=request.company_id,
            membership_id=MEMBERSHIP,
            status=self.status,  # type: ignore[arg-type]
            opened_at=started_at(),
            offsets_days=self.offsets,
            grace_period_days=self.grace,
            incentive_applied=False,
            attempts=0,
        )

    @activity.defn(name="churn_decide_nudge")
    async def decide_nudge(self, request: DecideNudge) -> NudgeDecision:
        """The company's rules, as the real activity decides them from the nudges sent before."""
        assert request.company_id == COMPANY
        self.decisions.append(request)
        at = request.at
        channel = request.channel or "sms"
        if self.quiet_until:
            return NudgeDecision(
                allowed=False, channel=channel, held_back="quiet_hours", retry_at=at + self.quiet_until.pop(0)
            )
        recent = [t for t in request.sent_before if at - t < DAY]
        if self.daily_cap is not None and len(recent) >= self.daily_cap:
            return NudgeDecision(allowed=False, channel=channel, held_back="daily_cap", retry_at=at + DAY)
        return NudgeDecision(allowed=True, channel=channel)

    @activity.defn(name="churn_record_action")
    async def record_action(self, action: CaseAction) -> bool:
        self.actions.append(action)
        return True

    @activity.defn(name="send_message")
    async def send_message(self, message: SendMessage) -> SendOutcome:
        if self.send_holds:
            self.deferred_sends.append((started_at(), message))
            return SendOutcome(status="deferred", reason="quiet_hours", retry_at=started_at() + self.send_holds.pop(0))
        self.sends.append((started_at(), message))
        return SendOutcome(status="sent", provider_sid=f"SM{len(self.sends)}", channel=message.channel)

    @activity.defn(name="subscription_state")
    async def subscription_state(self, request: SubscriptionStateRequest) -> SubscriptionState:
        self.state_reads.append((started_at(), request))
        return self.subscription

    @activity.defn(name="extend_subscription")
    async def extend_subscription(self, request: ExtendSubscription) -> SubscriptionPeriod:
        self.extensions.append(request)
        return SubscriptionPeriod(
            subscription_id="sub_1",
            status="active",
            trial_end=None,
            current_period_end=started_at() + request.days * DAY,
        )

    @activity.defn(name="cancel_subscription")
    async def cancel_subscription(self, request: CancelSubscription) -> SubscriptionCancellation:
        self.cancellations.append((started_at(), request))
        return SubscriptionCancellation(
            subscription_id="sub_1", status="canceled", cancel_at_period_end=False, canceled_at=None
        )

    def activities(self) -> list:
        return [
            self.load_case,
            self.decide_nudge,
            self.record_action,
            self.send_message,
            self.extend_subscription,
            self.cancel_subscription,
            self.subscription_state,
        ]

    def kinds(self) -> list[str]:
        return [a.type for a in self.actions]


async def open_case(env: WorkflowEnvironment, task_queue: str) -> tuple[int, WorkflowHandle]:
    case_id = random.randint(1, 2**31)
    handle = await env.client.start_workflow(
        "ChurnCaseWorkflow",
        ChurnCaseInput(
            case_id=case_id,
            company_id=COMPANY,
            manage_link="https://gym.example/manage",
            messaging_task_queue=task_queue,
        ),
        id=f"churn-case/{case_id}",
        task_queue=task_queue,
        result_type=CaseStatus,
    )
    return case_id, handle


async def case_status(handle: WorkflowHandle) -> CaseStatus:
    return await handle.query("status", result_type=CaseStatus)


def days_after(start: datetime, moments: list[datetime]) -> list[float]:
    return [round((t - start) / DAY, 2) for t in moments]


async def started(handle: WorkflowHandle) -> datetime:
    start = (await handle.describe()).start_time
    assert start is not None
    return start


async def test_nudges_go_out_on_the_offset_days_then_the_membership_is_terminated_after_grace(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChurn(offsets=[0, 2, 5], grace=3)
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        case_id, handle = await open_case(time_skipping_env, task_queue)
        result = await handle.result()
    start = await started(handle)

    assert days_after(start, [t for t, _ in fake.sends]) == [0, 2, 5]
    assert [m.idempotency_key for _, m in fake.sends] == [f"nudge:{case_id}:{n}" for n in (1, 2, 3)]
    assert {(m.recipient_type, m.recipient_id, m.template) for _, m in fake.sends} == {
        ("member", str(MEMBERSHIP), "churn_nudge")
    }
    # Stripe is read once more before the irreversible step; the member is still not paying.
    [(read_at, read)] = fake.state_reads
    [(cancelled_at, cancel)] = fake.cancellations
    assert read == SubscriptionStateRequest(membership_id=MEMBERSHIP) and read_at <= cancelled_at
    assert days_after(start, [read_at]) == [8]  # last offset (5) + grace (3)
    assert cancel == CancelSubscription(
        membership_id=MEMBERSHIP, idempotency_key=f"terminate:{case_id}", at_period_end=False
    )
    assert fake.kinds() == ["nudge_sms", "nudge_sms", "nudge_sms", "membership_terminated"]
    assert fake.actions[-1].close_as == "TERMINATED"
    assert (result.status, result.attempts) == ("TERMINATED", 3)
    assert await task_failures(handle) == 0


async def test_recovered_on_day_3_stops_the_remaining_nudges_and_the_termination(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChurn(offsets=[0, 2, 5], grace=3)
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        _, handle = await open_case(time_skipping_env, task_queue)
        await time_skipping_env.sleep(3 * DAY)
        await handle.signal("recovered", {"actor_id": "stripe", "company_id": COMPANY})
        result = await handle.result()

    assert days_after(await started(handle), [t for t, _ in fake.sends]) == [0, 2]
    assert fake.cancellations == [] and fake.state_reads == []
    assert fake.actions[-1].actor_id == "stripe"
    assert fake.kinds()[-1] == "case_recovered" and fake.actions[-1].close_as == "RECOVERED"
    assert (result.status, result.attempts, result.next_nudge_at) == ("RECOVERED", 2, None)


async def test_an_ending_for_another_company_is_refused(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChurn(offsets=[0, 2], grace=1)
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        _, handle = await open_case(time_skipping_env, task_queue)
        await eventually(lambda: _nudged(handle, 1))
        await handle.signal("cancelled", {"company_id": "co-other"})
        result = await handle.result()

    assert result.status == "TERMINATED"
    assert len(fake.cancellations) == 1


async def test_a_system_nudge_held_by_quiet_hours_goes_out_when_they_end(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChurn(offsets=[1], grace=2, quiet_until=[timedelta(hours=9)])
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        case_id, handle = await open_case(time_skipping_env, task_queue)
        await handle.result()

    assert days_after(await started(handle), [t for t, _ in fake.sends]) == [round(1 + 9 / 24, 2)]
    deferred = fake.actions[0]
    assert deferred.type == "nudge_deferred" and deferred.metadata["held_back"] == "quiet_hours"
    assert deferred.idempotency_key.startswith(f"nudge:{case_id}:1:held:")
    assert [m.idempotency_key for _, m in fake.sends] == [f"nudge:{case_id}:1"]


async def test_manual_nudges_are_decided_one_at_a_time_under_the_daily_cap(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    """Two operators nudge at once with one nudge left today: one goes out, the other is held back."""
    fake = FakeChurn(offsets=[0, 10], daily_cap=2)
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        case_id, handle = await open_case(time_skipping_env, task_queue)
        await eventually(lambda: _nudged(handle, 1))
        await handle.signal("manual_nudge", {"actor_id": "op-1", "channel": "whatsapp", "company_id": COMPANY})
        await handle.signal("manual_nudge", {"actor_id": "op-2", "note": "called too", "company_id": COMPANY})
        await eventually(lambda: _recorded(fake, 3))
        now = await case_status(handle)
        await handle.signal("cancelled", {"company_id": COMPANY})
        result = await handle.result()

    assert [len(d.sent_before) for d in fake.decisions] == [0, 1, 2]  # each decision saw the one before
    assert [m.idempotency_key for _, m in fake.sends] == [f"nudge:{case_id}:1", f"manual:{case_id}:1"]
    assert fake.sends[1][1].channel == "whatsapp"
    held = fake.actions[2]
    assert (held.type, held.idempotency_key, held.metadata["held_back"]) == (
        "nudge_suppressed",
        f"manual:{case_id}:2",
        "daily_cap",
    )
    assert (now.attempts, now.manual_nudges, now.last_hold_back) == (2, 2, "daily_cap")
    assert result.status == "CANCELLED"


async def test_a_manual_nudge_decides_and_schedules_its_send_in_one_workflow_task(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    """The decision is a local activity: the task the signal wakes schedules the send itself,
    instead of scheduling the decision and waiting for another task to schedule the send."""
    fake = FakeChurn(offsets=[10])
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        case_id, handle = await open_case(time_skipping_env, task_queue)
        await eventually(lambda: _asleep(handle))
        await handle.signal("manual_nudge", {"actor_id": "op-1", "company_id": COMPANY})
        await eventually(lambda: _recorded(fake, 1))
        history = await handle.fetch_history()
        await handle.signal("cancelled", {"company_id": COMPANY})
        await handle.result()

    events = history.events
    signalled = next(
        i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    )
    send = next(
        i
        for i, e in enumerate(events)
        if i > signalled and e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    )
    between = [e.event_type for e in events[signalled:send]]
    assert events[send].activity_task_scheduled_event_attributes.activity_type.name == "send_message"
    assert between.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 1  # the task the signal woke
    assert EventType.EVENT_TYPE_MARKER_RECORDED in between  # the decision, recorded by that task
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert "churn_decide_nudge" not in scheduled
    assert [d.channel for d in fake.decisions] == [None]  # decided once, under the company's rules
    assert [m.idempotency_key for _, m in fake.sends] == [f"manual:{case_id}:1"]


async def test_a_new_case_reads_itself_and_sleeps_until_its_first_offset_in_one_workflow_task(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    """The case is read by a local activity: opening a case is one workflow task, so a case the
    worker evicts while thousands open at once is never replayed just to start its first timer."""
    fake = FakeChurn(offsets=[10])
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        _, handle = await open_case(time_skipping_env, task_queue)
        await eventually(lambda: _asleep(handle))
        history = await handle.fetch_history()
        await handle.signal("cancelled", {"company_id": COMPANY})
        assert (await handle.result()).status == "CANCELLED"

    events = [e.event_type for e in history.events]
    asleep = events.index(EventType.EVENT_TYPE_TIMER_STARTED)
    assert events[:asleep].count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 1
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in events[:asleep]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"actor_id": "", "company_id": COMPANY},
        {"actor_id": "op-1", "channel": "pigeon", "company_id": COMPANY},
        ["op-1"],
        {"actor_id": "op-1"},  # no company
        {"actor_id": "op-1", "company_id": "co-other"},
    ],
)
async def test_a_malformed_or_foreign_manual_nudge_is_dropped(
    time_skipping_env: WorkflowEnvironment, task_queue: str, payload: object
) -> None:
    fake = FakeChurn(offsets=[0, 10])
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        _, handle = await open_case(time_skipping_env, task_queue)
        await eventually(lambda: _nudged(handle, 1))
        await handle.signal("manual_nudge", payload)
        await time_skipping_env.sleep(timedelta(hours=1))
        now = await case_status(handle)
        assert await task_failures(handle) == 0
        await handle.signal("recovered", {"company_id": COMPANY})
        await handle.result()

    assert (now.status, now.attempts, now.manual_nudges) == ("OPEN", 1, 0)
    assert len(fake.decisions) == 1 and len(fake.sends) == 1


async def test_apply_incentive_accepts_1_to_90_days_once(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChurn(offsets=[0, 10])
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        case_id, handle = await open_case(time_skipping_env, task_queue)
        await eventually(lambda: _nudged(handle, 1))
        for days in (0, 91, -5):
            assert "between 1 and 90" in await refusal(
                handle, ApplyIncentive(actor_id="op-1", days=days, company_id=COMPANY)
            )
        assert "does not belong" in await refusal(
            handle, ApplyIncentive(actor_id="op-1", days=30, company_id="co-other")
        )
        assert "company_id is required" in await refusal(handle, {"actor_id": "op-1", "days": 30})
        assert fake.extensions == []

        period_end = await handle.execute_update(
            "apply_incentive", ApplyIncentive(actor_id="op-1", days=30, company_id=COMPANY), result_type=datetime
        )
        assert "already applied" in await refusal(handle, ApplyIncentive(actor_id="op-2", days=7, company_id=COMPANY))
        now = await case_status(handle)
        await handle.signal("recovered", {"company_id": COMPANY})
        await handle.result()

    assert fake.extensions == [
        ExtendSubscription(membership_id=MEMBERSHIP, days=30, idempotency_key=f"incentive:{case_id}")
    ]
    assert period_end is not None
    incentive = next(a for a in fake.actions if a.type == "incentive_applied")
    assert (incentive.incentive_applied, incentive.metadata, incentive.actor_id) == (True, {"days": 30}, "op-1")
    assert now.incentive_applied
    assert await task_failures(handle) == 0


async def test_a_case_no_longer_open_does_nothing(time_skipping_env: WorkflowEnvironment, task_queue: str) -> None:
    fake = FakeChurn(offsets=[0, 2], status="RECOVERED")
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        _, handle = await open_case(time_skipping_env, task_queue)
        result = await handle.result()

    assert result.status == "RECOVERED"
    assert fake.decisions == [] and fake.sends == [] and fake.actions == [] and fake.cancellations == []


@pytest.mark.parametrize(
    ("stripe_status", "cancel_at_period_end", "ends_as", "cancels_at_period_end"),
    [
        ("active", False, "RECOVERED", None),  # paid meanwhile: nothing to cancel
        ("active", True, "TERMINATED", True),  # set to cancel: keeps the period already paid for
        ("canceled", False, "TERMINATED", False),  # already over at Stripe: cancelled now, as ever
    ],
)
async def test_stripe_is_read_again_before_the_membership_is_terminated(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    stripe_status: str,
    cancel_at_period_end: bool,
    ends_as: str,
    cancels_at_period_end: bool | None,
) -> None:
    fake = FakeChurn(
        offsets=[0],
        grace=1,
        subscription=SubscriptionState(
            subscription_id="sub_1",
            status=stripe_status,
            cancel_at_period_end=cancel_at_period_end,
            current_period_end=None,
        ),
    )
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        _, handle = await open_case(time_skipping_env, task_queue)
        result = await handle.result()

    assert len(fake.state_reads) == 1
    assert [c.at_period_end for _, c in fake.cancellations] == (
        [] if cancels_at_period_end is None else [cancels_at_period_end]
    )
    assert result.status == ends_as and fake.actions[-1].close_as == ends_as
    assert await task_failures(handle) == 0


async def test_a_nudge_the_outbox_defers_is_sent_under_the_same_key_when_the_hold_ends(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChurn(offsets=[1], grace=2, send_holds=[timedelta(hours=6)])
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        case_id, handle = await open_case(time_skipping_env, task_queue)
        result = await handle.result()

    start = await started(handle)
    key = f"nudge:{case_id}:1"
    assert [(days_after(start, [t]), m.idempotency_key) for t, m in fake.deferred_sends] == [([1], key)]
    assert [(days_after(start, [t]), m.idempotency_key) for t, m in fake.sends] == [([1.25], key)]
    held, sent = fake.actions[:2]
    assert (held.type, held.metadata["reason"], held.nudge_sent) == ("nudge_deferred", "quiet_hours", False)
    assert held.idempotency_key.startswith(f"{key}:deferred:")
    assert (sent.type, sent.idempotency_key, sent.nudge_sent) == ("nudge_sms", key, True)
    assert len(fake.decisions) == 1  # the company's rules were asked once; the outbox held the send
    assert (result.status, result.attempts) == ("TERMINATED", 1)


async def test_endings_that_name_no_company_end_nothing_and_a_deferred_nudge_still_goes_out(
    time_skipping_env: WorkflowEnvironment, task_queue: str, record_history
) -> None:
    """A `recovered` with no payload and a `cancelled` without the company are refused; the nudge
    the outbox holds goes out when the hold ends, and the case terminates after reading Stripe.
    Its history passes every point where the case's deprecated patches are called."""
    fake = FakeChurn(offsets=[1], grace=2, send_holds=[timedelta(hours=6)])
    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        case_id, handle = await open_case(time_skipping_env, task_queue)
        await handle.signal("recovered")
        await handle.signal("cancelled", {"actor_id": "agent-1"})
        result = await handle.result()
        await record_history(handle, "churn_case_refused_endings")

    key = f"nudge:{case_id}:1"
    assert [m.idempotency_key for _, m in fake.deferred_sends] == [key]
    assert [m.idempotency_key for _, m in fake.sends] == [key]
    assert fake.kinds() == ["nudge_deferred", "nudge_sms", "membership_terminated"]
    assert (len(fake.state_reads), len(fake.cancellations)) == (1, 1)
    assert (result.status, result.attempts) == ("TERMINATED", 1)
    assert await task_failures(handle) == 0


async def test_nudge_now_answers_sent_deferred_until_quiet_hours_end_or_capped(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChurn(offsets=[0, 10], daily_cap=3)

    async def nudge_now(actor: str, company_id: str = COMPANY) -> NudgeOutcome:
        return await handle.execute_update(
            "nudge_now", ManualNudge(actor_id=actor, company_id=company_id), result_type=NudgeOutcome
        )

    async with family_worker(time_skipping_env, task_queue, "churn", fake.activities()):
        case_id, handle = await open_case(time_skipping_env, task_queue)
        await eventually(lambda: _nudged(handle, 1))
        with pytest.raises(WorkflowUpdateFailedError) as foreign:
            await nudge_now("op-0", company_id="co-other")
        sent = await nudge_now("op-1")
        fake.quiet_until = [timedelta(hours=9)]
        deferred = await nudge_now("op-2")
        assert len(fake.sends) == 2  # not yet: it waits for quiet hours to end
        await time_skipping_env.sleep(timedelta(hours=10))
        await eventually(lambda: _sent(fake, 3))
        capped = await nudge_now("op-3")
        now = await case_status(handle)
        await handle.signal("recovered", {"company_id": COMPANY})
        await handle.result()

    assert "does not belong" in str(foreign.value.cause)
    assert (sent.outcome, sent.channel) == ("sent", "sms")
    quiet_end = fake.decisions[2].at + timedelta(hours=9)
    assert (deferred.outcome, deferred.reason, deferred.at) == ("deferred", "quiet_hours", quiet_end)
    assert (capped.outcome, capped.reason, capped.at) == ("capped", "daily_cap", fake.decisions[-1].at + DAY)
    assert [m.idempotency_key for _, m in fake.sends] == [
        f"nudge:{case_id}:1",
        f"manual:{case_id}:1",
        f"manual:{case_id}:2",
    ]
    assert fake.sends[2][0] >= deferred.at  # the deferred nudge went out when quiet hours ended, not before
    suppressed = next(a for a in fake.actions if a.type == "nudge_suppressed")
    assert (suppressed.idempotency_key, suppressed.actor_id) == (f"manual:{case_id}:3", "op-3")
    assert (now.attempts, now.manual_nudges, now.last_hold_back) == (3, 3, "daily_cap")
    assert await task_failures(handle) == 0


async def refusal(handle: WorkflowHandle, request: ApplyIncentive | dict) -> str:
    """Why the update's validator refused `request` (it must refuse)."""
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await handle.execute_update("apply_incentive", request)
    return str(failed.value.cause)


async def _asleep(handle: WorkflowHandle) -> bool:
    history = await handle.fetch_history()
    return any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in history.events)


async def _nudged(handle: WorkflowHandle, attempts: int) -> bool:
    return (await case_status(handle)).attempts >= attempts


async def _sent(fake: FakeChurn, sends: int) -> bool:
    return len(fake.sends) >= sends


async def _recorded(fake: FakeChurn, actions: int) -> bool:
    return len(fake.actions) >= actions
