"""The one way a `jobctl` command runs: settings, connections, refusals as exit 2, output.

Every subcommand goes through `call`: it reads the settings (a malformed one is one line naming
it, exit 2), opens only the connections the command asked for, closes them, and turns a
`Refused` (the service layer's "this cannot apply") into one clear line and exit 2. The process
leaves through `os._exit` in `workers.cli.main` (the SDK's runtime can abort during interpreter
shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import typer

from config.settings import Settings, load_settings
from schemas.errors import Refused

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.client import Client

T = TypeVar("T")

UsageError = typer.BadParameter
"""Bad input from the command line: printed with the usage line, exit 2."""


@dataclass(frozen=True)
class Context:
    """What a command's action may use; only what it asked `call` for is connected."""

    settings: Settings
    client: Client = None  # type: ignore[assignment]
    engine: AsyncEngine = None  # type: ignore[assignment]


def free_text(kind: Any) -> Callable[[str | None], str | None]:
    """A typer callback checking an option by the same type the HTTP models use (`schemas.text`):
    a NUL or control character is refused before anything is touched, "Invalid value for
    '--reason': must not contain NUL ..." and exit 2, instead of a database error after it."""
    from pydantic import TypeAdapter, ValidationError

    adapter: TypeAdapter[str] = TypeAdapter(kind)

    def check(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return adapter.validate_python(value)
        except ValidationError as error:
            problem = error.errors()[0]
            if problem["type"] == "string_too_short":
                raise UsageError("must not be empty") from None
            if problem["type"] == "string_too_long":
                raise UsageError(f"must be at most {problem['ctx']['max_length']} characters") from None
            raise UsageError(problem["msg"].removeprefix("Value error, ")) from None

    return check


def settings() -> Settings:
    return load_settings()


def run(coro_fn: Callable[[], Awaitable[T]], *, fast_loop: bool = False) -> T:
    """Run a command's coroutine; `fast_loop`: on uvloop, for a process that serves requests."""
    loop_factory = None
    if fast_loop:
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


def call(
    action: Callable[[Context], Awaitable[T]],
    *,
    temporal: bool | Literal["lazy"] = False,
    database: bool = False,
) -> T:
    """Run `action(context)` with Temporal and/or the database connected; a refusal is exit 2.
    `temporal="lazy"`: Temporal is reached at its first call only (an admin action refused by the
    database, bad input, needs no Temporal, and is exit 2 whether Temporal is up or not)."""
    s = settings()
    url = s.require_database_url() if database else None

    async def _go() -> T:
        engine = client = None
        if url is not None:
            from activities.database import create_engine

            engine = create_engine(url, pool_size=4)
        try:
            if temporal:
                from workers.temporal_client import connect

                client = await connect(s, lazy=temporal == "lazy")
            return await action(Context(s, client, engine))  # type: ignore[arg-type]
        finally:
            if engine is not None:
                await engine.dispose()

    try:
        return run(_go)
    except Refused as refusal:
        raise UsageError(str(refusal)) from None


def echo(as_json: bool, payload: Any, line: str | None = None) -> None:
    """`--json` prints the payload for scripts; otherwise the line for people."""
    if as_json or line is None:
        typer.echo(json.dumps(payload, default=str, indent=2))
    else:
        typer.echo(line)


def configure_logging(s: Settings) -> None:
    """Logs on stderr; the first time, one line naming the dev stack's settings file when the
    settings came partly from it (`jobctl worker` beside `make run`; the environment still wins)."""
    import structlog

    from config.settings import read_dev_stack_file
    from workers.log import configure_logging as configure

    configure(s.log_format, s.log_level)
    if (path := read_dev_stack_file()) is not None and path not in _announced:
        _announced.add(path)
        structlog.get_logger("jobctl").info("settings.dev_stack_file", path=path, detail="the environment wins over it")


_announced: set[str] = set()
