"""Mirror pairs against a real Label Studio server: edits on both sides converge, then quiet;
one pass at a time, and under the daemon."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ls_space_sync.quickstart.localserver import free_port
from ls_space_sync.push.mirror import mirror_once
from ls_space_sync.push.engine import content_hash
from ls_space_sync.service.http import serve
from ls_space_sync.settings import MirrorSettings, load_settings
from ls_space_sync.store.state import StateDB
from ls_space_sync.store.dataset import ProjectStore
from ls_space_sync.pull.run import Syncer
from tests.integration.test_service import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.label_studio_servers("sqlite", "postgresql")]

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
    assert first.moved == 6 and contents(syncer, a) == contents(syncer, b)
    assert mirror_once(syncer, pair).quiet

    ta = {t["data"]["text"]: t for page in c.iter_task_pages(a) for t in page}
    tb = {t["data"]["text"]: t for page in c.iter_task_pages(b) for t in page}
    c.update_annotation(ta["a1"]["annotations"][0]["id"], {"result": choice("neg")})  # edited in a
    c.create_annotation(tb["a2"]["id"], {"result": choice("neg"), "ground_truth": False})  # labelled in b
    c.update_task(tb["a3"]["id"], {"data": {"text": "a3 fixed in b"}})
    c.import_tasks(b, [{"data": {"text": "born in b"}}])
    c.delete_tasks(a, [ta["a4"]["id"]])
    passes = [mirror_once(syncer, pair) for _ in range(4)]
    assert not passes[0].quiet and passes[-1].quiet and passes[-2].quiet
    assert contents(syncer, a) == contents(syncer, b)
    texts = sorted(t["data"]["text"] for page in c.iter_task_pages(a) for t in page)
    assert texts == ["a0", "a1", "a2", "a3 fixed in b", "a5", "born in b"]

    # quiet: no new version, no write request
    versions = (syncer.store(a).version(), syncer.store(b).version())
    before = c.requests
    for _ in range(2):
        res = mirror_once(syncer, pair)
        assert res.quiet and res.versions == 0 and res.moved == 0
    assert (syncer.store(a).version(), syncer.store(b).version()) == versions
    assert c.requests - before == 2 * 4  # two cheap polls per project per pass, nothing else


def server_tasks(label_studio, project_id):
    """``{data.text: [annotation results]}`` from ``GET /api/tasks?project=P&fields=all``."""
    r = httpx.get(f"{label_studio.url}/api/tasks", params={"project": project_id, "fields": "all", "page_size": 100},
                  headers={"Authorization": f"Token {label_studio.api_key}"}, timeout=30, trust_env=False)
    r.raise_for_status()
    body = r.json()
    tasks = body["tasks"] if isinstance(body, dict) else body
    return {t["data"]["text"]: sorted(json.dumps(a["result"], sort_keys=True) for a in t["annotations"])
            for t in tasks}


def metric(url, name, **labels):
    """The sum of a daemon metric's samples that carry these labels (0 if none)."""
    body = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    return sum(s.value for family in text_string_to_metric_families(body) for s in family.samples
               if s.name == name and all(s.labels.get(k) == str(v) for k, v in labels.items()))


def test_the_daemon_runs_a_pair_both_ways_until_it_converges_then_stays_quiet(label_studio, syncer, new_project,
                                                                               tmp_path):
    a, b = new_project(CONFIG, title="daemon mirror a"), new_project(CONFIG, title="daemon mirror b")
    c = syncer.client  # for the edits only: the daemon has its own data dir
    c.import_tasks(a, [{"data": {"text": f"t{i}"}, "annotations": [{"result": choice("pos"), "ground_truth": False}]
                        if i % 2 else []} for i in range(4)])
    port = free_port()
    settings = load_settings(
        env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
        overrides={"data_dir": str(tmp_path / "daemon"), "projects": [a, b], "log_format": "json",
                   "sync": {"lag_seconds": 0, "interval_seconds": 3600, "task_fields": TASK_FIELDS},
                   "schedules": {a: {"interval_seconds": 1}},  # the pair runs on its source's schedule
                   "scheduler": {"jitter_seconds": 0, "shutdown_timeout_seconds": 30},
                   "server": {"port": port},
                   "mirrors": [{"source": a, "target": b, "both_ways": True, "delete": True}]},
    )
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings,), kwargs={"stop_event": stop}, name="service")
    started = time.monotonic()
    thread.start()
    try:
        wait_for(lambda: len(server_tasks(label_studio, b)) == 4, 30, "the first pass copies a to b", step=0.25)
        assert server_tasks(label_studio, a) == server_tasks(label_studio, b)

        ta = {t["data"]["text"]: t for page in c.iter_task_pages(a) for t in page}
        tb = {t["data"]["text"]: t for page in c.iter_task_pages(b) for t in page}
        c.update_annotation(ta["t1"]["annotations"][0]["id"], {"result": choice("neg")})  # edited in a
        c.create_annotation(tb["t2"]["id"], {"result": choice("neg"), "ground_truth": False})  # labelled in b
        neg = json.dumps(choice("neg"), sort_keys=True)
        wanted = {"t0": [], "t1": [neg], "t2": [neg], "t3": [json.dumps(choice("pos"), sort_keys=True)]}
        wait_for(lambda: server_tasks(label_studio, a) == server_tasks(label_studio, b) == wanted, 30,
                 "both edits in both projects", step=0.25)
        converged = time.monotonic()

        # The pass after convergence may still record what the last push wrote; then quiet.
        quiet = metric(url, "ls_space_sync_mirror_passes_total", outcome="quiet")
        wait_for(lambda: metric(url, "ls_space_sync_mirror_passes_total", outcome="quiet") > quiet, 20,
                 "a quiet pass", step=0.25)
        versions = (ProjectStore(settings.resolved_store_root, a).version(),
                    ProjectStore(settings.resolved_store_root, b).version())
        changed = metric(url, "ls_space_sync_mirror_passes_total", outcome="changed")
        moved = metric(url, "ls_space_sync_mirror_tasks_total")
        quiet = metric(url, "ls_space_sync_mirror_passes_total", outcome="quiet")
        wait_for(lambda: metric(url, "ls_space_sync_mirror_passes_total", outcome="quiet") >= quiet + 3, 20,
                 "three more quiet passes", step=0.25)
        assert metric(url, "ls_space_sync_mirror_passes_total", outcome="changed") == changed
        assert metric(url, "ls_space_sync_mirror_tasks_total") == moved > 0
        assert metric(url, "ls_space_sync_mirror_passes_total", outcome="failed") == 0
        assert (ProjectStore(settings.resolved_store_root, a).version(),
                ProjectStore(settings.resolved_store_root, b).version()) == versions
        assert server_tasks(label_studio, a) == server_tasks(label_studio, b) == wanted
        health = httpx.get(f"{url}/health", timeout=10, trust_env=False).json()
        assert health["mirrors"][f"{a}-{b}"]["last_pass"]["quiet"] is True
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    state = StateDB(settings.resolved_state_url)
    try:
        pulls = state.runs(a, limit=200) + state.runs(b, limit=200)
        # Both projects are listed, yet only the pair's passes pulled them: no plain sync job raced it.
        assert {r.trigger for r in pulls if r.kind == "pull"} == {"mirror"}
        assert all(r.status in ("succeeded", "skipped") for r in pulls)
    finally:
        state.dispose()
    print(f"\ndaemon mirror: converged {converged - started:.1f} s after start, "
          f"{len([r for r in pulls if r.kind == 'pull'])} pulls, total {time.monotonic() - started:.1f} s")
