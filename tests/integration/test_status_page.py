"""The status page in a real headless browser (the system's Chromium), served by the daemon
against the real Label Studio: it renders, its numbers are ``/health``'s, what it shows is
escaped, and it needs ``server.auth``.

``LS_SPACE_SYNC_STATUS_SCREENSHOT=docs/status-page.png`` also writes the screenshot there (the
one docs/service.md and the README show); by default it goes to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from ls_space_sync.quickstart.localserver import free_port
from ls_space_sync.service.http import serve
from ls_space_sync.settings import load_settings
from ls_space_sync.store.dataset import ProjectStore
from tests.integration.test_service import CONFIG, RESULT, wait_for
from tests.unit.test_status_page import BROWSER, fields

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install chromium; .ci/run installs it)
TOKEN = "integration-status-token"
SECRET = "integration-webhook-secret"
TITLE = 'Reviews <script>alert("owned")</script> &amp;'  # Label Studio allows 50 characters
BROWSER_TIMEOUT = 90  # seconds per Chromium run (a cold start on a busy 2-core machine takes ~3 s)


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Run headless Chromium on ``url`` with ``args``; return its stdout. Fails (never skips) without it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)", pytrace=False)
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--hide-scrollbars", "--disable-background-networking",
           f"--user-data-dir={profile}", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def projects(new_project, ls_client):
    """``(synced, mirror source, mirror target)``: a project with a title to escape and 5 tasks, and a
    one-way mirror pair whose source has 3."""
    synced = new_project(CONFIG, title=TITLE)
    ls_client.projects.import_tasks(id=synced, request=[{"data": {"text": f"review {i}"}} for i in range(5)])
    source = new_project(CONFIG, title="status page mirror source")
    target = new_project(CONFIG, title="status page mirror target")
    ls_client.projects.import_tasks(id=source, request=[{"data": {"text": f"mirrored {i}"}} for i in range(3)])
    return synced, source, target


def test_the_page_in_a_headless_browser_shows_what_health_reports(tmp_path, label_studio, ls_client, projects):
    synced, source, target = projects
    port = free_port()
    settings = load_settings(
        env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
        overrides={"data_dir": str(tmp_path / "data"), "projects": [synced], "log_format": "json",
                   "label_studio": {"retries": 0, "timeout_seconds": 10},
                   "sync": {"lag_seconds": 0, "interval_seconds": 3600},
                   "scheduler": {"jitter_seconds": 0, "shutdown_timeout_seconds": 30},
                   "server": {"port": port, "auth": TOKEN, "webhook_secret": SECRET, "debounce_seconds": 0.2},
                   "mirrors": [{"source": source, "target": target}]},
    )
    assert settings.server.host == "127.0.0.1"  # the default bind
    url = f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    store = ProjectStore(settings.resolved_store_root, synced)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve(settings, stop_event=stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    def health() -> dict:
        return httpx.get(f"{url}/health", headers=bearer, timeout=10, trust_env=False).json()

    thread = threading.Thread(target=run, name="service")
    thread.start()
    try:
        wait_for(lambda: "run-000001" in store.tags(), 60, "the sync at start")
        wait_for(lambda: health()["mirrors"][f"{source}-{target}"]["last_pass"], 60, "the first mirror pass")
        # A webhook-triggered run: an annotation and two new tasks, so the last diff has updates too.
        task = next(iter(ls_client.tasks.list(project=synced)))
        ls_client.annotations.create(id=task.id, result=RESULT)
        ls_client.projects.import_tasks(id=synced, request=[{"data": {"text": f"late {i}"}} for i in range(2)])
        hook = httpx.post(f"{url}/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": synced}},
                          headers={"X-LS-Space-Sync-Secret": SECRET}, timeout=10, trust_env=False)
        assert hook.status_code == 202, hook.text
        wait_for(lambda: "run-000002" in store.tags(), 30, "the webhook's run")
        wait_for(lambda: health()["projects"][str(synced)]["last_run"]["tag"] == "run-000002", 10,
                 "the run recorded")

        # auth: the state endpoints refuse a request without the token, and a browser gets the challenge
        for path in ("/", "/health", "/metrics"):
            refused = httpx.get(f"{url}{path}", headers={"Accept": BROWSER}, timeout=10, trust_env=False)
            assert refused.status_code == 401, path
            assert "Basic" in ",".join(refused.headers.get_list("www-authenticate"))
        unauthorized = chromium(tmp_path, f"{url}/", "--dump-dom")
        assert "Reviews" not in unauthorized  # the browser's login prompt, cancelled when headless: nothing

        before = health()
        dom = chromium(tmp_path, f"http://status:{TOKEN}@127.0.0.1:{port}/", "--dump-dom")
        after = health()
        def steady(report: dict) -> dict:  # what only a run can change
            return {pid: {k: v for k, v in entry.items() if k != "seconds_since_success"}
                    for pid, entry in report["projects"].items()}

        assert steady(before) == steady(after)  # nothing ran while the browser read the page
        page = fields(dom)
        assert "<title>ls-space-sync status</title>" in dom  # the script in the title did not run
        assert page.text[(str(synced), "title")] == [TITLE]  # shown as text
        assert "<script>alert" not in dom and "&lt;script&gt;" in dom

        for pid, entry in after["projects"].items():
            run = entry["last_run"]
            for key in ("status", "trigger", "inserted", "updated", "deleted", "tag", "version"):
                assert page.text[(pid, f"last_run.{key}")] == [str(run[key])], (pid, key)
            assert page.times[(pid, "last_run.started_at")] == [run["started_at"]]
            assert page.times[(pid, "next_run_at")] == [entry["next_run_at"] or ""]
            assert page.text[(pid, "consecutive_failures")] == [str(entry["consecutive_failures"])]
            tags = ProjectStore(settings.resolved_store_root, int(pid)).tags()
            assert page.text[(pid, "tag_count")] == [str(len(tags))]
            assert page.text[(pid, "version")] == [str(v) for v in sorted(tags.values(), reverse=True)]
        run = after["projects"][str(synced)]["last_run"]
        assert (run["inserted"], run["updated"], run["deleted"], run["trigger"]) == (2, 1, 0, "webhook")
        assert page.text[(str(synced), "rows")] == ["7", "5"]  # tasks at run-000002, run-000001
        assert page.text[(str(synced), "inserted")] == ["2", "5"]  # the last diffs, newest first
        assert page.times[(str(synced), "last_webhook_run_at")] == [run["started_at"]]
        assert f'href="{label_studio.url}/projects/{synced}/data"' in dom
        mirror = after["mirrors"][f"{source}-{target}"]
        assert str(source) in after["projects"] and mirror["last_pass"]["moved"] == 3
        assert f'data-mirror="{source}-{target}"' in dom

        shot = Path(os.environ.get("LS_SPACE_SYNC_STATUS_SCREENSHOT") or tmp_path / "status-page.png")
        made = tmp_path / "screenshot.png"
        chromium(tmp_path, f"http://status:{TOKEN}@127.0.0.1:{port}/", f"--screenshot={made}",
                 "--window-size=1280,900")
        assert made.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and made.stat().st_size > 10_000
        if shot != made:
            shot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(made, shot)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and errors == []
