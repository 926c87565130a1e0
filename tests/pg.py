"""A throwaway PostgreSQL server for tests: initdb + pg_ctl on 127.0.0.1, a free port, a temp dir.

Uses the server binaries of the Debian/Ubuntu ``postgresql`` package (``/usr/lib/postgresql/<v>/bin``)
or whatever ``pg_ctl`` is on PATH. PostgreSQL refuses to run as root, so when the tests run as root
the server runs as the ``postgres`` user that the package creates, in a directory it owns.
Authentication is ``trust`` on loopback only: nothing outside this machine can reach it.

Example:
    >>> with PostgresServer() as pg:
    ...     url = pg.create_database("t1")   # postgresql+psycopg2://postgres@127.0.0.1:<port>/t1
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType


def find_bin_dir() -> Path:
    """The folder with ``initdb`` and ``pg_ctl``, newest version first.

    Raises:
        RuntimeError: PostgreSQL is not installed; the message says how to install it.
    """
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0, reverse=True)
    for folder in candidates:
        if (Path(folder) / "pg_ctl").exists() and (Path(folder) / "initdb").exists():
            return Path(folder)
    on_path = shutil.which("pg_ctl")
    if on_path and (Path(on_path).resolve().parent / "initdb").exists():
        return Path(on_path).resolve().parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install them with "
                       "`apt-get install -y postgresql` (.ci/run does this)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A PostgreSQL server in a temp dir, listening on 127.0.0.1 only.

    Args:
        port: TCP port (default: a free one).
    """

    def __init__(self, port: int | None = None):
        self.bin = find_bin_dir()
        self.port = port or _free_port()
        self.user = "postgres"
        self.dir = Path(tempfile.mkdtemp(prefix="lsss-pg-"))
        self._as_user = None
        if os.geteuid() == 0:
            try:
                self._as_user = pwd.getpwnam("postgres").pw_name
            except KeyError:
                raise RuntimeError("running as root needs a `postgres` system user (the postgresql package "
                                   "creates it)") from None
            shutil.chown(self.dir, user="postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.running = False

    def _run(self, *args: str) -> None:
        result = subprocess.run([str(a) for a in args], capture_output=True, text=True, user=self._as_user,
                                cwd=self.dir, check=False)
        if result.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{Path(args[0]).name} failed (exit {result.returncode}): "
                               f"{result.stderr.strip()[-2000:]}\n{log}")

    def start(self) -> PostgresServer:
        """initdb (trust auth) and start; returns once it accepts connections.

        Raises:
            RuntimeError: initdb or pg_ctl failed; the message carries the server log.
        """
        self._run(self.bin / "initdb", "-D", self.data, "-U", self.user, "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", opts, "-l", self.log, "-w", "-t", "60", "start")
        self.running = True
        return self

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database on this server."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a random name by default) and return its SQLAlchemy URL."""
        from sqlalchemy import create_engine, text

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory."""
        if self.running:
            try:
                self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
            finally:
                self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
