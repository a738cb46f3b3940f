"""Bulk import: `jobctl import KIND FILE` (services/imports.py). No workflow, activity or route:
the writers are the directory's and the ledgers' own, run by the command itself.

The command is `jobctl import`, not a group (`jobctl import import ...` would say it twice): its
Typer app is mounted without a name, which merges its one command into `jobctl` itself.
"""

from __future__ import annotations

from workers.cli.imports import imports_app
from workers.families.registry import Family

FAMILY = Family(name="imports", cli=[("", imports_app)])
