"""The media step of a sync run against the in-memory Label Studio (respx): which keys, URL forms,
content addressing, per-tag bytes, failures recorded and retried, retries, crash safety."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import lance
import pytest
import respx
from PIL import Image

from ls_space_sync.media.fetch import resolve
from ls_space_sync.media.keys import media_keys
from ls_space_sync.media.store import FAILED, STORED, MediaStore
from ls_space_sync.pull.run import Syncer
from ls_space_sync.settings import load_settings
from tests.fakes import KEY, URL, FakeLabelStudio

IMAGE_CONFIG = ('<View><Image name="img" value="$image"/><Text name="cap" value="$caption"/>'
                '<RectangleLabels name="box" toName="img"><Label value="cat"/></RectangleLabels></View>')
CDN = "http://cdn.test"


def png(color: str, size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


class Files:
    """Media files served by respx: Label Studio's uploads (token required), a CDN, a presign target."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_next: dict[str, list[int]] = {}
        self.calls: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        url = str(request.url)
        if url.startswith(URL) and request.headers.get("authorization") != f"Token {KEY}":
            return httpx.Response(401)
        if url.startswith(CDN) and "authorization" in request.headers:
            return httpx.Response(400)  # the token must never reach another host
        if self.fail_next.get(url):
            return httpx.Response(self.fail_next[url].pop(0))
        if url.startswith(f"{URL}/tasks/"):  # Label Studio's resolve endpoint: 303 to a presigned URL
            uri = base64.urlsafe_b64decode(request.url.params["fileuri"]).decode()
            return httpx.Response(303, headers={"Location": f"{CDN}/presigned/{uri[len('s3://'):]}?sig=x"})
        key = url.split("?sig=")[0]
        if key not in self.files:
            return httpx.Response(404, text="not found")
        return httpx.Response(200, content=self.files[key], headers={"Content-Type": "image/png"})


@pytest.fixture
def env() -> Iterator[tuple[FakeLabelStudio, Files]]:
    files = Files()
    with respx.mock(assert_all_called=False) as router:
        for prefix in (f"{URL}/data/", f"{URL}/tasks/", CDN):
            router.route(url__startswith=prefix).mock(side_effect=files.handle)
        yield FakeLabelStudio().mount(router), files


def syncer_for(tmp_path, **media) -> Syncer:
    settings = load_settings(
        env={"LABEL_STUDIO_URL": URL, "LABEL_STUDIO_API_KEY": KEY},
        overrides={"data_dir": str(tmp_path), "sync": {"page_size": 10, "lag_seconds": 5},
                   "label_studio": {"retries": 2, "retry_max_wait_seconds": 0.01},
                   "media": {"enabled": True, "concurrency": 4, **media}},
    )
    return Syncer(settings)


def image_project(fake: FakeLabelStudio, files: Files) -> int:
    pid = fake.project("images", IMAGE_CONFIG)
    files.files[f"{URL}/data/upload/{pid}/red.png"] = png("red")
    files.files[f"{CDN}/blue.png"] = png("blue", (10, 4))
    files.files[f"{CDN}/presigned/bucket/green.png"] = png("green")
    for image in (f"/data/upload/{pid}/red.png", f"/data/upload/{pid}/red.png", f"{CDN}/blue.png",
                  "s3://bucket/green.png", f"{CDN}/missing.png"):
        fake.import_task(pid, {"data": {"image": image, "caption": f"{CDN}/not-media-by-config.png"}})
    return pid


def test_media_keys_come_from_media_tags_or_the_override():
    assert media_keys(IMAGE_CONFIG) == ["image"]
    both = '<View><Audio name="a" value="$audio"/><Video name="v" value="$clip"/><Text name="t" value="$text"/></View>'
    assert media_keys(both) == ["audio", "clip"]
    assert media_keys(both, ["text"]) == ["text"]
    assert media_keys("<View><Image") == []


def test_resolve_uses_the_server_for_its_own_paths_and_cloud_uris():
    assert resolve("/data/upload/3/a.png", 7, URL) == (f"{URL}/data/upload/3/a.png", True)
    assert resolve("/data/local-files/?d=img/a.png", 7, URL) == (f"{URL}/data/local-files/?d=img/a.png", True)
    target, token = resolve("s3://b/k.png", 7, URL)
    assert token and target.startswith(f"{URL}/tasks/7/resolve/?fileuri=")
    assert base64.urlsafe_b64decode(target.split("fileuri=")[1]).decode() == "s3://b/k.png"
    assert resolve(f"{CDN}/x.png", 7, URL) == (f"{CDN}/x.png", False)
    assert resolve(f"{URL}/data/upload/3/a.png", 7, URL)[1] is True


def test_a_run_stores_each_file_once_and_records_what_failed(tmp_path, env):
    fake, files = env
    pid = image_project(fake, files)
    syncer = syncer_for(tmp_path)
    result = syncer.run_once(pid)
    assert result.tag == "run-000001"
    media = MediaStore(syncer.store(pid))
    blobs = media.blobs().to_table(columns=["sha256", "mime", "width", "height"]).to_pylist()
    assert len(blobs) == 3  # red (two tasks), blue, green: the same bytes are stored once
    assert sorted((b["width"], b["height"]) for b in blobs) == [(8, 6), (8, 6), (10, 4)]
    refs = media.ref_rows(version="run-000001")
    assert {u: r["status"] for u, r in refs.items()} == {
        f"/data/upload/{pid}/red.png": STORED, f"{CDN}/blue.png": STORED, "s3://bucket/green.png": STORED,
        f"{CDN}/missing.png": FAILED}
    assert refs[f"{CDN}/missing.png"]["reason"] == "HTTP 404 from cdn.test"
    got = media.read_bytes([refs["s3://bucket/green.png"]["sha256"]])
    assert list(got.values()) == [png("green")]
    # The caption is a URL too, but no media tag reads it.
    assert not any("not-media" in str(r.url) for r in files.calls)


def test_an_old_tag_keeps_the_old_bytes_and_failures_are_retried(tmp_path, env):
    fake, files = env
    pid = image_project(fake, files)
    syncer = syncer_for(tmp_path)
    syncer.run_once(pid)
    red = f"/data/upload/{pid}/red.png"
    files.files[f"{URL}{red}"] = png("yellow")  # replaced under the same URL
    files.files[f"{CDN}/missing.png"] = png("black")  # there now
    first = next(t for t in fake.of(pid) if t["data"]["image"] == red)
    fake.touch(first["id"], caption="changed")
    fake.tick(60)
    assert syncer.run_once(pid).tag == "run-000002"
    media = MediaStore(syncer.store(pid))
    old, new = media.mapping("run-000001"), media.mapping("run-000002")
    assert media.read_bytes([old[red]])[old[red]] == png("red")
    assert media.read_bytes([new[red]])[new[red]] == png("yellow")
    assert f"{CDN}/missing.png" not in old and f"{CDN}/missing.png" in new
    assert media.failed() == []
    assert media.blobs().count_rows() == 5


def test_a_no_change_run_costs_no_media_request(tmp_path, env):
    fake, files = env
    pid = fake.project("images", IMAGE_CONFIG)
    files.files[f"{CDN}/blue.png"] = png("blue")
    fake.import_task(pid, {"data": {"image": f"{CDN}/blue.png"}})
    syncer = syncer_for(tmp_path)
    syncer.run_once(pid)
    fake.tick(3600)
    before, calls = len(files.calls), len(fake.calls)
    assert syncer.run_once(pid).status == "skipped"
    assert len(files.calls) == before and len(fake.calls) == calls + 2


def test_transient_errors_are_retried_and_too_large_files_refused(tmp_path, env):
    fake, files = env
    pid = fake.project("images", IMAGE_CONFIG)
    files.files[f"{CDN}/blue.png"] = png("blue")
    files.files[f"{CDN}/big.png"] = png("red", (400, 400))
    files.fail_next[f"{CDN}/blue.png"] = [503, 502]
    fake.import_task(pid, {"data": {"image": f"{CDN}/blue.png"}})
    fake.import_task(pid, {"data": {"image": f"{CDN}/big.png"}})
    fake.import_task(pid, {"data": {"image": "http://[bad/x.png"}})
    syncer = syncer_for(tmp_path, max_bytes=len(png("blue")) + 10)
    assert syncer.run_once(pid).status == "succeeded"
    refs = MediaStore(syncer.store(pid)).ref_rows()
    assert refs["http://[bad/x.png"]["status"] == FAILED
    assert refs[f"{CDN}/blue.png"]["status"] == STORED
    assert refs[f"{CDN}/big.png"]["status"] == FAILED and refs[f"{CDN}/big.png"]["reason"].startswith("too large")


def test_a_crash_after_the_media_commit_leaves_nothing_wrong(tmp_path, env, monkeypatch):
    fake, files = env
    pid = image_project(fake, files)
    syncer = syncer_for(tmp_path)
    from ls_space_sync.pull import run as pull_run

    def boom(self):
        raise KeyboardInterrupt("killed before the task commit")

    with monkeypatch.context() as m:
        m.setattr(pull_run._RunPlan, "commit", boom)
        with pytest.raises(KeyboardInterrupt):
            syncer.run_once(pid)
    media = MediaStore(syncer.store(pid))
    assert media.blobs().count_rows() == 3 and not syncer.store(pid).exists()
    result = syncer.run_once(pid)
    assert result.tag == "run-000002"
    assert media.blobs().count_rows() == 3  # fetched again, stored once
    assert len(media.mapping("run-000002")) == 3
    assert "run-000001" not in lance.dataset(media.refs_uri).tags.list()
    assert not list((tmp_path / "datasets" / ".staging").glob("media-*"))


def test_media_off_by_default_fetches_nothing(tmp_path, env):
    fake, files = env
    pid = image_project(fake, files)
    syncer = syncer_for(tmp_path, enabled=False)
    syncer.run_once(pid)
    assert files.calls == [] and MediaStore(syncer.store(pid)).refs() is None


def test_media_status_lists_missing_urls_with_their_reason(tmp_path, env):
    import json

    from click.testing import CliRunner

    from ls_space_sync.cli.console import main

    fake, files = env
    pid = image_project(fake, files)
    syncer_for(tmp_path).run_once(pid)
    runner = CliRunner()
    result = runner.invoke(main, ["--data-dir", str(tmp_path), "media", "status", "--json"])
    assert result.exit_code == 1, result.output
    [view] = json.loads(result.output)
    assert (view["project"], view["urls"], view["stored"], view["blobs"]) == (pid, 4, 3, 3)
    assert [(f["url"], f["reason"]) for f in view["failed"]] == [(f"{CDN}/missing.png", "HTTP 404 from cdn.test")]
    text = runner.invoke(main, ["--data-dir", str(tmp_path), "media", "status", "-p", str(pid)])
    assert "3 of 4 URLs stored" in text.output and "missing.png" in text.output
    bare = runner.invoke(main, ["--data-dir", str(tmp_path), "media", "--json"])
    assert json.loads(bare.output) == [view]


def test_compaction_and_tag_pruning_keep_the_bytes_of_kept_tags(tmp_path, env):
    from ls_space_sync.media.read import MediaReader
    from ls_space_sync.store.compaction import compact_project

    fake, files = env
    pid = image_project(fake, files)
    syncer = syncer_for(tmp_path)
    syncer.run_once(pid)
    red = f"/data/upload/{pid}/red.png"
    files.files[f"{URL}{red}"] = png("yellow")
    first = next(t for t in fake.of(pid) if t["data"]["image"] == red)
    fake.touch(first["id"], caption="changed")
    fake.tick(60)
    syncer.run_once(pid)
    fake.touch(first["id"], caption="again")
    fake.tick(60)
    syncer.run_once(pid)
    store = syncer.store(pid)
    compact_project(syncer.settings, pid, retention_seconds=0, keep_tags_count=2)
    assert sorted(store.tags()) == ["run-000002", "run-000003"]
    for tag in ("run-000002", "run-000003"):
        reader = MediaReader(store, store.dataset(tag))
        assert reader.read([reader.mapping[red]]) == {reader.mapping[red]: png("yellow")}
    # The latest version is compaction's own (untagged): it reads the newest tag's media.
    latest = MediaReader(store, store.dataset())
    assert latest.refs_ref == "run-000003" and len(latest.mapping) == 3  # missing.png is still missing


def test_files_over_the_spool_size_go_through_the_staging_disk(tmp_path, env, monkeypatch):
    from ls_space_sync.media import fetch

    monkeypatch.setattr(fetch, "SPOOL_BYTES", 40)
    monkeypatch.setattr(fetch, "CHUNK_BYTES", 16)
    fake, files = env
    pid = image_project(fake, files)
    syncer = syncer_for(tmp_path)
    syncer.run_once(pid)
    media = MediaStore(syncer.store(pid))
    mapping = media.mapping("run-000001")
    assert media.read_bytes([mapping[f"{CDN}/blue.png"]]) == {mapping[f"{CDN}/blue.png"]: png("blue", (10, 4))}
    assert len(png("blue", (10, 4))) > 40
    assert not list((tmp_path / "datasets" / ".staging").glob("media-*"))
