"""``push --media reupload`` against the in-memory Label Studio (respx): media the server still
serves are not uploaded again; the real server's re-upload is in tests/integration/test_media_push.py."""

from __future__ import annotations

from ls_space_sync.push.engine import push
from tests.unit.test_media import URL, env, image_project, syncer_for  # noqa: F401 - env is a fixture


def test_media_the_server_still_serves_are_checked_and_not_uploaded(tmp_path, env):  # noqa: F811
    fake, files = env
    pid = image_project(fake, files)
    with syncer_for(tmp_path) as syncer:
        assert syncer.run_once(pid).status == "succeeded"
        files.calls.clear()
        result = push(syncer, pid, media="reupload")
    assert (result.created, result.media_uploaded, result.media_rewritten) == (5, 0, 0)
    checked = sorted(str(r.url) for r in files.calls)
    # one GET per stored URL (the upload, twice in the data, checked once); not the cloud URI, nor the 404 never stored
    assert checked == sorted([f"{URL}/data/upload/{pid}/red.png", "http://cdn.test/blue.png"])
    assert not [c for c in fake.calls if "commit_to_project" in str(c.url)]
    pushed = sorted(t["data"]["image"] for t in fake.of(result.target_project))
    assert pushed == sorted(t["data"]["image"] for t in fake.of(pid))
