"""`jobctl`: the operator's and developer's command line.

One Typer app: the processes (`workers.cli.stack`), the schedules, and each job family's commands,
mounted from the family registry (`workers.families`). Every command runs through
`workers.cli.runner`; `main` leaves through `os._exit` after flushing (the SDK's runtime can abort
during interpreter shutdown).
"""

from __future__ import annotations

import os
import sys

import typer

from config.settings import SettingsError
from workers.cli.api import api_app, keys_app
from workers.cli.console import console_users_app
from workers.cli.schedules import schedules_app
from workers.cli.stack import stack_app

app = typer.Typer(
    name="jobctl",
    help="Durable background jobs on Temporal: run the stack, the worker, schedules and operator actions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain one-line errors: scripts read them too
)
app.add_typer(stack_app)
app.add_typer(schedules_app, name="schedules")
app.add_typer(api_app)
app.add_typer(keys_app, name="api-keys")
app.add_typer(console_users_app, name="console-user")


def mount_families() -> typer.Typer:
    """Each family's command groups, from the registry (once; at run time, so importing one
    family's CLI module never needs the whole registry)."""
    if not getattr(app, "_families_mounted", False):
        from workers.families import FAMILIES

        for family in FAMILIES:
            for name, sub_app in family.cli:
                app.add_typer(sub_app, name=name)
        app._families_mounted = True  # type: ignore[attr-defined]  # noqa: SLF001 - our own mark on typer's app
    return app


# --- entry point -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    code = _invoke(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _invoke(argv: list[str] | None) -> int:
    try:
        mount_families()(args=argv, prog_name="jobctl")
    except SystemExit as exc:  # typer/click report usage errors (exit 2) and --help this way
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SettingsError as exc:
        print(f"jobctl: {exc.prefix}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jobctl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence prints what failed
        print(f"jobctl: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    main()
