"""Media against the real Label Studio 1.23.2: files imported through Label Studio's upload,
local-files serving, an http URL on a loopback server, a 404, the same image in two tasks, an
image replaced under the same URL between two runs, and a kill -9 during the media fetch."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import lance
import pytest
from PIL import Image

from ls_space_sync.media.store import FAILED, STORED, MediaStore
from ls_space_sync.pull.run import Syncer
from ls_space_sync.settings import load_settings
from ls_space_sync.store.state import FAILED as RUN_FAILED
from ls_space_sync.store.state import StateDB

pytestmark = pytest.mark.integration

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<Choices name="label" toName="image"><Choice value="cat"/><Choice value="dog"/></Choices></View>')


def png(color: str, size: tuple[int, int] = (16, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


class Files:
    """A loopback http server over a folder; ``delay`` seconds per GET, ``served`` counts them."""

    def __init__(self, root: Path):
        self.root, self.delay, self.served = root, 0.0, 0
        files = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                files.served += 1
                time.sleep(files.delay)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def files(tmp_path) -> Iterator[Files]:
    (tmp_path / "www").mkdir()
    f = Files(tmp_path / "www")
    yield f
    f.close()


def settings_for(label_studio, data_dir: Path, **media):
    return load_settings(env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
                         overrides={"data_dir": str(data_dir), "sync": {"lag_seconds": 0},
                                    "label_studio": {"retries": 1, "retry_max_wait_seconds": 0.1},
                                    "media": {"enabled": True, "concurrency": 4, **media}})


def upload(label_studio, pid: int, name: str, content: bytes) -> None:
    """Import an image file as a task, as the UI's import does (``POST /api/projects/{id}/import``)."""
    resp = httpx.post(f"{label_studio.url}/api/projects/{pid}/import", files={"file": (name, content, "image/png")},
                      headers={"Authorization": f"Token {label_studio.api_key}"}, timeout=60, trust_env=False)
    resp.raise_for_status()


def test_media_of_every_url_form_versioned_with_the_tasks(label_studio, ls_client, new_project, files, tmp_path):
    pid = new_project(CONFIG, title="media: every url form")
    upload(label_studio, pid, "red.png", png("red"))
    upload(label_studio, pid, "blue.png", png("blue", (20, 10)))
    # Local files: a project's local storage under LOCAL_FILES_DOCUMENT_ROOT (tests/conftest.py).
    root = Path(label_studio.extra_env["LOCAL_FILES_DOCUMENT_ROOT"])
    (root / f"p{pid}").mkdir()
    (root / f"p{pid}" / "green.png").write_bytes(png("green"))
    ls_client.import_storage.local.create(project=pid, path=str(root / f"p{pid}"), use_blob_urls=True)
    (files.root / "yellow.png").write_bytes(png("yellow"))
    (files.root / "red-copy.png").write_bytes(png("red"))
    ls_client.projects.import_tasks(id=pid, request=[
        {"data": {"image": f"/data/local-files/?d=p{pid}/green.png"}},
        {"data": {"image": f"{files.url}/yellow.png"}},
        {"data": {"image": f"{files.url}/yellow.png"}},  # the same image in two tasks
        {"data": {"image": f"{files.url}/red-copy.png"}},  # the same bytes as an upload
        {"data": {"image": f"{files.url}/missing.png"}},  # 404
    ])
    with Syncer(settings_for(label_studio, tmp_path / "data")) as syncer:
        first = syncer.run_once(pid)
        assert (first.status, first.inserted, first.tag) == ("succeeded", 7, "run-000001")
        media = MediaStore(syncer.store(pid))
        refs = media.ref_rows(version="run-000001")
        assert len(refs) == 6
        assert refs[f"{files.url}/missing.png"]["status"] == FAILED
        assert refs[f"{files.url}/missing.png"]["reason"].startswith("HTTP 404")
        assert all(r["status"] == STORED for u, r in refs.items() if "missing" not in u)
        uploads = [u for u in refs if u.startswith(f"/data/upload/{pid}/")]
        assert len(uploads) == 2
        blobs = {b["sha256"]: b for b in media.blobs().to_table(columns=["sha256", "width", "height", "mime"]).to_pylist()}
        assert len(blobs) == 4  # red (upload and copy), blue, green, yellow
        by_bytes = media.read_bytes(list(blobs))
        assert sorted(by_bytes.values()) == sorted([png("red"), png("blue", (20, 10)), png("green"), png("yellow")])
        local = refs[f"/data/local-files/?d=p{pid}/green.png"]
        assert (blobs[local["sha256"]]["width"], blobs[local["sha256"]]["height"]) == (16, 12)

        # The file changes under the same URL, and a task that shows it gets an annotation.
        (files.root / "yellow.png").write_bytes(png("purple"))
        (files.root / "missing.png").write_bytes(png("black"))
        task = next(t for t in ls_client.tasks.list(project=pid) if t.data["image"].endswith("yellow.png"))
        ls_client.annotations.create(id=task.id, result=[
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}])
        time.sleep(1.1)
        second = syncer.run_once(pid)
        assert (second.status, second.tag) == ("succeeded", "run-000002")
        old, new = media.mapping("run-000001"), media.mapping("run-000002")
        yellow = f"{files.url}/yellow.png"
        assert media.read_bytes([old[yellow]])[old[yellow]] == png("yellow")  # the old tag keeps the old bytes
        assert media.read_bytes([new[yellow]])[new[yellow]] == png("purple")
        assert f"{files.url}/missing.png" in new and media.failed() == []

        # Nothing changed: no media request (the loopback server sees none).
        served = files.served
        time.sleep(1.1)
        assert syncer.run_once(pid).status == "skipped"
        assert files.served == served


def test_kill_9_during_the_media_fetch_then_the_next_run_finishes(label_studio, ls_client, new_project, files,
                                                                  tmp_path):
    pid = new_project(CONFIG, title="media: kill -9 during the fetch")
    for i in range(24):
        (files.root / f"{i}.png").write_bytes(png((i * 10, 0, 0), (8 + i, 8)))
    tasks = [{"data": {"image": f"{files.url}/{i % 20}.png"}} for i in range(24)]  # 4 URLs in two tasks
    ls_client.projects.import_tasks(id=pid, request=tasks)
    data = tmp_path / "data"
    config = tmp_path / "media.yaml"
    config.write_text(f"label_studio: {{url: '{label_studio.url}', retries: 1}}\ndata_dir: '{data}'\n"
                      "sync: {lag_seconds: 0}\nmedia: {enabled: true, concurrency: 2}\n")
    env = {**os.environ, "LABEL_STUDIO_API_KEY": label_studio.api_key}
    files.delay = 0.25
    proc = subprocess.Popen([sys.executable, "-m", "ls_space_sync", "-c", str(config), "sync", "-p", str(pid)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while files.served < 6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the sync ended before the kill: " + proc.stderr.read().decode()[-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    files.delay = 0.0
    settings = settings_for(label_studio, data, concurrency=2)
    with Syncer(settings) as syncer:
        assert not syncer.store(pid).exists()
        result = syncer.run_once(pid)
        assert (result.status, result.inserted) == ("succeeded", 24)
        media = MediaStore(syncer.store(pid))
        shas = media.blobs().to_table(columns=["sha256"]).column("sha256").to_pylist()
        assert len(shas) == len(set(shas)) == 20  # nothing stored twice, whatever the killed run appended
        mapping = media.mapping(result.tag)
        assert len(mapping) == 20
        assert media.read_bytes([mapping[f"{files.url}/7.png"]]) == {mapping[f"{files.url}/7.png"]: png((70, 0, 0), (15, 8))}
        assert list(lance.dataset(media.refs_uri).tags.list()) == [result.tag]
    assert not list((data / "datasets" / ".staging").glob("media-*"))
    state = StateDB(settings.resolved_state_url)
    try:
        assert [r.status for r in state.runs(pid)] == ["succeeded", RUN_FAILED]  # newest first
    finally:
        state.dispose()


def test_the_quickstart_image_template_syncs_with_its_images(label_studio, tmp_path):
    from ls_space_sync.quickstart.demo import TEMPLATE_BBOX, create_template_project

    pid = create_template_project(label_studio.url, label_studio.api_key, TEMPLATE_BBOX, title="media: quickstart bbox")
    with Syncer(settings_for(label_studio, tmp_path / "data")) as syncer:
        result = syncer.run_once(pid)
        media = MediaStore(syncer.store(pid))
        sizes = sorted((b["width"], b["height"]) for b in media.blobs().to_table(columns=["width", "height"]).to_pylist())
    assert result.inserted == 3 and media.failed() == []
    assert sizes == [(500, 333), (600, 403), (800, 800)]  # Label Studio's /static/samples/*.jpg
    with httpx.Client(trust_env=False) as http:
        http.delete(f"{label_studio.url}/api/projects/{pid}/", headers={"Authorization": f"Token {label_studio.api_key}"})
