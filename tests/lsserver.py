"""The Label Studio servers the integration tests run against, and what tells them apart.

Three kinds, each started at most once per session (tests/conftest.py):

- ``sqlite``: Label Studio 1.23.2 on its default SQLite database (every integration module).
- ``postgresql``: the same 1.23.2 with its database on a throwaway PostgreSQL (tests/pg.py),
  ``DJANGO_DB=default`` and ``POSTGRE_NAME/USER/PASSWORD/HOST/PORT``. 1.23.2's pip install brings
  ``psycopg[binary]`` 3, which Django 5.2 uses; no ``psycopg2`` is needed (checked 2026-12-01).
- ``oldest``: the oldest release the README supports (:data:`OLDEST_LABEL_STUDIO_VERSION`), on
  SQLite, from its own venv (``$LS_SPACE_SYNC_TEST_LS_OLDEST_VENV``, else
  ``<repo>/.ci-cache/label-studio-<version>-venv``; installed by ``ensure_venv`` if missing).

A module runs against more than the SQLite server by marking itself, e.g.
``pytestmark = [pytest.mark.integration, pytest.mark.label_studio_servers("sqlite", "postgresql")]``:
its tests that use ``label_studio`` are then parametrized by kind (ids ``[sqlite]``,
``[postgresql]``, ``[oldest]``; ``-k "not postgresql"`` leaves a kind's server unstarted).
What differs between the kinds is in docs/label-studio-versions.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from ls_space_sync.quickstart.localserver import OLDEST_LABEL_STUDIO_VERSION, LocalLabelStudio
from tests.pg import PostgresServer

__all__ = ["KINDS", "OLDEST_LABEL_STUDIO_VERSION", "OLDEST_VENV_ENV_VAR", "database_of", "oldest_venv",
           "postgres_env", "reuses_task_ids"]

KINDS = ("sqlite", "postgresql", "oldest")
OLDEST_VENV_ENV_VAR = "LS_SPACE_SYNC_TEST_LS_OLDEST_VENV"
REPO_ROOT = Path(__file__).resolve().parent.parent
# The database Label Studio's tables go in, created on the throwaway server.
LS_DATABASE = "labelstudio"


def oldest_venv() -> Path:
    """The virtual environment of the oldest supported Label Studio (see the module docstring)."""
    default = REPO_ROOT / ".ci-cache" / f"label-studio-{OLDEST_LABEL_STUDIO_VERSION}-venv"
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
