"""The directory (issue #34): the business's own rows in — retailers, credit accounts, orders,
companies, members, customers — by the business's own ids, through one writer
(`services/directory.py`). No workflow, activity or schedule of its own: a change that needs one
(a limit's guardrails re-check) starts the credit family's."""

from __future__ import annotations

from workers.families.registry import Family, routes_of

FAMILY = Family(
    name="directory",
    routes=routes_of("directory"),
    scopes={
        "directory:read": "read retailers, credit accounts, shop orders, companies, members and customers"
        " by the business's own ids",
        "directory:write": "create or update them (PUT by the business's own id); a key bound to a company:"
        " its own company and members only",
    },
)
