"""`jobctl schedules apply|list|trigger|pause|unpause|backfill`: schedules as code, steered."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer

from workers.cli.runner import UsageError, run, settings

schedules_app = typer.Typer(
    help="Schedules as code: apply, list, trigger.", no_args_is_help=True, rich_markup_mode=None
)


# --- schedules -------------------------------------------------------------------------------


@schedules_app.command("apply")
def schedules_apply() -> None:
    """Create or update every schedule in place (idempotent; a paused schedule stays paused)."""
    from workers import families, schedules
    from workers.temporal_client import connect

    s = settings()

    async def _apply() -> list[tuple[str, str]]:
        return await schedules.apply(await connect(s), s, families.all_schedules())

    for schedule_id, outcome in run(_apply):
        typer.echo(f"{schedule_id}: {outcome}")


@schedules_app.command("list")
def schedules_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show every schedule with its state and next run times."""
    from workers import families
    from workers.temporal_client import connect

    s = settings()

    async def _list() -> list[dict[str, Any]]:
        client = await connect(s)
        rows = []
        for definition in families.all_schedules():
            try:
                described = await client.get_schedule_handle(definition.schedule_id).describe()
            except Exception:  # noqa: BLE001 - not applied yet is a state, not an error
                rows.append({"id": definition.schedule_id, "state": "not applied", "next": []})
                continue
            rows.append(
                {
                    "id": definition.schedule_id,
                    "state": "paused" if described.schedule.state.paused else "active",
                    "note": described.schedule.state.note or "",
                    "next": [t.isoformat() for t in described.info.next_action_times[:3]],
                }
            )
        return rows

    rows = run(_list)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['id']:<26} {row['state']:<12} next: {', '.join(row['next']) or '-'}")


@schedules_app.command("trigger")
def schedules_trigger(schedule_id: Annotated[str, typer.Argument(help="Schedule id, e.g. insights-nightly.")]) -> None:
    """Run a schedule's action now."""
    from workers.temporal_client import connect

    _known_schedule(schedule_id)
    s = settings()

    async def _trigger() -> None:
        await (await connect(s)).get_schedule_handle(schedule_id).trigger()

    run(_trigger)
    typer.echo(f"triggered {schedule_id}")


def _known_schedule(schedule_id: str) -> str:
    from workers import families

    try:
        return families.schedule(schedule_id).schedule_id
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


@schedules_app.command("pause")
def schedules_pause(
    schedule_id: Annotated[str, typer.Argument(help="Schedule id.")],
    note: Annotated[str, typer.Option("--note", help="Why (shown in the UI).")] = "paused with jobctl",
) -> None:
    """Pause a schedule; `apply` keeps it paused until someone unpauses it."""
    from workers.temporal_client import connect

    _known_schedule(schedule_id)
    s = settings()

    async def _pause() -> None:
        await (await connect(s)).get_schedule_handle(schedule_id).pause(note=note)

    run(_pause)
    typer.echo(f"paused {schedule_id}: {note}")


@schedules_app.command("unpause")
def schedules_unpause(
    schedule_id: Annotated[str, typer.Argument(help="Schedule id.")],
    note: Annotated[str, typer.Option("--note")] = "unpaused with jobctl",
) -> None:
    """Resume a paused schedule."""
    from workers.temporal_client import connect

    _known_schedule(schedule_id)
    s = settings()

    async def _unpause() -> None:
        await (await connect(s)).get_schedule_handle(schedule_id).unpause(note=note)

    run(_unpause)
    typer.echo(f"unpaused {schedule_id}")


@schedules_app.command("backfill")
def schedules_backfill(
    schedule_id: Annotated[str, typer.Argument(help="Schedule id.")],
    start: Annotated[
        datetime, typer.Option("--from", help="Start (exclusive), e.g. 2026-11-01 or 2026-11-01T03:00:00.")
    ],
    end: Annotated[datetime, typer.Option("--to", help="End (inclusive).")],
) -> None:
    """Run the actions a schedule would have taken between two times (e.g. after an outage)."""
    from temporalio.client import ScheduleBackfill, ScheduleOverlapPolicy

    from workers.temporal_client import connect

    _known_schedule(schedule_id)
    s = settings()
    start_at, end_at = (t if t.tzinfo else t.replace(tzinfo=s.tz) for t in (start, end))
    if end_at <= start_at:
        raise UsageError("--to must be after --from")

    async def _backfill() -> None:
        await (
            (await connect(s))
            .get_schedule_handle(schedule_id)
            .backfill(ScheduleBackfill(start_at=start_at, end_at=end_at, overlap=ScheduleOverlapPolicy.ALLOW_ALL))
        )

    run(_backfill)
    typer.echo(f"backfilling {schedule_id} from {start_at.isoformat()} to {end_at.isoformat()}")
