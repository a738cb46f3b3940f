"""`jobctl credit ...`: Credit operations commands (registered by workers/cli.py)."""

from __future__ import annotations

import typer

credit_app = typer.Typer(help="Credit operations.", no_args_is_help=True, rich_markup_mode=None)
payments_app = typer.Typer(help="Credit operations.", no_args_is_help=True, rich_markup_mode=None)
