"""The one error every layer understands: a request that cannot apply.

A service refuses (unknown order, a case of another company, a retailer that does not exist) by
raising a subclass; the CLI prints it as one line with exit 2, and an HTTP route answers it 4xx
with its `code` (issue #33: a caller's program branches on the code, people read the message).
"""

from __future__ import annotations


class Refused(Exception):
    """Bad input for the state the system is in: never retried, never a server error.

    `code` is stable and machine-readable: a snake_case name given where it is raised
    (`credit_paused`, `unknown_retailer`), the refusing activity's or workflow's error type
    (`NoSubscription`, `UnknownOrder`) when the refusal came from one, else the class's name. The
    API answers it snake-cased (`no_subscription`), with a `type` URI made from it; the codes a
    program may rely on are `workers.api.problems.CODES`.
    """

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or type(self).__name__


def failure_reason(error: BaseException | None) -> tuple[str, str | None]:
    """(message, error type) of the refusal under a workflow's, an update's or an activity's
    failure: Temporal wraps an activity's `ApplicationError` in an `ActivityError` ("Activity task
    failed") and a child's in a `ChildWorkflowError`; the reason is the innermost cause's.

    Duck-typed (`cause`, `message`, `type`) so schemas stay free of the SDK."""
    cause = error
    while cause is not None and type(cause).__name__ in ("ActivityError", "ChildWorkflowError", "NexusOperationError"):
        inner = getattr(cause, "cause", None)
        if inner is None:
            break
        cause = inner
    if cause is None:
        return "refused", None
    message = getattr(cause, "message", None) or str(cause)
    return message, getattr(cause, "type", None)
