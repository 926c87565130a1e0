"""Reproductions of issue 10's read-side defects on datasets synced from a real Label Studio.

- #4: ``sql --tag`` with a query that unnests annotations, once two projects are stored and only
  one has that tag: the version selector applies to the tables the query reads.
- #5: a malformed time (``--as-of yesterday``, ``@yesterday``, ``--at project_1=@nope``) and a
  bad ``--where`` are one clear line and exit 2 (or 1 for export's "export failed"), no traceback,
  no Rust source path.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ls_space_sync.cli.console import main
from ls_space_sync.read.query import EXAMPLES
from ls_space_sync.settings import load_settings
from ls_space_sync.pull.run import Syncer

pytestmark = pytest.mark.integration

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices>
</View>"""


def choice(value: str) -> dict:
    return {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}


@pytest.fixture
def two_projects(label_studio, ls_client, new_project, tmp_path):
    """Projects p1 (two runs: run-000001, run-000002) and p2 (one run), synced into one data_dir."""
    pids = []
    for n in range(2):
        pid = new_project(CONFIG)
        ls_client.projects.import_tasks(id=pid, request=[
            {"data": {"text": f"p{n} t{i}"}, "annotations": [{"result": [choice("pos" if i % 2 else "neg")]}]}
            for i in range(4)])
        pids.append(pid)
    data_dir = tmp_path / "data"
    settings = load_settings(
        env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
        overrides={"data_dir": str(data_dir), "projects": pids, "sync": {"lag_seconds": 0}},
    )
    with Syncer(settings) as syncer:
        for pid in pids:
            assert syncer.run_once(pid).tag == "run-000001"
        ls_client.projects.import_tasks(id=pids[0], request=[
            {"data": {"text": "p0 new"}, "annotations": [{"result": [choice("pos")]}]}])
        assert syncer.run_once(pids[0]).tag == "run-000002"
        assert syncer.run_once(pids[1]).tag is None  # nothing changed: no run-000002 in p2
    return str(data_dir), pids


def cli(data_dir: str, *args: str):
    return CliRunner().invoke(main, ["--data-dir", data_dir, *args])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_runs_at_a_tag_only_its_project_has(two_projects, name):
    data_dir, (p1, p2) = two_projects
    out = cli(data_dir, "sql", "--example", name, "--project", str(p1), "--tag", "run-000002")
    assert out.exit_code == 0, out.output
    assert f"project {p2}" not in out.output


def test_unnest_query_at_a_tag_reads_that_tag(two_projects):
    data_dir, (p1, _) = two_projects
    query = (f"SELECT count(*) AS n FROM project_{p1} AS t, unnest(t.annotations) AS u(a) "
             "WHERE json_extract_string(a.result, '$[0].value.choices[0]') = 'pos'")
    old = cli(data_dir, "sql", "--tag", "run-000001", query)
    new = cli(data_dir, "sql", "--tag", "run-000002", query)
    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    numbers = [int(line.split("│")[1]) for out in (old, new) for line in out.output.splitlines()
               if line.strip().startswith("│") and line.split("│")[1].strip().isdigit()]
    assert numbers == [2, 3]


@pytest.mark.parametrize("args", [
    ("sql", "--as-of", "yesterday", "SELECT 1 FROM project_{p1}"),
    ("sql", "--at", "project_{p1}=@nope", "SELECT 1 FROM project_{p1}"),
    ("diff", "-p", "{p1}", "@yesterday"),
    ("read", "-p", "{p1}", "--as-of", "yesterday"),
    ("export", "-p", "{p1}", "--as-of", "yesterday", "-o", "{tmp}/x.parquet"),
])
def test_malformed_time_is_one_line_and_exit_2(two_projects, tmp_path, args):
    data_dir, (p1, _) = two_projects
    out = cli(data_dir, *(a.format(p1=p1, tmp=tmp_path) for a in args))
    assert out.exit_code == 2, out.output
    assert "ISO 8601" in out.output and ("'yesterday'" in out.output or "'nope'" in out.output), out.output
    assert isinstance(out.exception, SystemExit), out.exception  # an exit, not an exception
    assert out.output.startswith("error: ") and len(out.output.strip().splitlines()) == 1, out.output


@pytest.mark.parametrize("where", ["is_labeled = tru", "no_such_column > 1", "id >"])
def test_bad_where_names_the_problem_not_lance_internals(two_projects, tmp_path, where):
    data_dir, (p1, _) = two_projects
    out = cli(data_dir, "export", "-p", str(p1), "--where", where, "-o", str(tmp_path / "x.parquet"))
    assert out.exit_code == 1, out.output
    assert ".rs:" not in out.output and "_rowaddr" not in out.output
    assert where in out.output and "is_labeled" in out.output  # the predicate, and the columns to use
