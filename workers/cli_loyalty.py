"""`jobctl loyalty ...`: Loyalty commands (registered by workers/cli.py)."""

from __future__ import annotations

import typer

loyalty_app = typer.Typer(help="Loyalty.", no_args_is_help=True, rich_markup_mode=None)
