"""Mirror pairs against a real Label Studio server: edits on both sides converge, then quiet."""

from __future__ import annotations

import pytest

from ls_space_sync.mirror import mirror_once
from ls_space_sync.push import content_hash
from ls_space_sync.settings import MirrorSettings, load_settings
from ls_space_sync.sync import Syncer

pytestmark = pytest.mark.integration

# The default task keys (labelstudio.CORE_TASK_FIELDS names the nested annotation keys too).
TASK_FIELDS = "core"

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices>
</View>"""


def choice(value):
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]


def contents(syncer, project_id):
    return sorted(content_hash(t) for page in syncer.client.iter_task_pages(project_id) for t in page)


@pytest.fixture
def syncer(label_studio, tmp_path):
    settings = load_settings(
        env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
        overrides={"data_dir": str(tmp_path / "data"), "sync": {"lag_seconds": 0, "task_fields": TASK_FIELDS}},
    )
    with Syncer(settings) as s:
        yield s


def test_a_pair_mirrored_both_ways_converges_after_edits_on_both_sides_then_stays_quiet(syncer, new_project,
                                                                                      ls_client):
    a, b = new_project(CONFIG, title="mirror a"), new_project(CONFIG, title="mirror b")
    c = syncer.client
    c.import_tasks(a, [{"data": {"text": f"a{i}"}, "annotations": [{"result": choice("pos"), "ground_truth": False}]
                        if i % 2 else []} for i in range(6)])
    pair = MirrorSettings(source=a, target=b, both_ways=True, delete=True)
    first = mirror_once(syncer, pair)
    assert first["moved"] == 6 and contents(syncer, a) == contents(syncer, b)
    assert mirror_once(syncer, pair)["quiet"]

    ta = {t["data"]["text"]: t for page in c.iter_task_pages(a) for t in page}
    tb = {t["data"]["text"]: t for page in c.iter_task_pages(b) for t in page}
    c.update_annotation(ta["a1"]["annotations"][0]["id"], {"result": choice("neg")})  # edited in a
    c.create_annotation(tb["a2"]["id"], {"result": choice("neg"), "ground_truth": False})  # labelled in b
    c.update_task(tb["a3"]["id"], {"data": {"text": "a3 fixed in b"}})
    c.import_tasks(b, [{"data": {"text": "born in b"}}])
    c.delete_tasks(a, [ta["a4"]["id"]])
    passes = [mirror_once(syncer, pair) for _ in range(4)]
    assert not passes[0]["quiet"] and passes[-1]["quiet"] and passes[-2]["quiet"]
    assert contents(syncer, a) == contents(syncer, b)
    texts = sorted(t["data"]["text"] for page in c.iter_task_pages(a) for t in page)
    assert texts == ["a0", "a1", "a2", "a3 fixed in b", "a5", "born in b"]

    # quiet: no new version, no write request
    versions = (syncer.store(a).version(), syncer.store(b).version())
    before = c.requests
    for _ in range(2):
        res = mirror_once(syncer, pair)
        assert res["quiet"] and res["versions"] == 0 and res["moved"] == 0
    assert (syncer.store(a).version(), syncer.store(b).version()) == versions
    assert c.requests - before == 2 * 4  # two cheap polls per project per pass, nothing else
