"""Start and stop a real Label Studio server on 127.0.0.1.

Used by the integration tests, the benchmarks and the README demo. Label Studio is installed
into its own virtual environment (it pins its own Django, pydantic and SDK versions), never into
the project's, and runs as a child process in its own process group so that `stop()` ends the
whole tree.

The server keeps its SQLite database, media and `.env` (Django SECRET_KEY) in `data_dir`. The
credentials this module generates are kept there too (`lsss-credentials.json`), so a server
stopped and started again on the same `data_dir`, by the same object or a new one, comes back
with the same database, user and token.

Example:
    >>> with LocalLabelStudio(Path("/tmp/ls"), venv=Path(".ci-cache/label-studio-venv")) as ls:
    ...     client = LabelStudio(base_url=ls.url, api_key=ls.api_key)
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from ls_space_sync.settings import environment

__all__ = ["LABEL_STUDIO_VERSION", "OLDEST_LABEL_STUDIO_VERSION", "LocalLabelStudio", "ensure_venv", "free_port"]

LABEL_STUDIO_VERSION = "1.23.2"
# The oldest release the README supports: the first whose own pinned SDK is 2.x (label-studio-sdk
# 2.0.4); the tests run pull sync and push against it (docs/label-studio-versions.md).
OLDEST_LABEL_STUDIO_VERSION = "1.21.0"

_CREDENTIALS_FILE = "lsss-credentials.json"
_SERVER_LOG = "server.log"
_PIP_LOG = "lsss-pip-install.log"
_LOG_TAIL_CHARS = 4000

# Inherited variables that would point the server (or its Python) somewhere else than this
# module means to: another Label Studio, another database, the project's interpreter, a proxy.
# Stripped from the child environment; pass `extra_env` to set any of them on purpose.
_STRIPPED_ENV = {
    "LABEL_STUDIO_URL",
    "LABEL_STUDIO_API_KEY",
    "DJANGO_DB",
    "DJANGO_SETTINGS_MODULE",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "FTP_PROXY",
}
_STRIPPED_PREFIXES = ("LABEL_STUDIO_", "POSTGRE_")


def ensure_venv(venv: Path, version: str = LABEL_STUDIO_VERSION, log: Callable[[str], object] = print) -> Path:
    """Install Label Studio into its own virtual environment unless it is already there.

    Creates `venv` with `python -m venv` and runs `pip install label-studio==version` when
    `bin/label-studio` is missing or another version is installed. Quick (no subprocess) when the
    right version is present. Concurrent callers are serialised by a lock file next to `venv`.

    Args:
        venv: Directory of the virtual environment (created if missing).
        version: Label Studio version to install.
        log: Called with one line of progress before a slow step; pip's own output goes to
            `venv/lsss-pip-install.log`, not the terminal.

    Returns:
        Path of the `label-studio` executable inside `venv`.

    Raises:
        RuntimeError: `venv` creation or pip failed; the message names the log file.
    """
    venv = Path(venv).absolute()
    executable = venv / "bin" / "label-studio"
    if executable.exists() and _installed_version(venv) == version:
        return executable

    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f".{venv.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing the same venv
        if executable.exists() and _installed_version(venv) == version:
            return executable
        python = venv / "bin" / "python"
        if not python.exists():
            log(f"Creating virtual environment {venv}")
            # The base interpreter, so that a venv made from inside another venv does not chain.
            base = getattr(sys, "_base_executable", None) or sys.executable
            result = subprocess.run(
                [base, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise RuntimeError(f"python -m venv {venv} failed: {result.stderr.strip()}")
        log_path = venv / _PIP_LOG
        log(f"Installing label-studio=={version} into {venv} (a few minutes; log: {log_path})")
        env = _clean_env(environment())
        env.pop("PIP_REQUIRE_VIRTUALENV", None)
        with open(log_path, "a") as out:
            out.write(f"\n=== pip install label-studio=={version} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            out.flush()
            installed = subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", f"label-studio=={version}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
            )
        if installed.returncode != 0 or not executable.exists():
            raise RuntimeError(
                f"pip install label-studio=={version} into {venv} failed (exit {installed.returncode}); "
                f"see {log_path}"
            )
        log(f"Installed label-studio=={version}")
        return executable


def _installed_version(venv: Path) -> str | None:
    """Return the label-studio version installed in `venv`, read from its dist-info, or None."""
    for dist_info in venv.glob("lib/python*/site-packages/label_studio-*.dist-info"):
        return dist_info.name[len("label_studio-") : -len(".dist-info")]
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _clean_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = {}
    for key, value in environ.items():
        upper = key.upper()
        if upper in _STRIPPED_ENV or upper.startswith(_STRIPPED_PREFIXES):
            continue
        env[key] = value
    return env


class LocalLabelStudio:
    """A Label Studio server on 127.0.0.1, run from a virtual environment made by `ensure_venv`.

    `start()` after `stop()` brings the same server back: same database, user, token and port.

    Attributes:
        url: Base URL, `http://127.0.0.1:<port>`.
        api_key: Legacy API token of the admin user (sent as `Authorization: Token <key>`).
        username: Email of the admin user.
        password: Password of the admin user.
        data_dir: The server's data directory; its log is `data_dir/server.log`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        venv: Path,
        port: int | None = None,
        api_key: str | None = None,
        username: str = "admin@example.com",
        password: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """Prepare (do not start) a server.

        Args:
            data_dir: Directory for the server's database, media and log (created if missing).
            venv: Virtual environment with Label Studio installed (see `ensure_venv`).
            port: TCP port on 127.0.0.1; a free one is picked when None.
            api_key: Admin token (more than 5 characters); the one saved in `data_dir` from an
                earlier run, else a random one, when None.
            username: Admin email.
            password: Admin password; saved or random when None.
            extra_env: Variables added to the server's environment last, e.g. `DJANGO_DB` and
                `POSTGRE_*` to run it on PostgreSQL.
        """
        self.data_dir = Path(data_dir).absolute()
        self.venv = Path(venv).absolute()
        self.extra_env = dict(extra_env or {})
        saved = self._load_credentials()
        self.username = username
        self.api_key = api_key or saved.get("api_key") or secrets.token_hex(20)
        self.password = password or saved.get("password") or secrets.token_urlsafe(16)
        if len(self.api_key) <= 5:
            raise ValueError("api_key must be longer than 5 characters (Label Studio ignores shorter ones)")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Path of the server's combined stdout/stderr log."""
        return self.data_dir / _SERVER_LOG

    def _load_credentials(self) -> dict[str, str]:
        try:
            return json.loads((self.data_dir / _CREDENTIALS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _save_credentials(self) -> None:
        path = self.data_dir / _CREDENTIALS_FILE
        path.write_text(json.dumps({"username": self.username, "password": self.password, "api_key": self.api_key}))
        path.chmod(0o600)

    def _env(self) -> dict[str, str]:
        env = _clean_env(environment())
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "LABEL_STUDIO_USERNAME": self.username,
                "LABEL_STUDIO_PASSWORD": self.password,
                "LABEL_STUDIO_USER_TOKEN": self.api_key,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LATEST_VERSION_CHECK": "false",
                "SSRF_PROTECTION_ENABLED": "false",
                "ML_BLOCK_LOCAL_IP": "false",  # let a model (ML backend) on 127.0.0.1 connect
                "VIRTUAL_ENV": str(self.venv),
                "PATH": f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        # Lower-case proxy variables too: httpx and requests read both spellings.
        for key in [k for k in env if k.lower().endswith("_proxy")]:
            del env[key]
        env.update(self.extra_env)
        return env

    @property
    def pid(self) -> int | None:
        """Process id of the server started by `start()` (``None`` when not running)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def is_running(self) -> bool:
        """Return True while the server process started by `start()` is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 240) -> LocalLabelStudio:
        """Start the server and wait until it answers `GET /health` and accepts the token.

        A no-op when already running. The first start on a new `data_dir` runs migrations and
        creates the admin user with `api_key` (5-60 s); later starts reuse both.

        Args:
            timeout: Seconds to wait for the server to become healthy.

        Returns:
            self, so that `server = LocalLabelStudio(...).start()` reads well.

        Raises:
            RuntimeError: The executable is missing, the port is taken, the process exited
                early, the token is refused, or `timeout` passed; the message carries the tail of
                the server log.
        """
        if self.is_running():
            return self
        executable = self.venv / "bin" / "label-studio"
        if not executable.exists():
            raise RuntimeError(f"{executable} not found; create the venv with ensure_venv({str(self.venv)!r})")
        if _port_in_use(self.port):
            raise RuntimeError(f"port {self.port} on 127.0.0.1 is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._save_credentials()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"\n=== lsss: starting Label Studio on {self.url}\n".encode())
        self._log_file.flush()
        self._process = subprocess.Popen(
            [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.data_dir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() signals the whole tree
        )
        atexit.register(self.stop)
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, trust_env=False, timeout=5) as client:
            while True:
                if not self.is_running():
                    code = self._process.returncode if self._process else None
                    raise RuntimeError(f"Label Studio exited early (exit {code}).\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Label Studio did not answer {self.url}/health within {timeout:.0f} s.\n{self.log_tail()}"
                    )
                time.sleep(0.5)
            # The user is created before the server listens, so the token must work now; if it
            # does not, the data_dir belongs to a server started with other credentials.
            response = client.get("/api/current-user/whoami", headers={"Authorization": f"Token {self.api_key}"})
            if response.status_code != 200:
                raise RuntimeError(
                    f"Label Studio at {self.url} refused the API token (HTTP {response.status_code}); "
                    f"was {self.data_dir} created with other credentials?\n{self.log_tail()}"
                )

    def stop(self, timeout: float = 30) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after `timeout` seconds.

        Idempotent; the data directory is kept, so `start()` brings the same server back.
        """
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is not None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait(10)
            # Children that outlived the leader (none expected) go too.
            self._signal_group(process, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """Return the last `chars` characters of the server log ('' if there is none)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - chars))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> LocalLabelStudio:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"LocalLabelStudio({self.url}, data_dir={str(self.data_dir)!r}, {state})"
