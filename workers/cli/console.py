"""`jobctl console-user add` (who may sign in to the business console, `/console`).

Only the password's argon2 hash is stored; give it at the prompt (not echoed) or in
JOBCTL_CONSOLE_PASSWORD, never on a command line others can read. A bad name, a short password,
an unknown role or company is one line and exit 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from workers.cli.runner import UsageError, call, echo

console_users_app = typer.Typer(
    help="Console users: add (sign-in for /console).", no_args_is_help=True, rich_markup_mode=None
)


@console_users_app.command("add")
def add(
    username: Annotated[str, typer.Argument(help="lower-case, 2-64 characters; the actor in audit rows")],
    role: Annotated[
        str,
        typer.Option("--role", help="finance, support, company_admin, operator or read_only.", show_default=False),
    ],
    company: Annotated[
        str | None, typer.Option("--company", help="The company a company_admin sees (and only it).")
    ] = None,
    password: Annotated[
        str,
        typer.Option(
            "--password",
            envvar="JOBCTL_CONSOLE_PASSWORD",
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            help="At least 12 characters (prompted when not given).",
            show_default=False,
        ),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Add a console user with ROLE (a company_admin needs --company)."""
    from workers.console.users import MIN_PASSWORD, ROLES, USERNAME, UserRefused, add_user

    if not USERNAME.fullmatch(username):
        raise UsageError("USERNAME: 2-64 lower-case letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise UsageError(f"--role: one of {', '.join(ROLES)}")
    if (role == "company_admin") != (company is not None):
        raise UsageError("--company: required for a company_admin, and only for one")
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"--password: at least {MIN_PASSWORD} characters")
    try:
        user = call(lambda c: add_user(c.engine, username, password, role, company), database=True)
    except UserRefused as refused:
        raise UsageError(str(refused)) from None
    echo(
        as_json,
        {"id": user.id, "username": user.username, "role": user.role, "company_id": user.company_id},
        f"console user {user.username}: {user.role}{f', company {company}' if company else ''}",
    )
