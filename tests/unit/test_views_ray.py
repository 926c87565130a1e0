"""The Ray Data executor (``executor: ray``) on a local Ray (``num_cpus=2``, started once for the
module): its views equal the in-process ones at every tag, incremental and full, and a transform
that raises on a worker fails the refresh with its message."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ls_space_sync.views import refresh_view, view_store
from tests.unit.test_views import PID, USER_SQL, Source, assert_view_is_recompute, task, workspace

ray = pytest.importorskip("ray")
# Ray forks its helper processes after Lance is loaded; Lance's fork hook warns (Ray's workers are
# fresh processes that import Lance themselves, so nothing forked uses it).
# Ray Data 2.60's own DataContext sets deprecated fields of itself on creation, and its Lance
# reader calls pylance 14's deprecated DataFile.path().
pytestmark = [pytest.mark.filterwarnings("ignore:lance is not fork-safe:UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
              pytest.mark.filterwarnings(r"ignore:DataFile.path\(\) is deprecated:DeprecationWarning"),
              # Lance's fork warning again, when Ray forks during a garbage collection (unraisable).
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

VIEWS = [
    {"name": "regions", "project": PID, "executor": "ray"},
    {"name": "mine", "project": PID, "sql": USER_SQL, "primary_key": ["task_id"], "executor": "ray"},
    {"name": "kept", "project": PID, "python": "tests.unit.test_views:label_counts", "primary_key": ["task_id"],
     "executor": "ray"},
]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_views_equal_a_recompute_incremental_and_full(tmp_path):
    ws = workspace(tmp_path, VIEWS)
    src = Source(ws.root)
    src.run([task(i, [src.ann(0) for _ in range(i % 3)], 0) for i in range(1, 80)])
    for round_no in range(2):
        for view in ws.settings.views:
            result = refresh_view(ws, view)
            assert (result.status, result.full) == ("succeeded", round_no == 0), result.summary()
        src.random_run()
    for view in ws.settings.views:
        refresh_view(ws, view)
        for tag in ws.store(PID).tags():
            assert_view_is_recompute(ws, view, tag)
    ws.close()


def test_a_transform_that_raises_on_a_worker_fails_the_refresh(tmp_path):
    ws = workspace(tmp_path, [{"name": "picky", "project": PID, "python": "tests.unit.test_views_ray:picky",
                               "primary_key": ["task_id"], "executor": "ray"}])
    view = ws.settings.views[0]
    src = Source(ws.root)
    src.run([task(i, [src.ann(0)], 0) for i in range(1, 80)])
    assert refresh_view(ws, view).status == "succeeded"
    before = view_store(ws, view).dataset().version
    src.run([task(600, [], 1)])
    failed = refresh_view(ws, view)
    assert failed.status == "failed" and "ValueError: task 600 is too big" in failed.error, failed.error
    assert view_store(ws, view).dataset().version == before
    assert ws.state.runs(PID, kind="view", limit=1)[0].status == "failed"
    ws.close()


def picky(tasks: pa.Table) -> pa.Table:
    """A Python view that refuses task ids of 500 and more (a test transform)."""
    ids = tasks.column("id").to_pylist()
    for task_id in ids:
        if task_id >= 500:
            raise ValueError(f"task {task_id} is too big")
    return pa.table({"task_id": pa.array(ids, pa.int64())})


def test_to_ray_reads_sources_and_views_at_a_tag(tmp_path):
    from ls_space_sync.read import api

    ws = workspace(tmp_path, VIEWS[1:2])
    src = Source(ws.root)
    src.run([task(i, [], 0) for i in range(1, 30)])
    refresh_view(ws, ws.settings.views[0].model_copy(update={"executor": "inprocess"}))
    src.run([task(40, [], 1)], deletes=[1, 2])
    refresh_view(ws, ws.settings.views[0].model_copy(update={"executor": "inprocess"}))
    at_first = api.to_ray(view="mine", tag="run-000001", settings=ws.settings)
    assert at_first.count() == view_store(ws, ws.settings.views[0]).dataset("run-000001").count_rows()
    source = api.to_ray(PID, tag="run-000002", settings=ws.settings, columns=["id"], where="id > 35")
    assert [r["id"] for r in source.take_all()] == [40]
    ws.close()
