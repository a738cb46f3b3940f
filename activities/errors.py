"""The one way an activity says "a retry could never fix this".

A non-retryable `ApplicationError` whose `type` names the refusal: Temporal stops retrying at
once, and a workflow branches on the type (`non_retryable_error_types`, `permanent_failure`).
"""

from __future__ import annotations

from typing import Any

from temporalio.exceptions import ApplicationError


def permanent(error_type: str, message: str, **details: Any) -> ApplicationError:
    """A permanent failure of kind `error_type`; `details` (if any) travel with it as one dict."""
    return ApplicationError(message, details or None, type=error_type, non_retryable=True)
