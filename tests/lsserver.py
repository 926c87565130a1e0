"""The Label Studio servers the integration tests run against, and what tells them apart.

Three kinds, each started at most once per session (tests/conftest.py):

- ``sqlite``: Label Studio 1.23.2 on its default SQLite database (every integration module).
- ``postgresql``: the same 1.23.2 with its database on a throwaway PostgreSQL (tests/pg.py),
  ``DJANGO_DB=default`` and ``POSTGRE_NAME/USER/PASSWORD/HOST/PORT``. 1.23.2's pip install brings
  ``psycopg[binary]`` 3, which Django 5.2 uses; no ``psycopg2`` is needed (checked 2026-12-01).
- ``oldest``: the oldest release the README supports (:data:`OLDEST_LABEL_STUDIO_VERSION`), on
  SQLite, from its own venv (``$LS_SPACE_SYNC_TEST_LS_OLDEST_VENV``, else
  ``<repo>/.ci-cache/label-studio-<version>-venv``; installed by ``ensure_venv`` if missing).
  ``$LS_SPACE_SYNC_TEST_LS_OLDEST_VERSION`` runs another release as this kind, to try it.

A module runs against more than the SQLite server by marking itself, e.g.
``pytestmark = [pytest.mark.integration, pytest.mark.label_studio_servers("sqlite", "postgresql")]``:
its tests that use ``label_studio`` are then parametrized by kind (ids ``[sqlite]``,
``[postgresql]``, ``[oldest]``; ``-k "not postgresql"`` leaves a kind's server unstarted, and
``LS_SPACE_SYNC_TEST_LS_KINDS=sqlite,postgresql`` leaves the other kinds out altogether). The
PostgreSQL and oldest servers start in the background once collection shows they are needed
(:class:`ServerPool`), so their migrations overlap the first tests.
What differs between the kinds is in docs/label-studio-versions.md.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from ls_space_sync.quickstart.localserver import OLDEST_LABEL_STUDIO_VERSION, LocalLabelStudio, ensure_venv
from tests.pg import PostgresServer

__all__ = ["KINDS", "OLDEST_LABEL_STUDIO_VERSION", "OLDEST_VENV_ENV_VAR", "ServerPool", "database_of",
           "enabled_kinds", "kinds_needed", "oldest_venv", "oldest_version", "postgres_env", "reuses_task_ids"]

KINDS = ("sqlite", "postgresql", "oldest")
OLDEST_VENV_ENV_VAR = "LS_SPACE_SYNC_TEST_LS_OLDEST_VENV"
OLDEST_VERSION_ENV_VAR = "LS_SPACE_SYNC_TEST_LS_OLDEST_VERSION"
KINDS_ENV_VAR = "LS_SPACE_SYNC_TEST_LS_KINDS"


def enabled_kinds() -> tuple[str, ...]:
    """The kinds marked modules run against: ``$LS_SPACE_SYNC_TEST_LS_KINDS`` (comma-separated,
    e.g. ``sqlite`` for a quick local run), else all of :data:`KINDS`.

    Raises:
        ValueError: the variable names a kind that does not exist.
    """
    raw = os.environ.get(KINDS_ENV_VAR, "").strip()
    kinds = tuple(k.strip() for k in raw.split(",") if k.strip()) if raw else KINDS
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"{KINDS_ENV_VAR}: unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    return kinds
REPO_ROOT = Path(__file__).resolve().parent.parent
# The database Label Studio's tables go in, created on the throwaway server.
LS_DATABASE = "labelstudio"
# Seconds a first start may take: 1.23.2's migrations on PostgreSQL took 120-150 s on this 2-core
# machine under the other helpers' load (2026-12-01), and more than 240 s (the default timeout)
# once; so did the SQLite server's while two others migrated next to it.
START_TIMEOUT = 900


def oldest_version() -> str:
    """The release the ``oldest`` kind runs: :data:`OLDEST_LABEL_STUDIO_VERSION`, or
    ``$LS_SPACE_SYNC_TEST_LS_OLDEST_VERSION`` to try another one (e.g. ``1.20.0``)."""
    return os.environ.get(OLDEST_VERSION_ENV_VAR) or OLDEST_LABEL_STUDIO_VERSION


def oldest_venv() -> Path:
    """The virtual environment of the ``oldest`` kind (see the module docstring)."""
    default = REPO_ROOT / ".ci-cache" / f"label-studio-{oldest_version()}-venv"
    return Path(os.environ.get(OLDEST_VENV_ENV_VAR) or default)


def postgres_env(pg: PostgresServer, database: str = LS_DATABASE) -> dict[str, str]:
    """The environment that puts a Label Studio's database on ``pg`` (``database`` must exist).

    ``DJANGO_DB=default`` selects ``DATABASES_ALL['default']``, the PostgreSQL entry of Label
    Studio's ``core/settings/base.py`` (1.21.0 to 1.23.2); the password is unused (trust auth on
    loopback, tests/pg.py) but Label Studio's default, ``postgres``, would be sent otherwise.
    """
    return {"DJANGO_DB": "default", "POSTGRE_NAME": database, "POSTGRE_USER": pg.user, "POSTGRE_PASSWORD": "",
            "POSTGRE_HOST": "127.0.0.1", "POSTGRE_PORT": str(pg.port)}


def database_of(server: LocalLabelStudio) -> str:
    """``"postgresql"`` or ``"sqlite"``: the database the server was started on."""
    return "postgresql" if server.extra_env.get("DJANGO_DB") in ("default", "postgresql") else "sqlite"


def reuses_task_ids(server: LocalLabelStudio) -> bool:
    """Whether a task imported after the newest one was deleted gets that task's id again.

    SQLite: yes (``max(id)+1``: SQLite's rowid without AUTOINCREMENT). PostgreSQL: no (a sequence).
    Verified on both by tests/integration/test_ls_databases.py.
    """
    return database_of(server) == "sqlite"


class ServerPool:
    """Starts the ``postgresql`` and ``oldest`` servers, in the background when asked early.

    A fresh server spends most of a minute or two in its migrations; started in a thread as soon as
    the session knows it will need it (``begin``), that overlaps the tests that run first on the
    SQLite server. ``get`` waits for it; ``close`` stops every server begun, claimed or not.

    Args:
        venv: the 1.23.2 virtual environment (the ``postgresql`` kind runs from it too).
        root: where the servers' data directories go (one subdirectory per kind).
    """

    def __init__(self, venv: Path, root: Path) -> None:
        self.venv = venv
        self.root = root
        # One at a time: on 2 cores, the SQLite server's migrations and one more are plenty.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-start")
        self._futures: dict[str, Future[tuple[LocalLabelStudio, PostgresServer | None]]] = {}
        self._lock = threading.Lock()

    def begin(self, kind: str) -> None:
        """Start the ``kind`` server in a thread unless it is started or starting already."""
        with self._lock:
            if kind not in self._futures:
                self._futures[kind] = self._pool.submit(self._start, kind)

    def get(self, kind: str) -> LocalLabelStudio:
        """The running ``kind`` server (started now if ``begin`` was not called).

        Raises:
            Exception: whatever kept it from starting (RuntimeError with the server log, mostly).
        """
        self.begin(kind)
        return self._futures[kind].result()[0]

    def _start(self, kind: str) -> tuple[LocalLabelStudio, PostgresServer | None]:
        data_dir = self.root / kind
        if kind == "oldest":
            venv = oldest_venv()
            ensure_venv(venv, version=oldest_version())
            return LocalLabelStudio(data_dir, venv=venv).start(timeout=START_TIMEOUT), None
        if kind != "postgresql":
            raise ValueError(f"ServerPool starts the postgresql and oldest kinds, not {kind!r}")
        ensure_venv(self.venv)
        pg = PostgresServer().start()
        try:
            pg.create_database(LS_DATABASE)
            server = LocalLabelStudio(data_dir, venv=self.venv, extra_env=postgres_env(pg))
            return server.start(timeout=START_TIMEOUT), pg
        except BaseException:
            pg.stop()
            raise

    def close(self) -> None:
        """Stop every server begun (waiting for one still starting) and its PostgreSQL."""
        for future in self._futures.values():
            try:
                server, pg = future.result()
            except Exception:  # noqa: BLE001, S112 - it never started: nothing to stop
                continue
            try:
                server.stop()
            finally:
                if pg is not None:
                    pg.stop()
        self._futures.clear()
        self._pool.shutdown(wait=True)


def kinds_needed(items: list[pytest.Item]) -> set[str]:
    """The server kinds the collected ``items`` are parametrized with (``label_studio`` param)."""
    kinds = set()
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "label_studio" in callspec.params:
            kinds.add(callspec.params["label_studio"])
    return kinds
