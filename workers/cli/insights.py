"""`jobctl insights run`: regenerate every retailer's insight now."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

import typer

from workers.cli.runner import run, settings

insights_app = typer.Typer(help="Nightly insight regeneration.", no_args_is_help=True, rich_markup_mode=None)


# --- insights --------------------------------------------------------------------------------


@insights_app.command("run")
def insights_run(
    day: Annotated[
        datetime | None, typer.Option("--date", formats=["%Y-%m-%d"], help="Insight date (default: today).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
) -> None:
    """Regenerate every retailer's insight for a date now (workflow id insights/DATE)."""
    from schemas import ids
    from schemas.insights import InsightsRequest, InsightsResult
    from workers.temporal_client import connect
    from workflows.insights import InsightsRegenerationWorkflow

    s = settings()
    insight_date: date = day.date() if day else datetime.now(s.tz).date()

    async def _run() -> InsightsResult | None:
        client = await connect(s)
        handle = await client.start_workflow(
            InsightsRegenerationWorkflow.run,
            InsightsRequest(insight_date=insight_date, business_timezone=s.business_timezone),
            id=ids.insights(insight_date),
            task_queue=s.task_queue,
            static_summary=f"Insight regeneration for {insight_date.isoformat()} (manual)",
        )
        typer.echo(f"started {handle.id}")
        return await handle.result() if wait else None

    result = run(_run)
    if result:
        typer.echo(f"{result.retailers_done} retailers in {result.pages_done} pages")
