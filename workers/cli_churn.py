"""`jobctl churn ...`: Churn saver commands (registered by workers/cli.py)."""

from __future__ import annotations

import typer

churn_app = typer.Typer(help="Churn saver.", no_args_is_help=True, rich_markup_mode=None)
