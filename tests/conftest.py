"""Shared fixtures: a real Label Studio server for integration tests, started on demand.

The server starts once per session, the first time a test asks for `label_studio` (directly or
through `ls_client` / `new_project`), so unit tests run without it. Its virtual environment is
`$LS_SPACE_SYNC_TEST_LS_VENV`, else `<repo>/.ci-cache/label-studio-venv` (installed by
`ensure_venv` if missing; `.ci/run` does that up front). A server that cannot start fails the
tests that need it; it never skips them.
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
from tests.objectstore import SeaweedS3

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_ENV_VAR = "LS_SPACE_SYNC_TEST_LS_VENV"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: talks to a real Label Studio server started by the session fixture"
    )


def label_studio_venv() -> Path:
    """Return the Label Studio virtual environment the tests use."""
    return Path(os.environ.get(VENV_ENV_VAR) or REPO_ROOT / ".ci-cache" / "label-studio-venv")


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLabelStudio]:
    """A running Label Studio server on 127.0.0.1, shared by the session (stopped at the end)."""
    venv = label_studio_venv()
    try:
        ensure_venv(venv)
        # Local-files serving (tests/integration/test_media.py): files under this root, read through
        # a project's local storage, are served at /data/local-files/?d=<path below the root>.
        local_files = {"LOCAL_FILES_SERVING_ENABLED": "true",
                       "LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path_factory.mktemp("local-files"))}
        server = LocalLabelStudio(tmp_path_factory.mktemp("label-studio"), venv=venv, extra_env=local_files).start()
    except Exception as exc:  # noqa: BLE001 - any reason must fail the test, not skip it
        pytest.fail(f"could not start Label Studio from {venv}: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


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
