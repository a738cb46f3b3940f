"""Churn saver: one durable case per at-risk member (`churn-case/{case_id}`).

The case nudges the member at each of the company's day offsets from its opening (moved out of
quiet hours, held under the daily cap), stops when the member recovers or cancels, and after the
last offset plus the grace period terminates the membership (Stripe cancels the subscription),
after reading the subscription at Stripe once more: a member who paid meanwhile is RECOVERED,
one who set cancel-at-period-end keeps the period they paid for.
An operator can nudge by hand (`manual_nudge`), end the case (`recovered`, `cancelled`) or apply
an incentive (update `apply_incentive`); each names the case's company or is refused. Every action
is a `recovery_actions` row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from workflows._common import DB_TIMEOUT, accepted, db_retry
from workflows.messaging import company_weight, deliver, permanent_failure

with workflow.unsafe.imports_passed_through():
    from activities.churn.cases import ChurnActivities
    from schemas import search_attributes
    from schemas.churn import (
        CaseAction,
        CaseContext,
        CaseEnding,
        CaseProgress,
        CaseState,
        CaseStatus,
        ChurnCaseInput,
        DecideNudge,
        LoadCase,
        ManualNudge,
        NudgeDecision,
        NudgeOutcome,
        UnscopedApplyIncentive,
        UnscopedCaseEnding,
        UnscopedManualNudge,
    )
    from schemas.messaging import Channel, SendMessage, SendOutcome
    from schemas.payments import (
        CancelSubscription,
        ExtendSubscription,
        SubscriptionCancellation,
        SubscriptionPeriod,
        SubscriptionState,
        SubscriptionStateRequest,
    )

DB_RETRY = db_retry("UnknownCase")
STRIPE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=5), maximum_attempts=40
)
"""About 3 hours of retries: well inside the 24 hours Stripe keeps an idempotency key."""
# Stripe keeps an idempotency key 24 h: every retry of a keyed call must be over well before.
STRIPE_DEADLINE = timedelta(hours=23)
# Deprecated patches (docs/ARCHITECTURE.md, §4 "Patches"): cases whose history has their markers
# may still run, so each is called where its `patched` was; the old branches are gone.
COMPANY_REQUIRED = "churn-signals-name-the-company"
REREAD_BEFORE_CANCEL = "churn-reread-subscription-before-cancel"
DECIDE_LOCALLY = "churn-decide-nudge-as-local-activity"
NUDGE_NOW_ANSWERS_HELD = "churn-nudge-now-answers-held"
"""Live: `nudge_now` answers `deferred` when the outbox holds its message (the brake, the global
quiet window) and the send goes on in the background, out of the `_nudging` lock; a run that
answered after the hold replays its old path (issue #33)."""
LOAD_LOCALLY = "churn-load-case-as-local-activity"
"""Live: a run loads its case in a local activity (`_load`); a run that began before it replays
its activity task. Deprecate after 2027-09-04 (docs/ARCHITECTURE.md, "Patches")."""
SIGNALS_BEFORE_RUN = "churn-signals-before-run"
"""A signal in a run's first task (one sent while the case continued as new) is handled before
`run` starts: it was refused as "for another company" and the nudge lost. It is checked against
the input the run started with now; the patch keeps older runs that refused one replaying."""
# The daily cap counts the nudges of the member's local day, all within the last 26 hours.
CAP_WINDOW = timedelta(hours=26)
TEMPLATE_VERSION = 1
NUDGE_TEMPLATES = {
    "payment_failed": "churn_nudge_payment_failed",
    "cancel_at_period_end": "churn_nudge_cancel_scheduled",
    "manual": "churn_nudge_manual",
}
"""The nudge's text by what opened the case; a case loaded before the trigger was read (None) keeps
`churn_nudge`. Its link is made as the message goes out (`activities/messaging/links.py`)."""


@workflow.defn(sandboxed=False)
class ChurnCaseWorkflow:
    """Runs outside the sandbox: thousands of cases sleep for weeks, so most signals find their case
    evicted from the worker's cache, and the sandbox re-imports this module (and resolves every
    handler's type hints) for each replay: a large share of the task a manual nudge wakes. What the
    sandbox would catch is held by other means: workflow modules import only temporalio, schemas
    and activity references (tests/unit/test_import_rules.py), they keep no module state, and the
    replay tests replay recorded histories of the case's paths."""

    @workflow.init
    def __init__(self, request: ChurnCaseInput) -> None:
        self._started_with = request  # for handlers that run before `run` (see SIGNALS_BEFORE_RUN)
        self._input: ChurnCaseInput | None = None
        self._case: CaseContext | None = None
        self._progress = CaseProgress()
        self._state: CaseState = "OPEN"
        self._ending: tuple[CaseState, CaseEnding] | None = None
        self._incentive_applied = False
        self._sent_at: list[datetime] = []
        self._next_nudge_at: datetime | None = None
        self._last_hold_back: str | None = None
        # The last refused signal and why (issue #33): the sender was told "signal succeeded".
        # Names the signal and the reason only, never the payload (no personal data in workflows).
        self._last_refusal: tuple[str, datetime] | None = None
        # One nudge at a time: the daily cap is decided from the nudges before it.
        self._nudging = asyncio.Lock()
        self._deferred_nudges = 0  # manual nudges waiting out quiet hours (update `nudge_now`)
        self._later: set[asyncio.Task[Any]] = set()  # deferred manual nudges, in the background

    @workflow.run
    async def run(self, request: ChurnCaseInput) -> CaseStatus:
        self._input = request
        self._progress = request.carried or CaseProgress()
        self._sent_at = list(self._progress.sent_at)
        case = self._case = await self._load(LoadCase(case_id=request.case_id, company_id=request.company_id))
        self._incentive_applied = case.incentive_applied
        if case.status != "OPEN":
            self._state = case.status
            return self.status()
        self._set_state("OPEN")

        # The case's clock starts with its first run (moments after the row was opened); a
        # continued run keeps it. Offsets count from there; an ending signal interrupts any wait.
        opened = self._progress.opened_at = self._progress.opened_at or workflow.info().start_time
        while self._progress.next_offset < len(case.offsets_days):
            due = opened + timedelta(days=case.offsets_days[self._progress.next_offset])
            if await self._ended_before(due):
                return await self._close()
            await self._system_nudge()
            self._progress.next_offset += 1

        terminate_at = opened + timedelta(
            days=(case.offsets_days[-1] if case.offsets_days else 0) + case.grace_period_days
        )
        if await self._ended_before(terminate_at):
            return await self._close()
        await self._terminate_membership()
        return await self._close()

    # --- people: signals, update, query ---------------------------------------------------------

    # A payload that does not decode into the parameter's type is logged and dropped by the SDK;
    # `accepted` catches the shapes that reach a handler undecoded. A bad signal never fails a task.

    @workflow.signal
    async def manual_nudge(self, nudge: UnscopedManualNudge | None = None) -> None:
        """`{"actor_id": ..., "company_id": ..., "channel"?: "whatsapp"|"sms", "note"?: ...}`: nudge now,
        under the company's rules."""
        nudge = accepted(UnscopedManualNudge, nudge, signal="manual_nudge", subject=self._subject)
        if nudge is None:
            self._refuse("manual_nudge", "no payload")
            return
        if not self._own_company("manual_nudge", nudge.company_id):
            return
        if self._state != "OPEN":
            self._refuse("manual_nudge", f"the case is {self._state}")
            return
        await workflow.wait_condition(lambda: self._case is not None)
        self._progress.manual_nudges += 1
        number = self._progress.manual_nudges
        await self._nudge(
            f"manual:{self._case_id}:{number}", manual=True, channel=nudge.channel, actor_id=nudge.actor_id
        )

    @workflow.signal
    def recovered(self, ending: UnscopedCaseEnding | None = None) -> None:
        """`{"company_id": ..., "actor_id"?: ...}`: the member paid or resumed; the case ends RECOVERED."""
        self._end("recovered", "RECOVERED", ending)

    @workflow.signal
    def cancelled(self, ending: UnscopedCaseEnding | None = None) -> None:
        """`{"company_id": ..., "actor_id"?: ...}`: the member cancelled; the case ends CANCELLED."""
        self._end("cancelled", "CANCELLED", ending)

    @workflow.update
    async def apply_incentive(self, request: UnscopedApplyIncentive) -> datetime | None:
        """Extend the subscription by `days` (once per case); returns the new period end."""
        # An update can arrive before the case is loaded: wait for it, then look again at what
        # the load said (an incentive applied in an earlier run, a case that is no longer open).
        await workflow.wait_condition(lambda: self._case is not None)
        assert self._case is not None
        if self._incentive_applied or self._state != "OPEN" or self._ending is not None:
            raise ApplicationError(
                f"case {self._case_id} is not open or already has its incentive", type="CaseNotOpen", non_retryable=True
            )
        self._incentive_applied = True  # at once: a second update while Stripe answers is refused
        try:
            period: SubscriptionPeriod = await workflow.execute_activity(
                "extend_subscription",
                ExtendSubscription(
                    membership_id=self._case.membership_id,
                    days=request.days,
                    idempotency_key=f"incentive:{self._case_id}",
                ),
                result_type=SubscriptionPeriod,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=STRIPE_DEADLINE,
                retry_policy=STRIPE_RETRY,
                summary=f"extend the subscription by {request.days} days",
            )
        except ActivityError:
            self._incentive_applied = False  # Stripe refused for good: the operator may try again
            raise
        await self._record(
            "incentive_applied",
            f"incentive:{self._case_id}",
            actor_id=request.actor_id,
            metadata={"days": request.days},
            incentive_applied=True,
        )
        return period.current_period_end

    @apply_incentive.validator
    def _validate_incentive(self, request: UnscopedApplyIncentive) -> None:
        """Runs only when an update arrives (never on replay), so it may be stricter than history."""
        if not request.company_id:
            raise ValueError("company_id is required")
        if request.company_id != self._started_with.company_id:
            raise ValueError(f"case {self._case_id} does not belong to company {request.company_id}")
        if not 1 <= request.days <= 90:
            raise ValueError(f"days must be between 1 and 90 (got {request.days})")
        if self._state != "OPEN":  # (the case may still be loading: the handler waits for it)
            raise ValueError(f"case {self._case_id} is not open ({self._state})")
        if self._ending is not None:
            raise ValueError(f"case {self._case_id} has ended ({self._ending[0]})")
        if self._incentive_applied:
            raise ValueError(f"an incentive was already applied to case {self._case_id}")

    @workflow.update
    async def nudge_now(self, request: ManualNudge) -> NudgeOutcome:
        """A manual nudge that answers what became of it (beside the fire-and-forget signal).

        Sent now; or deferred by quiet hours, and then sent when they end under the same key
        (the answer says when); or capped by the company's daily cap (now or never, as the signal).
        """
        await workflow.wait_condition(lambda: self._case is not None)
        self._progress.manual_nudges += 1
        key = f"manual:{self._case_id}:{self._progress.manual_nudges}"
        async with self._nudging:
            if self._ending is not None:
                return NudgeOutcome(outcome="suppressed", reason="case_ended")
            decision = await self._decide(request.channel)
            if decision.allowed and not workflow.patched(NUDGE_NOW_ANSWERS_HELD):
                return await self._send(key, decision, manual=True, actor_id=request.actor_id)
            if decision.allowed:
                return await self._send_or_answer_held(key, decision, request)
            if decision.held_back != "quiet_hours" or decision.retry_at is None:
                await self._record_hold_back(key, decision, request.actor_id)
                return NudgeOutcome(
                    outcome="capped", channel=decision.channel, reason=decision.held_back, at=decision.retry_at
                )
            await self._record_hold_back(f"{key}:held:{decision.retry_at:%Y%m%d%H%M}", decision, request.actor_id)
        self._deferred_nudges += 1
        later = asyncio.create_task(self._nudge_later(key, decision.retry_at, request))
        self._later.add(later)
        later.add_done_callback(self._later.discard)
        return NudgeOutcome(outcome="deferred", channel=decision.channel, reason="quiet_hours", at=decision.retry_at)

    async def _send_or_answer_held(self, key: str, decision: NudgeDecision, request: ManualNudge) -> NudgeOutcome:
        """The send's outcome; or, when the outbox defers it (the brake, the global quiet window),
        `deferred` with when it is tried again, at once: the send goes on in the background and
        the caller leaves the `_nudging` lock, so the other nudges of the case do not queue behind
        a message that may wait for hours (issue #33)."""
        held: list[SendOutcome] = []
        sending = asyncio.create_task(
            self._send(key, decision, manual=True, actor_id=request.actor_id, on_held=held.append)
        )
        await workflow.wait_condition(lambda: sending.done() or bool(held))
        if sending.done():
            return sending.result()
        self._deferred_nudges += 1  # no continue-as-new while it waits: a new run would not know of it
        self._later.add(sending)

        def done(task: asyncio.Task[NudgeOutcome]) -> None:
            self._deferred_nudges -= 1
            self._later.discard(task)

        sending.add_done_callback(done)
        return NudgeOutcome(outcome="deferred", channel=decision.channel, reason=held[0].reason, at=held[0].retry_at)

    @nudge_now.validator
    def _validate_nudge(self, request: ManualNudge) -> None:
        if self._state != "OPEN" or self._ending is not None:
            raise ValueError(f"case {self._case_id} is not open ({self._state})")
        if request.company_id != self._started_with.company_id:
            raise ValueError(f"case {self._case_id} does not belong to company {request.company_id}")

    async def _nudge_later(self, key: str, at: datetime, request: ManualNudge) -> None:
        """A deferred manual nudge: at the end of quiet hours, unless the case ended first."""
        try:
            try:
                await workflow.wait_condition(
                    lambda: self._ending is not None,
                    timeout=at - workflow.now(),
                    timeout_summary=f"deferred manual nudge until {at:%Y-%m-%d %H:%M} UTC",
                )
            except TimeoutError:
                pass
            async with self._nudging:
                if self._ending is not None:
                    return
                decision = await self._decide(request.channel)
                if decision.allowed:
                    await self._send(key, decision, manual=True, actor_id=request.actor_id)
                else:  # held again (the cap filled meanwhile): recorded, not retried
                    await self._record_hold_back(f"{key}:held-again", decision, request.actor_id)
        finally:
            self._deferred_nudges -= 1

    @workflow.query
    def status(self) -> CaseStatus:
        return CaseStatus(
            case_id=self._case_id,
            company_id=self._started_with.company_id,
            status=self._state,
            attempts=self._progress.attempts,
            manual_nudges=self._progress.manual_nudges,
            next_nudge_at=self._next_nudge_at if self._state == "OPEN" else None,
            incentive_applied=self._incentive_applied,
            last_hold_back=self._last_hold_back,
            last_refusal=self._last_refusal[0] if self._last_refusal else None,
            last_refusal_at=self._last_refusal[1] if self._last_refusal else None,
        )

    # --- the steps -------------------------------------------------------------------------------

    async def _system_nudge(self) -> None:
        """The offset's nudge: waits out quiet hours and the daily cap (each wait is an action row)."""
        key = f"nudge:{self._case_id}:{self._progress.next_offset + 1}"
        while self._ending is None:
            decision = await self._nudge(key, manual=False)
            if decision is None or decision.allowed or decision.retry_at is None:
                return
            if await self._ended_before(decision.retry_at):
                return

    async def _nudge(
        self, key: str, *, manual: bool, channel: Channel | None = None, actor_id: str | None = None
    ) -> NudgeDecision | None:
        """Decide and send under one lock: the daily cap counts the nudges before this one."""
        async with self._nudging:
            if self._ending is not None:
                return None
            decision = await self._decide(channel)
            if not decision.allowed:  # the row says why; a manual nudge is now or never
                hold_key = key if manual else f"{key}:held:{decision.retry_at:%Y%m%d%H%M}"
                await self._record_hold_back(hold_key, decision, actor_id)
            else:
                await self._send(key, decision, manual=manual, actor_id=actor_id)
            return decision

    async def _send(
        self,
        key: str,
        decision: NudgeDecision,
        *,
        manual: bool,
        actor_id: str | None,
        on_held: Callable[[SendOutcome], None] | None = None,
    ) -> NudgeOutcome:
        """Send the nudge; a deferral is recorded (and told to `on_held`) before its hold."""
        assert self._case is not None and self._input is not None
        message = SendMessage(
            idempotency_key=key,
            recipient_type="member",
            recipient_id=str(self._case.membership_id),
            template=NUDGE_TEMPLATES.get(self._case.trigger or "", "churn_nudge"),
            template_version=TEMPLATE_VERSION,
            params={"manage_link": self._input.manage_link},
            channel=decision.channel,
        )

        async def held(outcome: SendOutcome) -> None:  # the outbox deferred it: it goes out when the hold ends
            await self._record(
                "nudge_deferred",
                f"{key}:deferred:{outcome.retry_at:%Y%m%d%H%M}",
                actor_id=actor_id,
                metadata={
                    "manual": manual,
                    "channel": decision.channel,
                    "reason": outcome.reason,
                    "retry_at": outcome.retry_at,
                },
            )
            if on_held is not None:
                on_held(outcome)

        try:
            outcome = await deliver(
                message,
                kind="manual_nudge" if manual else "churn_nudge",
                tenant=self._input.company_id,
                weight=None if decision.open_cases is None else company_weight(decision.open_cases),
                task_queue=self._input.messaging_task_queue,
                on_deferred=held,
            )
        except ActivityError as error:
            workflow.logger.warning("case %s: nudge not sent (%s)", self._case_id, permanent_failure(error) or "error")
            await self._record(
                "nudge_suppressed",
                key,
                actor_id=actor_id,
                metadata={"manual": manual, "channel": decision.channel, "reason": permanent_failure(error)},
            )
            return NudgeOutcome(
                outcome="suppressed", channel=decision.channel, reason=permanent_failure(error) or "error"
            )
        if outcome.status != "sent":
            await self._record(
                f"nudge_{'deferred' if outcome.status == 'deferred' else 'suppressed'}",
                key,
                actor_id=actor_id,
                metadata={"manual": manual, "channel": decision.channel, "reason": outcome.reason},
            )
            return NudgeOutcome(
                outcome="deferred" if outcome.status == "deferred" else "suppressed",
                channel=decision.channel,
                reason=outcome.reason,
                at=outcome.retry_at,
            )
        self._progress.attempts += 1
        now = workflow.now()  # every send of the member's local day, whatever the cap (not the last 21)
        self._sent_at = [*(t for t in self._sent_at if t > now - CAP_WINDOW), now]
        channel = outcome.channel or decision.channel
        await self._record(
            f"nudge_{channel}",
            key,
            actor_id=actor_id,
            nudge_sent=True,
            metadata={
                "attempt_number": self._progress.attempts,
                "channel": channel,
                "template": message.template,
                "template_version": TEMPLATE_VERSION,
                "manual": manual,
            },
        )
        workflow.set_current_details(self._details())
        workflow.metric_meter().create_counter("nudges_sent_total", "Churn nudges sent, by manual or system").add(
            1, {"manual": str(manual).lower()}
        )
        return NudgeOutcome(outcome="sent", channel=channel)

    async def _load(self, request: LoadCase) -> CaseContext:
        """A local activity (issue #38): the case's opening is then one workflow task (read the
        case, set its search attributes, start its first timer) instead of two around an activity
        task. Opening 10,000 cases at once, a case was evicted from the worker's cache between its
        two tasks and its second replayed from a fetched history: the server's CPU per case opened
        grew 1.9x from 1,000 cases to 10,000 (docs/BENCHMARKS.md, "Scale curve")."""
        if workflow.patched(LOAD_LOCALLY):
            return await workflow.execute_local_activity_method(
                ChurnActivities.load_case, request, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY
            )
        return await workflow.execute_activity_method(
            ChurnActivities.load_case, request, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY
        )

    async def _decide(self, channel: Channel | None) -> NudgeDecision:
        """A local activity: one short read whose answer decides the send scheduled in the same
        workflow task, instead of a task round trip of its own between a nudge and its message."""
        assert self._input is not None
        request = DecideNudge(
            case_id=self._case_id,
            company_id=self._input.company_id,
            at=workflow.now(),
            channel=channel,
            sent_before=self._sent_at,
        )
        workflow.deprecate_patch(DECIDE_LOCALLY)
        return await workflow.execute_local_activity_method(
            ChurnActivities.decide_nudge,
            request,
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
        )

    async def _record_hold_back(self, key: str, decision: NudgeDecision, actor_id: str | None) -> None:
        self._last_hold_back = decision.held_back
        await self._record(
            "nudge_deferred" if decision.held_back == "quiet_hours" else "nudge_suppressed",
            key,
            actor_id=actor_id,
            metadata={
                "held_back": decision.held_back,
                "retry_at": decision.retry_at,
                "manual": actor_id is not None,
                "channel": decision.channel,
            },
        )

    async def _terminate_membership(self) -> None:
        """Irreversible, so Stripe is asked first: the event that opened the case may be stale."""
        assert self._case is not None and self._input is not None
        workflow.deprecate_patch(REREAD_BEFORE_CANCEL)
        state = await self._subscription_state()
        if state is not None and state.paying:
            workflow.logger.info("case %s: the member is paying again, nothing to cancel", self._case_id)
            self._ending = ("RECOVERED", CaseEnding(company_id=self._input.company_id))
            return
        at_period_end = state is not None and state.cancel_at_period_end and not state.ended
        await workflow.execute_activity(
            "cancel_subscription",
            CancelSubscription(
                membership_id=self._case.membership_id,
                idempotency_key=f"terminate:{self._case_id}",
                at_period_end=at_period_end,
            ),
            result_type=SubscriptionCancellation,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=STRIPE_DEADLINE,
            retry_policy=STRIPE_RETRY,
            summary="cancel the subscription at its period end"
            if at_period_end
            else "cancel the subscription: the grace period is over",
        )
        self._ending = ("TERMINATED", CaseEnding(company_id=self._input.company_id))

    async def _subscription_state(self) -> SubscriptionState | None:
        """The subscription now; None when the membership has none at Stripe (cancel as before)."""
        assert self._case is not None
        try:
            return await workflow.execute_activity(
                "subscription_state",
                SubscriptionStateRequest(membership_id=self._case.membership_id),
                result_type=SubscriptionState,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=STRIPE_DEADLINE,
                retry_policy=STRIPE_RETRY,
                summary="read the subscription before cancelling it",
            )
        except ActivityError as error:
            workflow.logger.warning("case %s: subscription not read (%s)", self._case_id, error.cause)
            return None

    async def _close(self) -> CaseStatus:
        assert self._ending is not None
        state, ending = self._ending
        kind = {"RECOVERED": "case_recovered", "CANCELLED": "case_cancelled", "TERMINATED": "membership_terminated"}[
            state
        ]
        await self._record(kind, f"{kind}:{self._case_id}", actor_id=ending.actor_id, close_as=state)
        self._set_state(state)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    async def _record(
        self,
        kind: str,
        key: str,
        *,
        actor_id: str | None = None,
        metadata: dict | None = None,
        nudge_sent: bool = False,
        close_as: CaseState | None = None,
        incentive_applied: bool = False,
    ) -> None:
        assert self._input is not None
        await workflow.execute_activity_method(
            ChurnActivities.record_action,
            CaseAction(
                case_id=self._case_id,
                company_id=self._input.company_id,
                type=kind,
                idempotency_key=key,
                actor_id=actor_id,
                metadata=metadata or {},
                nudge_sent=nudge_sent,
                close_as=close_as,
                incentive_applied=incentive_applied,
            ),
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
            summary=kind,
        )

    async def _ended_before(self, deadline: datetime) -> bool:
        """Sleep until `deadline` unless the case ends first (True). A history grown long by
        manual nudges continues as new from here, with the case's progress."""
        self._next_nudge_at = deadline
        while (remaining := deadline - workflow.now()) > timedelta(0):
            try:
                await workflow.wait_condition(
                    lambda: (
                        self._ending is not None
                        or (workflow.info().is_continue_as_new_suggested() and not self._deferred_nudges)
                    ),
                    timeout=remaining,
                    timeout_summary=f"until {deadline:%Y-%m-%d %H:%M} UTC",
                )
            except TimeoutError:
                break
            if self._ending is not None:
                return True
            await workflow.wait_condition(workflow.all_handlers_finished)
            assert self._input is not None
            self._progress.sent_at = self._sent_at
            workflow.continue_as_new(self._input.model_copy(update={"carried": self._progress}))
        return self._ending is not None

    # --- helpers ---------------------------------------------------------------------------------

    @property
    def _case_id(self) -> int:
        return self._started_with.case_id

    @property
    def _subject(self) -> str:
        return f"case {self._case_id}"

    def _end(self, signal: str, state: CaseState, ending: UnscopedCaseEnding | None) -> None:
        if ending is None:
            workflow.deprecate_patch(COMPANY_REQUIRED)
        ending = accepted(UnscopedCaseEnding, ending, signal=signal, subject=self._subject)
        if ending is None:
            self._refuse(signal, "no payload")
            return
        if not self._own_company(signal, ending.company_id):
            return
        if self._ending is not None:
            self._refuse(signal, f"the case has already ended ({self._ending[0]})")
            return
        self._ending = (state, ending)

    def _own_company(self, signal: str, company_id: str | None) -> bool:
        """The signal names this case's company."""
        case = self._input or (self._started_with if workflow.patched(SIGNALS_BEFORE_RUN) else None)
        if case is not None and company_id == case.company_id:
            return True
        if company_id is None:
            workflow.deprecate_patch(COMPANY_REQUIRED)
        why = "without a company" if company_id is None else "for another company"
        workflow.logger.warning("case %s: %s %s refused", self._case_id, signal, why)
        self._refuse(signal, why)
        return False

    def _refuse(self, signal: str, why: str) -> None:
        """Leave a refused signal's trace where an operator looks: the `status` query and the
        workflow's current details in the UI. Neither is a command: replay is unchanged."""
        self._last_refusal = (f"{signal} refused: {why}", workflow.now())
        workflow.set_current_details(self._details())

    def _set_state(self, state: CaseState) -> None:
        self._state = state
        assert self._input is not None
        workflow.upsert_search_attributes(
            [
                search_attributes.CASE_STATUS.value_set(state),
                search_attributes.COMPANY_ID.value_set(self._input.company_id),
            ]
        )
        workflow.set_current_details(self._details())

    def _details(self) -> str:
        progress = self._progress
        details = f"case {self._case_id}: {self._state}, {progress.attempts} nudges ({progress.manual_nudges} manual)"
        if self._last_refusal is not None:
            refusal, at = self._last_refusal
            details += f"\nlast refused signal: {refusal} at {at:%Y-%m-%d %H:%M:%S} UTC"
        return details
