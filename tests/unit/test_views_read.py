"""Reading views: the ``views`` commands, SQL's ``view_<name>`` tables, view diffs and the Polars reader."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from ls_space_sync.cli.console import main
from ls_space_sync.read import api
from ls_space_sync.read.query import QueryError, sql
from ls_space_sync.views import refresh_project_views, view_store
from ls_space_sync.views.diff import diff_view
from tests.unit.test_views import PID, VIEWS, Source, task, workspace


@pytest.fixture
def built(tmp_path):
    """A source with two runs and every test view refreshed after each; returns (workspace, config path)."""
    ws = workspace(tmp_path)
    src = Source(ws.root)
    src.run([task(i, [src.ann(0) for _ in range(1 + i % 2)], 0) for i in range(1, 40)])
    refresh_project_views(ws, PID)
    src.run([task(3, [src.ann(1)], 1), task(50, [src.ann(1)], 1)], deletes=[4])
    refresh_project_views(ws, PID)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "views": VIEWS}))
    yield ws, config
    ws.close()


def cli(config, *args):
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)


def test_views_list_refresh_read(built):
    ws, config = built
    listed = [json.loads(line) for line in cli(config, "views", "list", "--json").output.splitlines()]
    assert [v["view"] for v in listed] == [v["name"] for v in VIEWS]
    regions = listed[0]
    assert (regions["built"], regions["source_version"], regions["source_latest"], regions["tags"]) == (True, 2, 2, 2)
    assert regions["last_refresh"]["status"] == "succeeded" and regions["transform_current"]

    out = cli(config, "views", "refresh")
    assert out.exit_code == 0 and out.output.count(": current (source v2)") == len(VIEWS)

    rows = cli(config, "views", "read", "task_labels", "--tag", "run-000001").output.splitlines()
    rows = [json.loads(line) for line in rows]
    assert sorted(r["task_id"] for r in rows) == list(range(1, 40))
    latest = cli(config, "views", "read", "task_labels", "--where", "task_id > 45").output.splitlines()
    latest = [json.loads(line) for line in latest]
    assert [r["task_id"] for r in latest] == [50]

    missing = CliRunner().invoke(main, ["--config", str(config), "views", "read", "nope"])
    assert missing.exit_code == 2 and "no view named 'nope'" in missing.output


def test_views_are_sql_tables_at_a_tag(built):
    ws, _ = built
    before = sql(ws.root, "SELECT count(*) AS n FROM view_task_labels", ref="run-000001").column("n")[0].as_py()
    after = sql(ws.root, "SELECT count(*) AS n FROM view_task_labels").column("n")[0].as_py()
    assert (before, after) == (39, 39)  # task 50 in, task 4 out
    joined = sql(ws.root, "SELECT count(*) AS n FROM view_regions r JOIN project_7 p ON p.id = r.task_id")
    assert joined.column("n")[0].as_py() == view_store(ws, ws.settings.views[0]).count()
    with pytest.raises(QueryError, match="view_regions"):
        sql(ws.root, "SELECT nope FROM view_regions")


def test_view_diff_by_primary_key(built):
    ws, config = built
    d = diff_view(view_store(ws, ws.settings.views[2]), "run-000001", "run-000002")  # task_labels
    assert [k["task_id"] for k in d.inserted] == [50] and [k["task_id"] for k in d.deleted] == [4]
    assert {k["task_id"] for k in d.updated} <= {3}
    out = json.loads(cli(config, "views", "diff", "task_labels", "run-000001", "--json").output)
    assert out["counts"]["inserted"] == 1 and out["new_tags"] == ["run-000002"]


def test_to_polars_reads_sources_and_views_at_a_tag(built):
    pytest.importorskip("polars")
    ws, _ = built
    frame = api.to_polars(view="task_labels", tag="run-000001", settings=ws.settings)
    assert frame.height == 39 and "label" in frame.columns
    lazy = api.to_polars(PID, tag="run-000002", settings=ws.settings, lazy=True, columns=["id"])
    assert sorted(lazy.collect()["id"].to_list()) == sorted(set(range(1, 40)) - {4} | {50})
    with pytest.raises(ValueError, match="one of them"):
        api.to_polars(PID, view="task_labels", settings=ws.settings)
