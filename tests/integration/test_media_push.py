"""``push --media reupload`` against the real Label Studio 1.23.2: the uploaded files of a synced
image project are deleted from the server's media folder, then a push of the tag uploads the
stored bytes again (each sha256 once) and the pushed tasks' image URLs serve those bytes."""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner

from ls_space_sync.cli.console import main
from ls_space_sync.media.store import MediaStore
from ls_space_sync.pull.run import Syncer
from tests.integration.test_media import CONFIG, png, settings_for, upload

pytestmark = pytest.mark.integration


def test_push_reuploads_media_the_server_no_longer_has(label_studio, ls_client, new_project, tmp_path):
    pid = new_project(CONFIG, title="media push: reupload")
    upload(label_studio, pid, "red.png", png("red"))
    upload(label_studio, pid, "red-again.png", png("red"))  # the same bytes under a second URL
    upload(label_studio, pid, "blue.png", png("blue", (20, 10)))
    auth = {"Authorization": f"Token {label_studio.api_key}"}
    http = httpx.Client(base_url=label_studio.url, headers=auth, timeout=60, trust_env=False)
    settings = settings_for(label_studio, tmp_path / "data")
    with Syncer(settings) as syncer:
        assert syncer.run_once(pid).tag == "run-000001"
        stored = MediaStore(syncer.store(pid))
        refs = stored.ref_rows(version="run-000001")
        by_sha = stored.read_bytes(sorted({r["sha256"] for r in refs.values()}))
        assert len(refs) == 3 and len(by_sha) == 2
    # The files leave the server's media folder (data_dir/media/upload/<project>/).
    files = [p for p in label_studio.data_dir.rglob(f"upload/{pid}/*") if p.is_file()]
    assert len(files) == 3
    for f in files:
        f.unlink()
    gone = {url: http.get(url).status_code for url in refs}
    assert all(status >= 400 for status in gone.values()), gone

    out = _push(label_studio, tmp_path, pid, "--new-project")
    assert out.exit_code == 0, out.output
    assert "2 media files re-uploaded" in out.output
    target = max(p.id for p in ls_client.projects.list())
    tasks = list(ls_client.tasks.list(project=target))
    source = {t.id: t.data["image"] for t in ls_client.tasks.list(project=pid)}
    assert len(tasks) == 3
    urls = [t.data["image"] for t in tasks]
    assert all(u.startswith(f"/data/upload/{target}/") for u in urls)
    assert len(set(urls)) == 2  # the red file was uploaded once, for both of its tasks
    for task in tasks:
        origin = task.meta["ls_space_sync"]
        source_url = source[origin["source_id"]]
        got = http.get(task.data["image"])
        assert got.status_code == 200
        assert got.content == by_sha[refs[source_url]["sha256"]]

    # Served now: a push to the same project again sends nothing and uploads nothing.
    again = _push(label_studio, tmp_path, pid, "--to-project", str(target))
    assert again.exit_code == 0, again.output
    assert "+0 ~0 -0" in again.output and "re-uploaded" not in again.output
    http.close()


def _push(label_studio, tmp_path, pid: int, *where: str):
    """``ls-space-sync push -p PID --tag run-000001 --media reupload WHERE...``."""
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key,
           "LS_SPACE_SYNC__MEDIA__ENABLED": "true"}
    args = ["--data-dir", str(tmp_path / "data"), "push", "-p", str(pid), "--tag", "run-000001", *where,
            "--media", "reupload"]
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)
