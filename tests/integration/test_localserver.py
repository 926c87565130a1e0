"""The local Label Studio server is real: it answers, authenticates, stores, and survives a restart."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from ls_space_sync.quickstart import demo
from ls_space_sync.quickstart.localserver import LABEL_STUDIO_VERSION, LocalLabelStudio, ensure_venv

pytestmark = pytest.mark.integration

TEXT_CONFIG = '<View><Text name="text" value="$text"/></View>'


def get_tasks(server: LocalLabelStudio, project_id: int) -> list[dict]:
    """Return every task of a project as the server sends it (`fields=all`), in id order."""
    tasks: list[dict] = []
    with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as client:
        for page in range(1, 1000):
            response = client.get(
                "/api/tasks/",
                params={"project": project_id, "fields": "all", "page": page, "page_size": 100},
                headers={"Authorization": f"Token {server.api_key}"},
            )
            if response.status_code == 404:  # a page past the end
                break
            response.raise_for_status()
            batch = response.json()["tasks"]
            tasks.extend(batch)
            if len(batch) < 100:
                break
    return sorted(tasks, key=lambda t: t["id"])


def test_ensure_venv_is_quick_when_present(label_studio: LocalLabelStudio) -> None:
    started = time.monotonic()
    executable = ensure_venv(label_studio.venv, log=pytest.fail)  # must not log: nothing to do
    assert executable == label_studio.venv / "bin" / "label-studio"
    assert time.monotonic() - started < 30  # a reinstall takes minutes; a check, a second or so


def test_health_answers_on_loopback(label_studio: LocalLabelStudio) -> None:
    assert label_studio.is_running()
    assert label_studio.url.startswith("http://127.0.0.1:")
    response = httpx.get(f"{label_studio.url}/health", trust_env=False)
    assert response.status_code == 200
    version = httpx.get(
        f"{label_studio.url}/api/version", headers={"Authorization": f"Token {label_studio.api_key}"}, trust_env=False
    )
    assert version.json()["release"] == LABEL_STUDIO_VERSION


def test_token_authenticates(label_studio: LocalLabelStudio, ls_client: LabelStudio) -> None:
    ls_client.projects.list()  # raises on anything but 2xx
    response = httpx.get(
        f"{label_studio.url}/api/projects", headers={"Authorization": f"Token {label_studio.api_key}"}, trust_env=False
    )
    assert response.status_code == 200
    assert ls_client.users.whoami().email == label_studio.username


def test_wrong_token_is_refused(label_studio: LocalLabelStudio, sdk_client_factory) -> None:
    response = httpx.get(
        f"{label_studio.url}/api/projects", headers={"Authorization": "Token not-the-right-token"}, trust_env=False
    )
    assert response.status_code == 401
    client = sdk_client_factory(label_studio.url, "not-the-right-token")
    with pytest.raises(ApiError) as excinfo:
        client.projects.list()
    assert excinfo.value.status_code == 401


def test_sample_project_has_tasks_annotations_and_predictions(
    label_studio: LocalLabelStudio, ls_client: LabelStudio
) -> None:
    project_id = demo.create_sample_project(label_studio.url, label_studio.api_key, title="sample under test")
    try:
        project = ls_client.projects.get(id=project_id)
        assert project.title == "sample under test"
        assert "<Choices" in project.label_config  # the server's own text-classification template
        tasks = get_tasks(label_studio, project_id)
        assert len(tasks) == demo.SAMPLE_TASKS == project.task_number == 20
        assert sum(len(t["annotations"]) for t in tasks) == demo.SAMPLE_ANNOTATIONS
        assert sum(len(t["predictions"]) for t in tasks) == demo.SAMPLE_PREDICTIONS
        first = tasks[0]
        assert first["data"]["text"].startswith("This is a great 3D movie")
        assert first["annotations"][0]["result"][0]["value"] == {"choices": ["Positive"]}
        assert first["predictions"][0]["model_version"] == demo.MODEL_VERSION
        assert first["total_annotations"] == 1 and first["total_predictions"] == 1
    finally:
        ls_client.projects.delete(id=project_id)


@pytest.mark.parametrize(
    ("template", "n_tasks", "n_annotations", "n_predictions", "result_type"),
    [
        (demo.TEMPLATE_NER, 5, 5, 2, "labels"),
        (demo.TEMPLATE_BBOX, 3, 3, 1, "rectanglelabels"),
    ],
)
def test_template_projects(
    label_studio: LocalLabelStudio,
    ls_client: LabelStudio,
    template: str,
    n_tasks: int,
    n_annotations: int,
    n_predictions: int,
    result_type: str,
) -> None:
    project_id = demo.create_template_project(label_studio.url, label_studio.api_key, template)
    try:
        tasks = get_tasks(label_studio, project_id)
        assert len(tasks) == n_tasks
        assert sum(len(t["annotations"]) for t in tasks) == n_annotations
        assert sum(len(t["predictions"]) for t in tasks) == n_predictions
        assert tasks[0]["annotations"][0]["result"][0]["type"] == result_type
    finally:
        ls_client.projects.delete(id=project_id)


def test_new_project_fixture(ls_client: LabelStudio, new_project) -> None:
    project_id = new_project(TEXT_CONFIG, title="made by the fixture")
    assert ls_client.projects.get(id=project_id).title == "made by the fixture"


def test_stop_and_start_keep_the_data(
    label_studio: LocalLabelStudio, ls_client: LabelStudio, new_project, sdk_client_factory
) -> None:
    project_id = new_project(TEXT_CONFIG, title="survives a restart")
    ls_client.projects.import_tasks(id=project_id, request=[{"data": {"text": "kept"}}], return_task_ids=True)
    url, api_key = label_studio.url, label_studio.api_key

    label_studio.stop()
    label_studio.stop()  # idempotent
    assert not label_studio.is_running()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", trust_env=False)

    # A new object on the same data_dir and port finds the saved credentials.
    again = LocalLabelStudio(label_studio.data_dir, venv=label_studio.venv, port=label_studio.port)
    assert again.api_key == api_key
    with again:
        client = sdk_client_factory(again.url, again.api_key)
        assert client.projects.get(id=project_id).task_number == 1
    assert not again.is_running()

    label_studio.start()
    assert (label_studio.url, label_studio.api_key) == (url, api_key)
    assert [t["data"] for t in get_tasks(label_studio, project_id)] == [{"text": "kept"}]


def test_start_fails_loudly(tmp_path: Path, label_studio: LocalLabelStudio) -> None:
    with pytest.raises(RuntimeError, match="not found"):
        LocalLabelStudio(tmp_path / "data", venv=tmp_path / "no-venv").start()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match="in use"):
            LocalLabelStudio(tmp_path / "data", venv=label_studio.venv, port=port).start()
