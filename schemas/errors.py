"""The one error every layer understands: a request that cannot apply.

A service refuses (unknown order, a case of another company, a retailer that does not exist) by
raising a subclass; the CLI prints it as one line with exit 2, and an HTTP route answers it 4xx.
"""

from __future__ import annotations


class Refused(Exception):
    """Bad input for the state the system is in: never retried, never a server error."""
