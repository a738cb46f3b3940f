"""`jobctl api` (the HTTP API) and `jobctl api-keys create|list|revoke` (who may call it).

A key is printed once, at creation; only its hash is stored. `--company` binds a key to one
tenant's churn data. A name in use, an unknown scope or company is one line and exit 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from workers.cli.runner import UsageError, call, configure_logging, echo, run, settings

api_app = typer.Typer(rich_markup_mode=None)
keys_app = typer.Typer(
    help="API keys: create (printed once), list, revoke.", no_args_is_help=True, rich_markup_mode=None
)
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@api_app.command("api")
def api(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json, docs at /docs) against the configured stack."""
    from workers.api.server import run_api

    s = settings()
    database_url = s.require_database_url()
    configure_logging(s)
    run(lambda: run_api(s, database_url, host, port), fast_loop=True)


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str, typer.Option("--name", help="Who calls (the actor in audit rows), e.g. shop-backend.", show_default=False)
    ],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated, e.g. orders:write,credit:read.", show_default=False)
    ],
    company: Annotated[
        str | None,
        typer.Option("--company", help="Confine the key to this company's churn data and events (those scopes only)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Create a key and print it once (store it now: it cannot be shown again)."""
    import re

    from workers.api.auth import ApiKeyRefused, check_company_scopes, create_key, parse_scopes

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
        raise UsageError("--name must be 1-64 letters, digits or _ . - (starting with a letter or digit)")
    try:
        wanted = parse_scopes(scopes)
        check_company_scopes(wanted, company)
    except ApiKeyRefused as refused:
        raise UsageError(str(refused)) from None
    key, key_id = call(lambda c: create_key(c.engine, name, wanted, company), database=True)
    echo(
        as_json,
        {"id": key_id, "name": name, "scopes": wanted, "company_id": company, "key": key},
        f"{key}\n(api key {name}: {', '.join(wanted)}{f', company {company}' if company else ''}; shown once)",
    )


@keys_app.command("list")
def keys_list(as_json: Json = False) -> None:
    """Every key: name, prefix, scopes, company, last use, revocation (never the key)."""
    from workers.api.auth import list_keys

    keys = call(lambda c: list_keys(c.engine), database=True)
    if as_json:
        echo(True, keys)
        return
    typer.echo(f"{'name':<24}{'prefix':<12}{'company':<12}{'state':<10}scopes")
    for k in keys:
        state = "revoked" if k["revoked_at"] else "active"
        typer.echo(f"{k['name']:<24}{k['prefix']:<12}{k['company_id'] or '-':<12}{state:<10}{','.join(k['scopes'])}")  # type: ignore[arg-type]


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.", show_default=False)]) -> None:
    """Revoke NAME's key: its next request is 401."""
    from workers.api.auth import revoke_key

    call(lambda c: revoke_key(c.engine, name), database=True)
    typer.echo(f"api key {name}: revoked")
