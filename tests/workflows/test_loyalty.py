"""Loyalty reconciliation's decisions in seconds: retries, review, people's signals, refunds; the sweep."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from schemas.loyalty import (
    ApplyQueuedPoints,
    LoyaltyAuditRequest,
    LoyaltyAuditResult,
    LoyaltySweepPage,
    LoyaltySweepPageResult,
    LoyaltySweepRequest,
    LoyaltySweepResult,
    MarkNeedsReview,
    PointsApplication,
    QueueApplyResult,
    QueueItem,
    QueueStatus,
    ReconcileRequest,
    ReconcileResult,
    ReconcileStatus,
    ReopenItem,
    ResolveItem,
)
from schemas.payments import PaymentIntentState, PaymentIntentStatus
from tests.workflows.harness import eventually, family_worker, started_at, task_failures
from workflows.loyalty import BACKOFF, GIVE_UP_AFTER

CUSTOMER = 31


def busy() -> ApplicationError:
    """A retryable failure: the customer's row is locked by a checkout."""
    return ApplicationError("could not obtain the row lock", type="LockNotAvailable")


def insufficient() -> ApplicationError:
    return ApplicationError(
        "customer 31 has 10 points, 500 were to be redeemed", type="InsufficientPoints", non_retryable=True
    )


def intent(status: str = "succeeded", *, refunded: bool = False) -> PaymentIntentState:
    return PaymentIntentState(
        id="pi_123",
        status=status,
        amount=Decimal("40.00"),
        amount_refunded=Decimal("40.00") if refunded else Decimal("0"),
        currency="usd",
        refunded=refunded,
        fully_refunded=refunded,
    )


@dataclass
class FakeLoyalty:
    """The queue activities and Stripe's PaymentIntent lookup, by their registered names.

    `apply_failures` are raised by the first attempts, in order; after them an attempt raises
    `keep_failing` if set, else applies the points.
    """

    item_id: int
    status: QueueStatus = "PENDING"
    payment_intent_id: str | None = None
    apply_failures: list[ApplicationError] = field(default_factory=list)
    keep_failing: ApplicationError | None = None
    intents: list[PaymentIntentState] = field(default_factory=list)
    applies: list[tuple[datetime, int]] = field(default_factory=list)
    """(scheduled, attempt) of every apply attempt."""
    checks: list[datetime] = field(default_factory=list)
    reviews: list[MarkNeedsReview] = field(default_factory=list)
    resolutions: list[ResolveItem] = field(default_factory=list)
    reopened: list[ReopenItem] = field(default_factory=list)

    def item(self, status: QueueStatus, **changes: object) -> QueueItem:
        return QueueItem(
            item_id=self.item_id,
            customer_id=CUSTOMER,
            order_id="ord-9",
            payment_intent_id=self.payment_intent_id,
            points_redeemed=500,
            order_total=Decimal("40.00"),
            status=status,
            attempts=len(self.applies),
            **changes,  # type: ignore[arg-type]
        )

    @activity.defn(name="loyalty_load_item")
    async def load_item(self, request: ApplyQueuedPoints) -> QueueItem:
        return self.item(self.status)

    @activity.defn(name="loyalty_apply_queued_points")
    async def apply_queued_points(self, request: ApplyQueuedPoints) -> QueueApplyResult:
        self.applies.append((started_at(), activity.info().attempt))
        if self.apply_failures:
            raise self.apply_failures.pop(0)
        if self.keep_failing:
            raise self.keep_failing
        application = PointsApplication(
            customer_id=CUSTOMER,
            order_id="ord-9",
            outcome="applied",
            points_redeemed=500,
            points_earned=40,
            balance_before=600,
            balance_after=140,
        )
        return QueueApplyResult(
            item=self.item("RESOLVED", resolution="applied", resolved_by="system"), application=application
        )

    @activity.defn(name="payment_intent_status")
    async def payment_intent_status(self, request: PaymentIntentStatus) -> PaymentIntentState:
        assert request.id == self.payment_intent_id
        self.checks.append(started_at())
        return self.intents.pop(0)

    @activity.defn(name="loyalty_mark_needs_review")
    async def mark_needs_review(self, request: MarkNeedsReview) -> QueueItem:
        self.reviews.append(request)
        return self.item("NEEDS_REVIEW")

    @activity.defn(name="loyalty_resolve_item")
    async def resolve_item(self, request: ResolveItem) -> QueueItem:
        self.resolutions.append(request)
        return self.item("RESOLVED", resolution=request.resolution, resolved_by=request.resolved_by)

    @activity.defn(name="loyalty_reopen_item")
    async def reopen_item(self, request: ReopenItem) -> QueueItem:
        self.reopened.append(request)
        return self.item("PENDING")

    def activities(self) -> list:
        return [
            self.load_item,
            self.apply_queued_points,
            self.payment_intent_status,
            self.mark_needs_review,
            self.resolve_item,
            self.reopen_item,
        ]


async def reconcile(env: WorkflowEnvironment, task_queue: str, fake: FakeLoyalty) -> WorkflowHandle:
    return await env.client.start_workflow(
        "LoyaltyReconciliationWorkflow",
        ReconcileRequest(item_id=fake.item_id),
        id=f"loyalty-reconcile/{fake.item_id}",
        task_queue=task_queue,
        result_type=ReconcileResult,
    )


async def status(handle: WorkflowHandle) -> ReconcileStatus:
    return await handle.query("status", result_type=ReconcileStatus)


async def waiting_for_review(handle: WorkflowHandle) -> bool:
    return (await status(handle)).phase == "waiting for review"


def new_item_id() -> int:
    return random.randint(1, 2**31)


async def test_retryable_failures_are_retried_then_a_refusal_goes_to_review_and_retry_now_applies(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeLoyalty(item_id=new_item_id(), apply_failures=[busy(), busy(), insufficient()])
    async with family_worker(time_skipping_env, task_queue, "loyalty", fake.activities()):
        handle = await reconcile(time_skipping_env, task_queue, fake)
        await time_skipping_env.sleep(timedelta(minutes=10))  # the back-off runs on the skipped clock
        await eventually(lambda: waiting_for_review(handle))
        review = await status(handle)
        await handle.signal("retry_now", {"actor_id": "admin-1"})
        result = await handle.result()

    # Two lock time-outs retried by the policy (1 min, then 2 min back-off), then the refusal: no 4th try.
    first, second, third = fake.applies[:3]
    assert [attempt for _, attempt in fake.applies[:3]] == [1, 2, 3]
    assert second[0] - first[0] >= timedelta(minutes=1) and third[0] - second[0] >= timedelta(minutes=2)
    assert [r.reason.split(":")[0] for r in fake.reviews] == ["InsufficientPoints"]
    assert (review.status, review.reason) == ("NEEDS_REVIEW", fake.reviews[0].reason)
    assert [r.actor_id for r in fake.reopened] == ["admin-1"]
    assert len(fake.applies) == 4  # retry_now: one fresh try, which applied
    assert (result.status, result.resolution, result.points_earned, result.points_redeemed) == (
        "RESOLVED",
        "applied",
        40,
        500,
    )
    assert await task_failures(handle) == 0


async def test_an_item_that_never_applies_goes_to_review_when_its_attempts_run_out(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeLoyalty(item_id=new_item_id(), keep_failing=busy())
    async with family_worker(time_skipping_env, task_queue, "loyalty", fake.activities()):
        handle = await reconcile(time_skipping_env, task_queue, fake)
        await time_skipping_env.sleep(timedelta(hours=7))  # 12 attempts, the back-off capped at 1 h: about 6 h
        await eventually(lambda: waiting_for_review(handle))
        review = await status(handle)
        await handle.signal("resolve_manually", {"actor_id": "admin-1", "note": "applied at the till"})
        result = await handle.result()

    assert [attempt for _, attempt in fake.applies] == list(range(1, BACKOFF.maximum_attempts + 1))  # then no more
    [marked] = fake.reviews
    assert marked.reason.startswith("GaveUp: no success in 12 attempts") and "LockNotAvailable" in marked.reason
    assert review.reason == marked.reason
    tried_for = fake.applies[-1][0] - fake.applies[0][0]
    assert timedelta(hours=5) < tried_for < GIVE_UP_AFTER  # the attempts ran out well inside the 24-hour window
    assert max(b[0] - a[0] for a, b in zip(fake.applies, fake.applies[1:], strict=False)) <= timedelta(
        hours=1, seconds=5
    )  # capped back-off
    assert result.resolution == "manual" and result.resolved_by == "admin-1"


@pytest.mark.parametrize(
    ("signal", "payload"),
    [
        ("retry_now", {}),
        ("retry_now", {"actor_id": "admin-1", "force": True}),
        ("resolve_manually", {"actor_id": "admin-1"}),
        ("resolve_manually", {"actor_id": " ", "note": "x"}),
        ("resolve_manually", "resolve it"),
    ],
)
async def test_a_malformed_signal_is_dropped_and_the_item_keeps_waiting_for_review(
    time_skipping_env: WorkflowEnvironment, task_queue: str, signal: str, payload: object
) -> None:
    fake = FakeLoyalty(item_id=new_item_id(), status="NEEDS_REVIEW")
    async with family_worker(time_skipping_env, task_queue, "loyalty", fake.activities()):
        handle = await reconcile(time_skipping_env, task_queue, fake)
        await eventually(lambda: waiting_for_review(handle))
        await handle.signal(signal, payload)
        await time_skipping_env.sleep(timedelta(minutes=10))
        still = await status(handle)
        assert await task_failures(handle) == 0
        await handle.signal("resolve_manually", {"actor_id": "admin-2", "note": "points given by phone"})
        result = await handle.result()

    assert (still.status, still.phase) == ("NEEDS_REVIEW", "waiting for review")
    assert fake.reopened == [] and fake.applies == []
    assert fake.resolutions == [
        ResolveItem(item_id=fake.item_id, resolution="manual", resolved_by="admin-2", note="points given by phone")
    ]
    assert (result.status, result.resolved_by) == ("RESOLVED", "admin-2")


async def test_retry_now_cuts_a_back_off_short_with_a_fresh_try(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeLoyalty(item_id=new_item_id(), keep_failing=busy())
    async with family_worker(time_skipping_env, task_queue, "loyalty", fake.activities()):
        handle = await reconcile(time_skipping_env, task_queue, fake)
        await time_skipping_env.sleep(timedelta(minutes=5))  # tries at 0, 1 and 3 min; the next is due at 7
        fake.keep_failing = None
        await handle.signal("retry_now", {"actor_id": "admin-1"})
        result = await handle.result()

    assert [attempt for _, attempt in fake.applies] == [1, 2, 3, 1]  # a new activity, not the 4th retry
    assert fake.reopened == [] and fake.reviews == []  # still PENDING: nothing to reopen
    assert result.resolution == "applied"


async def test_a_refunded_payment_resolves_the_item_without_points(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeLoyalty(item_id=new_item_id(), payment_intent_id="pi_123", intents=[intent(refunded=True)])
    async with family_worker(time_skipping_env, task_queue, "loyalty", fake.activities()):
        result = await (await reconcile(time_skipping_env, task_queue, fake)).result()

    assert fake.applies == []
    assert [r.resolution for r in fake.resolutions] == ["refunded"]
    assert (result.status, result.resolution, result.points_earned) == ("RESOLVED", "refunded", None)


async def test_a_processing_payment_is_checked_again_before_points_are_applied(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeLoyalty(item_id=new_item_id(), payment_intent_id="pi_123", intents=[intent("processing"), intent()])
    async with family_worker(time_skipping_env, task_queue, "loyalty", fake.activities()):
        result = await (await reconcile(time_skipping_env, task_queue, fake)).result()

    assert fake.checks[1] - fake.checks[0] >= timedelta(minutes=15)
    assert fake.applies[0][0] >= fake.checks[1]
    assert result.resolution == "applied"


async def test_a_payment_that_did_not_succeed_goes_to_review_without_points(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeLoyalty(item_id=new_item_id(), payment_intent_id="pi_123", intents=[intent("requires_payment_method")])
    async with family_worker(time_skipping_env, task_queue, "loyalty", fake.activities()):
        handle = await reconcile(time_skipping_env, task_queue, fake)
        await eventually(lambda: waiting_for_review(handle))
        await handle.signal("resolve_manually", {"actor_id": "admin-1", "note": "customer paid cash"})
        await handle.result()

    assert fake.applies == []
    assert [r.reason for r in fake.reviews] == ["PaymentNotSucceeded: PaymentIntent pi_123 is requires_payment_method"]


# --------------------------------------------------------------------------- the sweep and the audit


@dataclass
class FakeSweep:
    pages: list[LoyaltySweepPageResult]
    asked: list[LoyaltySweepPage] = field(default_factory=list)

    @activity.defn(name="loyalty_start_missing_reconciliations")
    async def start_missing_reconciliations(self, page: LoyaltySweepPage) -> LoyaltySweepPageResult:
        self.asked.append(page)
        return self.pages.pop(0)

    @activity.defn(name="loyalty_audit_balances")
    async def audit(self, request: LoyaltyAuditRequest) -> LoyaltyAuditResult:
        return LoyaltyAuditResult(
            audit_date=request.audit_date or date(2026, 11, 23),
            checked_at=started_at(),
            customers_checked=12,
            discrepancy_count=0,
            discrepancies=[],
        )


async def test_the_sweep_pages_until_a_short_page_and_totals_what_it_started(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeSweep(
        pages=[
            LoyaltySweepPageResult(after_item_id=8, rows=2, started=1, already_running=1),
            LoyaltySweepPageResult(after_item_id=9, rows=1, started=1, already_running=0),
        ]
    )
    async with family_worker(
        time_skipping_env, task_queue, "loyalty", [fake.start_missing_reconciliations, fake.audit]
    ):
        result = await time_skipping_env.client.execute_workflow(
            "LoyaltyReconcileSweepWorkflow",
            LoyaltySweepRequest(page_size=2, max_concurrent_starts=3),
            id=f"loyalty-reconcile-sweep/{uuid.uuid4().hex}",
            task_queue=task_queue,
            result_type=LoyaltySweepResult,
        )
        audit = await time_skipping_env.client.execute_workflow(
            "LoyaltyIntegrityAuditWorkflow",
            LoyaltyAuditRequest(audit_date=date(2026, 11, 22)),
            id=f"loyalty-audit/{uuid.uuid4().hex}",
            task_queue=task_queue,
            result_type=LoyaltyAuditResult,
        )

    assert [(p.after_item_id, p.page_size, p.max_concurrent_starts) for p in fake.asked] == [(0, 2, 3), (8, 2, 3)]
    assert result == LoyaltySweepResult(pending_seen=3, started=2, already_running=1)
    assert (audit.audit_date, audit.customers_checked) == (date(2026, 11, 22), 12)
