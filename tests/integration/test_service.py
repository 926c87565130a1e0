"""The service against the real Label Studio: webhooks end to end, and the daemon as a real process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from ls_space_sync.cli.console import main
from ls_space_sync.service.http import serve
from ls_space_sync.quickstart.localserver import free_port
from ls_space_sync.settings import load_settings
from ls_space_sync.store.state import FAILED, RUNNING, SKIPPED, SUCCEEDED, StateDB
from ls_space_sync.store.dataset import ProjectStore

pytestmark = pytest.mark.integration

CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          '<Choice value="pos"/><Choice value="neg"/></Choices></View>')
RESULT = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["pos"]}}]
SECRET = "integration-webhook-secret"


@pytest.fixture
def project(new_project, ls_client):
    """A text project with 4 tasks; returns its id."""
    pid = new_project(CONFIG, title="service test")
    ls_client.projects.import_tasks(id=pid, request=[{"data": {"text": f"task {i}"}} for i in range(4)])
    return pid


def config_file(tmp_path: Path, label_studio, project_id: int, port: int, **sections) -> Path:
    """Write a YAML config for one project and return its path."""
    cfg = {
        "label_studio": {"url": label_studio.url, "api_key": label_studio.api_key, "retries": 0, "timeout_seconds": 10},
        "projects": [project_id],
        "data_dir": str(tmp_path / "data"),
        "log_format": "json",
        "sync": {"interval_seconds": 3600},
        "server": {"port": port, "webhook_secret": SECRET, "debounce_seconds": 0.5},
        "scheduler": {"jitter_seconds": 0, "shutdown_timeout_seconds": 30},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_for(predicate, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_webhooks_install_then_an_annotation_syncs_within_seconds(tmp_path, label_studio, ls_client, project):
    port = free_port()
    cfg = config_file(tmp_path, label_studio, project, port)
    settings = load_settings(cfg, env={})
    store = ProjectStore(settings.resolved_store_root, project)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve(settings, stop_event=stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name="service")
    thread.start()
    try:
        wait_for(lambda: "run-000001" in store.tags(), 60, "the sync at start")
        runner = CliRunner()
        first = runner.invoke(main, ["-c", str(cfg), "webhooks", "install"], env={})
        assert first.exit_code == 0, first.output
        assert f"project {project}: created webhook" in first.output
        again = runner.invoke(main, ["-c", str(cfg), "webhooks", "install"], env={})
        assert f"project {project}: unchanged webhook" in again.output  # idempotent
        url = f"http://127.0.0.1:{port}/webhook"
        hooks = [h for h in ls_client.webhooks.list(project=str(project)) if h.url == url]
        assert len(hooks) == 1 and hooks[0].headers == {"X-LS-Space-Sync-Secret": SECRET}

        task_ids = sorted(t.id for t in ls_client.tasks.list(project=project))
        delays = []
        for task_id in task_ids[:3]:
            before = len(store.tags())
            started = time.monotonic()
            ls_client.annotations.create(id=task_id, result=RESULT)
            wait_for(lambda: len(store.tags()) > before, 15, "a new tagged version after the annotation", step=0.02)
            delays.append(time.monotonic() - started)
        print(f"\nwebhook path, annotation submit -> new tagged version: median {statistics.median(delays):.2f} s "
              f"({', '.join(f'{d:.2f}' for d in delays)})")
        assert max(delays) < 10  # the poll interval is an hour: only the webhook can explain this
        state = StateDB(settings.resolved_state_url)
        runs = state.runs(project, limit=10)
        assert [r.trigger for r in runs[:3]] == ["webhook"] * 3
        assert all(r.status == SUCCEEDED and r.updated == 1 for r in runs[:3])
        state.dispose()

        removed = runner.invoke(main, ["-c", str(cfg), "webhooks", "remove"], env={})
        assert removed.exit_code == 0 and f"project {project}: removed webhook" in removed.output
        assert [h for h in ls_client.webhooks.list(project=str(project)) if h.url == url] == []
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and errors == []


class DaemonProcess:
    """``ls-space-sync -c CONFIG run`` as a child process, its output in a file."""

    def __init__(self, cfg: Path, port: int):
        exe = Path(sys.executable).parent / "ls-space-sync"
        command = [str(exe)] if exe.exists() else [shutil.which("ls-space-sync") or "ls-space-sync"]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LABEL_STUDIO_", "LS_SPACE_SYNC_")) and not k.lower().endswith("_proxy")}
        self.log_path = cfg.parent / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*command, "-c", str(cfg), "run"], cwd=cfg.parent, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"

    def health(self) -> dict | None:
        try:
            r = httpx.get(f"{self.url}/health", timeout=5, trust_env=False)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def daemon_process():
    made: list[DaemonProcess] = []

    def start(cfg: Path, port: int) -> DaemonProcess:
        d = DaemonProcess(cfg, port)
        made.append(d)
        wait_for(lambda: d.proc.poll() is not None or d.health(), 60, "the daemon's /health")
        assert d.proc.poll() is None, d.log()
        return d

    yield start
    for d in made:
        d.stop()


def test_daemon_process_syncs_and_exits_0_on_sigterm(tmp_path, label_studio, project, daemon_process):
    port = free_port()
    cfg = config_file(tmp_path, label_studio, project, port)
    settings = load_settings(cfg, env={})
    d = daemon_process(cfg, port)
    state = StateDB(settings.resolved_state_url)
    run = wait_for(lambda: state.last_run(project, status=SUCCEEDED), 60, "a succeeded run")
    assert (run.trigger, run.inserted, run.tag) == ("schedule", 4, "run-000001")
    health = d.health()
    assert health["status"] == "UP" and health["projects"][str(project)]["last_run"]["status"] == SUCCEEDED
    assert d.terminate() == 0
    assert [r.status for r in state.runs(project)] == [SUCCEEDED]
    assert state.running_runs(project) == []
    state.dispose()
    lines = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    run_lines = [line for line in lines if line.get("run_id") == run.run_id]
    assert run_lines and all(line["project"] == project for line in run_lines)
    assert any(line["message"] == "stopped" for line in lines)
    assert label_studio.api_key not in d.log() and SECRET not in d.log()


def test_daemon_keeps_running_through_a_label_studio_outage(tmp_path, label_studio, project, daemon_process):
    port = free_port()
    cfg = config_file(tmp_path, label_studio, project, port, sync={"interval_seconds": 2},
                      scheduler={"max_backoff_seconds": 4})
    settings = load_settings(cfg, env={})
    state = StateDB(settings.resolved_state_url)
    d = daemon_process(cfg, port)
    try:
        wait_for(lambda: state.last_run(project, status=SUCCEEDED), 60, "a succeeded run")
        label_studio.stop()
        wait_for(lambda: len([r for r in state.runs(project, limit=50) if r.status == FAILED]) >= 2, 60,
                 "two failed runs while Label Studio is down")
        assert d.proc.poll() is None  # still running
        health = d.health()
        assert health["projects"][str(project)]["consecutive_failures"] >= 2
        assert "cannot reach Label Studio" in state.last_run(project, status=FAILED).error
        label_studio.start()
        down_until = state.last_run(project, status=FAILED).started_at
        wait_for(lambda: any(r.status in (SUCCEEDED, SKIPPED) and r.started_at > down_until
                             for r in state.runs(project, limit=5)), 60, "a good run after the server is back", step=0.2)
        wait_for(lambda: d.health()["projects"][str(project)]["consecutive_failures"] == 0, 10, "failures reset")
        assert d.terminate() == 0
        assert [r for r in state.runs(project, limit=100) if r.status == RUNNING] == []
    finally:
        if not label_studio.is_running():
            label_studio.start()
        state.dispose()


def test_connected_as_a_model_annotations_sync_without_a_webhook_set_up(tmp_path, label_studio, ls_client, project):
    """Label Studio's Model settings: add the service's ML-backend URL; the server then creates
    the webhook itself and annotation events reach the store (ML_BLOCK_LOCAL_IP=false on the test
    server lets it call 127.0.0.1)."""
    port = free_port()
    cfg = config_file(tmp_path, label_studio, project, port)
    settings = load_settings(cfg, env={})
    store = ProjectStore(settings.resolved_store_root, project)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings,), kwargs={"stop_event": stop}, name="service")
    thread.start()
    try:
        wait_for(lambda: "run-000001" in store.tags(), 60, "the sync at start")
        backend = ls_client.ml.create(project=project, url=f"http://127.0.0.1:{port}/ml/{SECRET}",
                                      title="ls-space-sync", is_interactive=False)
        hooks = [h.url for h in ls_client.webhooks.list(project=str(project))]
        assert any(url.startswith(f"http://127.0.0.1:{port}/ml/") for url in hooks), hooks
        task_id = min(t.id for t in ls_client.tasks.list(project=project))
        before = len(store.tags())
        ls_client.annotations.create(id=task_id, result=RESULT)
        wait_for(lambda: len(store.tags()) > before, 20, "a new tagged version through the ML-backend webhook")
        state = StateDB(settings.resolved_state_url)
        assert state.runs(project, limit=1)[0].trigger == "webhook"
        state.dispose()
        bad = httpx.post(f"http://127.0.0.1:{port}/ml/wrong-secret/webhook", json={"action": "ANNOTATION_CREATED"},
                         timeout=10, trust_env=False)
        assert bad.status_code in (401, 404)
        ls_client.ml.delete(id=backend.id)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
