"""The HTTP endpoints (FastAPI TestClient) around a real daemon and the in-memory Label Studio."""

from __future__ import annotations

import hmac
import json
import time

import pytest
import respx
from fastapi.testclient import TestClient

from ls_space_sync.service.daemon import Daemon
from ls_space_sync.service.http import create_app, model_version
from ls_space_sync.store.state import SUCCEEDED
from tests.fakes import FakeLabelStudio
from tests.unit.test_daemon import make_settings, sample, wait_for

SECRET = "unit-webhook-secret"
HEADER = "X-LS-Space-Sync-Secret"


def event(action="ANNOTATION_CREATED", project=1, **extra):
    body = {"action": action, "project": {"id": project, "title": "p"} if isinstance(project, int) else project}
    body.update(extra)
    return body


@pytest.fixture
def service(tmp_path, fake):
    """``service(**overrides) -> (daemon, client)``; the daemon starts paused unless ``running=True``."""
    made = []

    def make(running=False, **overrides):
        server = {"webhook_secret": SECRET, "debounce_seconds": 0.5, **overrides.pop("server", {})}
        settings = make_settings(tmp_path, server=server, **overrides)
        d = Daemon(settings)
        if running:
            d.start()
        else:
            d.scheduler.start(paused=True)
            d.set_projects(list(settings.projects))
        client = TestClient(create_app(d))
        made.append((d, client))
        return d, client

    yield make
    for d, client in made:
        client.close()
        d.stop(timeout=5)


def webhook_jobs(d):
    return [j.id for j in d.scheduler.get_jobs() if j.id.startswith("webhook-")]


def test_health_reports_each_project_and_speaks_ml_backend(service):
    d, client = service(projects=[1, 2])
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "UP"  # what Label Studio checks on an ML backend
    assert set(body["projects"]) == {"1", "2"}
    assert body["projects"]["1"]["last_run"] is None
    assert body["projects"]["1"]["next_run_at"] is not None
    assert client.get("/").json()["status"] == "UP"
    assert client.get(f"/ml/{SECRET}/health").status_code == 200
    assert client.get("/ml/wrong/health").status_code == 401


def test_metrics_are_prometheus_text(service):
    d, client = service()
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'ls_space_sync_seconds_since_last_success{project="1"} +Inf' in r.text  # never synced yet


def test_webhook_needs_the_secret_compared_in_constant_time(service, monkeypatch):
    d, client = service()
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    assert client.post("/webhook", json=event()).status_code == 401
    r = client.post("/webhook", json=event(), headers={HEADER: "wrong"})
    assert r.status_code == 401 and HEADER in r.json()["detail"]
    assert webhook_jobs(d) == []
    r = client.post("/webhook", json=event(), headers={HEADER: SECRET})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "scheduled"
    assert webhook_jobs(d) == ["webhook-1"]
    assert compared == [1, 1]
    assert sample(d, "ls_space_sync_webhook_rejected_total", reason="auth") == 2
    assert sample(d, "ls_space_sync_webhook_events_total", action="ANNOTATION_CREATED") == 1


def test_without_a_secret_the_webhook_endpoints_are_off(service):
    d, client = service(server={"webhook_secret": None})
    r = client.post("/webhook", json=event(), headers={HEADER: ""})
    assert r.status_code == 404
    assert "server.webhook_secret" in r.json()["detail"]
    assert client.post("/ml/anything/webhook", json=event()).status_code == 404
    assert client.get("/health").status_code == 200
    assert webhook_jobs(d) == []


@pytest.mark.parametrize("body, status, reason", [
    (b"not json", 400, "not JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (json.dumps({"project": {"id": 1}}).encode(), 422, "action"),
    (json.dumps({"action": "ANNOTATION_CREATED"}).encode(), 422, "project"),
    (json.dumps({"action": "TASKS_DELETED", "project": None}).encode(), 422, "project"),  # delete_all_tasks
    (json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": "1"}}).encode(), 422, "project"),
    (json.dumps(event(project=7)).encode(), 404, "project 7 is not synced"),
])
def test_bad_bodies_get_a_reason_and_change_nothing(service, body, status, reason):
    d, client = service()
    r = client.post("/webhook", content=body, headers={HEADER: SECRET, "content-type": "application/json"})
    assert r.status_code == status
    assert reason in r.json()["detail"]
    assert webhook_jobs(d) == []


def test_body_size_is_limited(service):
    d, client = service(server={"max_body_bytes": 1000})
    big = json.dumps(event(annotation={"result": "x" * 2000})).encode()
    r = client.post("/webhook", content=big, headers={HEADER: SECRET})
    assert r.status_code == 413
    assert "max_body_bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(20):
            yield b" " * 100
        yield json.dumps(event()).encode()

    r = client.post("/webhook", content=chunks(), headers={HEADER: SECRET})
    assert r.status_code == 413
    assert webhook_jobs(d) == []
    small = client.post("/webhook", json=event(), headers={HEADER: SECRET})
    assert small.status_code == 202


def test_events_that_change_nothing_are_counted_but_not_synced(service):
    d, client = service()
    r = client.post("/webhook", json=event("PROJECT_CREATED"), headers={HEADER: SECRET})
    assert (r.status_code, r.json()["status"]) == (200, "ignored")
    client.post("/webhook", json=event("SOMETHING_NEW"), headers={HEADER: SECRET})
    assert webhook_jobs(d) == []
    assert sample(d, "ls_space_sync_webhook_events_total", action="PROJECT_CREATED") == 1
    assert sample(d, "ls_space_sync_webhook_events_total", action="other") == 1


def test_ml_backend_protocol(service):
    d, client = service()
    setup = {"project": "1.1700000000", "schema": "<View/>", "hostname": "http://ls", "access_token": "tok"}
    assert client.post("/setup", json=setup).json() == {"model_version": model_version()}
    assert client.post(f"/ml/{SECRET}/setup", json=setup).json() == {"model_version": model_version()}
    assert client.post("/ml/wrong/setup", json=setup).status_code == 401
    r = client.post("/predict", json={"tasks": [{"id": 1, "data": {}}], "project": "1.1700000000"})
    assert r.json() == {"results": [], "model_version": model_version()}
    assert client.get(f"/ml/{SECRET}/versions").json()["versions"] == [model_version()]
    # The webhook Label Studio creates for an ML backend has no custom header: the path holds the secret.
    assert client.post("/ml/wrong/webhook", json=event()).status_code == 401
    assert webhook_jobs(d) == []
    assert client.post(f"/ml/{SECRET}/webhook", json=event()).status_code == 202
    assert webhook_jobs(d) == ["webhook-1"]


def test_a_burst_of_100_events_gives_at_most_two_runs(service, fake):
    for i in range(3):
        fake.add(f"t{i}")
    # The default debounce (2 s): a burst shorter than that gives one run, or two if it straddles a run.
    d, client = service(running=True, sync={"interval_seconds": 3600}, server={"debounce_seconds": 2})
    wait_for(lambda: d.state.last_run(1, status=SUCCEEDED))  # the sync at start
    started = time.monotonic()
    for i in range(100):
        if i % 10 == 0:
            fake.touch(1 + i % 3, text=f"edit {i}")
        fake.tick(1)
        r = client.post("/webhook", json=event(), headers={HEADER: SECRET})
        assert r.status_code == 202
    wait_for(lambda: not webhook_jobs(d) and not d._running, timeout=15)
    time.sleep(0.2)
    burst = time.monotonic() - started
    runs = [r for r in d.state.runs(1) if r.trigger == "webhook"]
    assert 1 <= len(runs) <= 2, f"{len(runs)} runs for a burst of {burst:.2f} s"
    assert all(r.status == SUCCEEDED for r in runs)
    stored = d.syncer.store(1).dataset().to_table(columns=["id", "data_json"]).to_pylist()
    assert {json.loads(r["data_json"])["text"] for r in stored} >= {"edit 90"}
    assert sample(d, "ls_space_sync_webhook_events_total", action="ANNOTATION_CREATED") == 100


# --- webhooks install / remove (respx: Label Studio's /api/webhooks/) ---------------------------

def test_webhooks_install_is_idempotent_and_remove_takes_only_ours(tmp_path):
    from ls_space_sync.service.webhooks import apply

    settings = make_settings(tmp_path, projects=[1, 2], server={"webhook_secret": SECRET, "port": 9191})
    with respx.mock(assert_all_called=False) as router:
        fake = FakeLabelStudio().mount(router)
        other = fake.add_webhook(project=1, url="http://elsewhere/hook")
        created = apply(settings, "install")
        assert [(c.project_id, c.action) for c in created] == [(1, "created"), (2, "created")]
        ours = [h for h in fake.webhooks.values() if h["url"] == "http://127.0.0.1:9191/webhook"]
        assert len(ours) == 2
        assert all(h["headers"] == {HEADER: SECRET} and h["send_payload"] and h["send_for_all_actions"] for h in ours)
        assert [c.action for c in apply(settings, "install")] == ["unchanged", "unchanged"]
        # A new secret: the header is updated in place; a duplicate of ours is removed.
        fake.add_webhook(project=2, url="http://127.0.0.1:9191/webhook", headers={HEADER: SECRET})
        rotated = make_settings(tmp_path, projects=[1, 2], server={"webhook_secret": "rotated-secret", "port": 9191})
        assert [c.action for c in apply(rotated, "install")] == ["updated", "updated"]
        ours = [h for h in fake.webhooks.values() if h["url"] == "http://127.0.0.1:9191/webhook"]
        assert len(ours) == 2 and all(h["headers"] == {HEADER: "rotated-secret"} for h in ours)
        removed = apply(settings, "remove")
        assert [c.action for c in removed] == ["removed", "removed"]
        assert list(fake.webhooks.values()) == [other]  # only ours went
        assert [c.action for c in apply(settings, "remove")] == ["absent", "absent"]


def test_webhooks_install_needs_a_secret(tmp_path):
    from ls_space_sync.settings import ConfigError
    from ls_space_sync.service.webhooks import apply

    with respx.mock(assert_all_called=False) as router:
        FakeLabelStudio().mount(router)
        with pytest.raises(ConfigError, match="webhook_secret"):
            apply(make_settings(tmp_path, server={"webhook_secret": None}), "install")
