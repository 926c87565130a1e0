"""Shared fixtures: a real Label Studio server for integration tests, started on demand.

The server starts once per session, the first time a test asks for `label_studio` (directly or
through `ls_client` / `new_project`), so unit tests run without it. Its virtual environment is
`$LS_SPACE_SYNC_TEST_LS_VENV`, else `<repo>/.ci-cache/label-studio-venv` (installed by
`ensure_venv` if missing; `.ci/run` does that up front). Modules marked
`label_studio_servers(...)` also run against Label Studio on PostgreSQL and the oldest supported
release (tests/lsserver.py), each started once too. A server that cannot start fails the tests
that need it; it never skips them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from label_studio_sdk import LabelStudio

from ls_space_sync.quickstart.localserver import LocalLabelStudio, ensure_venv
from tests import lsserver
from tests.objectstore import SeaweedS3

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_ENV_VAR = "LS_SPACE_SYNC_TEST_LS_VENV"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: talks to a real Label Studio server started by the session fixture"
    )
    config.addinivalue_line(
        "markers", "label_studio_servers(*kinds): run the module's tests against each kind of Label Studio "
        "server (sqlite, postgresql, oldest; tests/lsserver.py)"
    )


def label_studio_venv() -> Path:
    """Return the Label Studio virtual environment the tests use."""
    return Path(os.environ.get(VENV_ENV_VAR) or REPO_ROOT / ".ci-cache" / "label-studio-venv")


def _start(venv: Path, data_dir: Path, what: str, extra_env: dict[str, str] | None = None) -> LocalLabelStudio:
    try:
        ensure_venv(venv)
        return LocalLabelStudio(data_dir, venv=venv, extra_env=extra_env).start(timeout=lsserver.START_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any reason must fail the test, not skip it
        pytest.fail(f"could not start {what} from {venv}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def label_studio_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLabelStudio]:
    """Label Studio 1.23.2 on SQLite, on 127.0.0.1, shared by the session (stopped at the end)."""
    # Local-files serving (tests/integration/test_media.py): files under this root, read through
    # a project's local storage, are served at /data/local-files/?d=<path below the root>.
    local_files = {"LOCAL_FILES_SERVING_ENABLED": "true",
                   "LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path_factory.mktemp("local-files"))}
    server = _start(label_studio_venv(), tmp_path_factory.mktemp("label-studio"), "Label Studio", local_files)
    try:
        yield server
    finally:
        server.stop()


_POOL: lsserver.ServerPool | None = None


def _pool(config: pytest.Config) -> lsserver.ServerPool:
    global _POOL
    if _POOL is None:
        root = config._tmp_path_factory.mktemp("label-studio-pool")  # type: ignore[attr-defined]
        _POOL = lsserver.ServerPool(label_studio_venv(), root)
    return _POOL


def pytest_collection_finish(session: pytest.Session) -> None:
    """Begin starting the PostgreSQL and oldest servers the selected tests need (tests/lsserver.py)."""
    if not session.config.option.collectonly:
        for kind in sorted(lsserver.kinds_needed(session.items) - {"sqlite"}):
            _pool(session.config).begin(kind)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _POOL is not None:
        _POOL.close()


def _pooled(config: pytest.Config, kind: str, what: str) -> LocalLabelStudio:
    try:
        return _pool(config).get(kind)
    except Exception as exc:  # noqa: BLE001 - any reason must fail the test, not skip it
        pytest.fail(f"could not start {what}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def label_studio_postgresql(request: pytest.FixtureRequest) -> LocalLabelStudio:
    """Label Studio 1.23.2 with its database on a throwaway PostgreSQL (tests/lsserver.py); stopped
    at the end of the session."""
    return _pooled(request.config, "postgresql", "Label Studio on PostgreSQL")


@pytest.fixture(scope="session")
def label_studio_oldest(request: pytest.FixtureRequest) -> LocalLabelStudio:
    """The oldest supported Label Studio (tests/lsserver.py) on SQLite; stopped at the end of the session."""
    return _pooled(request.config, "oldest", f"Label Studio {lsserver.oldest_version()}")


@pytest.fixture(scope="session")
def label_studio(request: pytest.FixtureRequest) -> LocalLabelStudio:
    """A running Label Studio server on 127.0.0.1: the SQLite one, or the kind a module marked with
    ``label_studio_servers`` is parametrized by (tests/lsserver.py). Each kind starts once."""
    kind = getattr(request, "param", "sqlite")
    return request.getfixturevalue(f"label_studio_{kind}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("label_studio_servers")
    if marker is None or "label_studio" not in metafunc.fixturenames:
        return
    unknown = set(marker.args) - set(lsserver.KINDS)
    if unknown:
        raise pytest.UsageError(f"label_studio_servers: unknown kinds {sorted(unknown)}; known: {lsserver.KINDS}")
    try:
        enabled = lsserver.enabled_kinds()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    kinds = [k for k in marker.args if k in enabled] or ["sqlite"]
    metafunc.parametrize("label_studio", kinds, indirect=True, scope="session")


@pytest.fixture
def sdk_client_factory() -> Iterator[Callable[[str, str], LabelStudio]]:
    """Factory `(url, api_key) -> LabelStudio`; the clients' connections are closed after the test.

    The SDK never closes an httpx client it made itself, which warnings-as-errors turns into
    unclosed-socket failures, so every client gets one from here. `trust_env=False`: no proxy
    for loopback.
    """
    with contextlib.ExitStack() as stack:

        def make(url: str, api_key: str) -> LabelStudio:
            http = stack.enter_context(httpx.Client(timeout=60, follow_redirects=True, trust_env=False))
            return LabelStudio(base_url=url, api_key=api_key, timeout=60, httpx_client=http)

        yield make


@pytest.fixture
def ls_client(label_studio: LocalLabelStudio, sdk_client_factory: Callable[[str, str], LabelStudio]) -> LabelStudio:
    """An SDK client for the session server (restarted first if a test left it stopped)."""
    if not label_studio.is_running():
        label_studio.start()
    return sdk_client_factory(label_studio.url, label_studio.api_key)


@pytest.fixture
def new_project(ls_client: LabelStudio) -> Iterator[Callable[..., int]]:
    """Factory `new_project(label_config, title=None) -> project id`; projects deleted after the test."""
    created: list[int] = []

    def create(label_config: str, title: str | None = None) -> int:
        project = ls_client.projects.create(title=title or f"test project {len(created) + 1}", label_config=label_config)
        created.append(project.id)
        return project.id

    yield create
    for project_id in created:
        with contextlib.suppress(Exception):
            ls_client.projects.delete(id=project_id)


@pytest.fixture(scope="session")
def object_store() -> Iterator[SeaweedS3]:
    """A real S3-compatible server (SeaweedFS) on 127.0.0.1 with one bucket, shared by the session
    (started on first use, stopped at the end); see tests/objectstore.py."""
    try:
        server = SeaweedS3().start()
    except Exception as exc:  # noqa: BLE001 - any reason must fail the test, not skip it
        pytest.fail(f"could not start the S3-compatible server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
