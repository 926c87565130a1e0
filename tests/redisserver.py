"""A throwaway Redis server for tests: ``redis-server`` on 127.0.0.1, a free port, a temp dir.

Uses the binary of the Debian/Ubuntu ``redis-server`` package (``.ci/run`` installs it). No
password, no persistence to disk beyond the temp dir, loopback only: nothing outside this
machine can reach it.

Example:
    >>> with RedisServer() as redis:
    ...     url = redis.url(db=1)   # redis://127.0.0.1:<port>/1
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` in a temp dir, listening on 127.0.0.1 only.

    Args:
        port: TCP port (default: a free one).

    Raises:
        RuntimeError: (at :meth:`start`) ``redis-server`` is not installed or did not answer PING.
    """

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lsss-redis-"))
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def ping(self) -> bool:
        """Whether the server answers ``PING`` (in the inline protocol)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 20.0) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found; install it with `apt-get install -y redis-server` "
                               "(.ci/run does this)")
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.log), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text()[-2000:] if self.log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}: {log}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
