"""``status``, shell completion and ``--json`` on every command that prints a table (issue 16,
item 5). Label Studio is faked over HTTP (respx); state and datasets are real, in a temp dir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import click
import pytest
import yaml
from click.shell_completion import BashComplete
from click.testing import CliRunner

from ls_space_sync.cli.console import main
from ls_space_sync.read.overview import age
from tests.fakes import KEY, URL

# Commands that print no table: a summary line per project, a file, a stream, a script.
NO_TABLE = {"sync", "read", "export", "push", "restore", "mirror", "run", "webhooks", "completion",
            "views read"}  # prints the view's rows as JSON lines, like `read`


@pytest.fixture
def config(tmp_path, fake, monkeypatch):
    """Project 1 synced (run-000001), then a failed run; project 2 configured, never run."""
    for i in range(3):
        fake.add(f"t{i}", annotations=1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "label_studio": {"url": URL, "retries": 0, "retry_max_wait_seconds": 0.01},
        "data_dir": str(tmp_path / "data"), "projects": [1, 2], "sync": {"lag_seconds": 0},
    }))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    assert CliRunner().invoke(main, ["-c", str(path), "sync", "-p", "1"]).exit_code == 0
    fake.fail_next = [500]
    assert CliRunner().invoke(main, ["-c", str(path), "sync", "-p", "1"]).exit_code == 1
    return str(path)


def run(config: str, *args: str):
    out = CliRunner().invoke(main, ["-c", config, *args])
    assert out.exit_code == 0, out.output
    return out.output


def test_status_is_one_screen_of_projects_last_run_lag_and_failures(config):
    lines = run(config, "status").splitlines()
    assert lines[0].startswith("2 projects, 1 failing (1)")
    assert lines[1].split()[:4] == ["project", "last", "run", "(UTC)"]
    one, two = lines[2:]
    assert one.split()[0] == "1" and " failed " in one and " s " in one and "run-000001" in one
    assert "ServerUnavailable" in one and len(one) <= 160  # the error, on the same line, cut to fit
    assert two.split()[0] == "2" and "never run" in two and "never" in two.split("never run")[1]
    assert len(lines) == 4


def test_status_json(config):
    body = json.loads(run(config, "status", "--json"))
    assert body["failing"] == [1]
    one, two = body["projects"]
    assert one["project"] == 1 and one["last_status"] == "failed" and one["consecutive_failures"] == 1
    assert one["tags"] == 1 and one["latest_tag"] == "run-000001" and 0 <= one["lag_seconds"] < 60
    assert one["last_success_at"].endswith("+00:00")
    assert two == {**two, "project": 2, "last_status": None, "lag_seconds": None, "tags": 0}
    only = json.loads(run(config, "status", "--json", "-p", "2"))
    assert [p["project"] for p in only["projects"]] == [2] and only["failing"] == []


def test_status_asks_label_studio_nothing(config, fake):
    before = len(fake.calls)
    run(config, "status")
    assert len(fake.calls) == before


def test_age_reads_like_a_person_would_say_it():
    assert [age(s) for s in (None, 4, 600, 7200, 5 * 86400)] == ["never", "4 s", "10 min", "2.0 h", "5.0 d"]


def test_tags_and_sql_json(config):
    tags = json.loads(run(config, "tags", "--json"))
    assert tags["project"] == 1 and [t["tags"] for t in tags["tags"]] == [["run-000001"]]
    assert tags["tags"][0]["rows"] == 3 and tags["tags"][0]["counts"] == {"inserted": 3, "updated": 0, "deleted": 0}
    rows = [json.loads(line) for line in run(config, "sql", "--json",
                                             "SELECT id, data.text AS text FROM project_1 ORDER BY id").splitlines()]
    assert rows == [{"id": 1, "text": "t0"}, {"id": 2, "text": "t1"}, {"id": 3, "text": "t2"}]


def test_every_command_that_prints_a_table_has_json():
    ctx = click.Context(main)
    missing = []
    for name in main.list_commands(ctx):
        if name in NO_TABLE:
            continue
        command = main.get_command(ctx, name)
        assert command is not None
        # A group's subcommands are what print (`views list`); a group that runs alone (`media`) too.
        leaves = [(f"{name} {sub}", command.get_command(ctx, sub)) for sub in command.list_commands(ctx)] \
            if isinstance(command, click.Group) else []
        if not isinstance(command, click.Group) or command.invoke_without_command:
            leaves.append((name, command))
        for full, leaf in leaves:
            assert leaf is not None
            if full not in NO_TABLE and "--json" not in {opt for p in leaf.params for opt in getattr(p, "opts", [])}:
                missing.append(full)
    assert missing == []


@pytest.mark.parametrize("shell, marker", [
    ("bash", "complete -o nosort -F _ls_space_sync_completion ls-space-sync"),
    ("zsh", "compdef _ls_space_sync_completion ls-space-sync"),
    ("fish", "complete --no-files --command ls-space-sync"),
])
def test_completion_prints_the_script_of_each_shell(shell, marker):
    out = CliRunner().invoke(main, ["completion", shell])
    assert out.exit_code == 0, out.output
    assert marker in out.output and "_LS_SPACE_SYNC_COMPLETE" in out.output
    if shell == "bash" and shutil.which("bash"):
        check = subprocess.run(["bash", "-n"], input=out.output, text=True, capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr
    assert CliRunner().invoke(main, ["completion", "tcsh"]).exit_code == 2


def test_completion_lists_commands_and_their_options():
    comp = BashComplete(main, {}, "ls-space-sync", "_LS_SPACE_SYNC_COMPLETE")
    assert {c.value for c in comp.get_completions([], "sta")} == {"status"}
    assert {"runs", "run"} <= {c.value for c in comp.get_completions([], "ru")}
    assert "--json" in {c.value for c in comp.get_completions(["diff"], "--")}  # a lazily loaded command
    assert {c.value for c in comp.get_completions(["completion"], "")} == {"bash", "zsh", "fish"}


def test_completion_through_the_entry_point():
    """What the shell script does: call the program with the completion variables set."""
    env = {**os.environ, "_LS_SPACE_SYNC_COMPLETE": "bash_complete", "COMP_WORDS": "ls-space-sync stat",
           "COMP_CWORD": "1"}
    code = "import sys; sys.argv = ['ls-space-sync']; from ls_space_sync.cli.console import run; run()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["plain,status"]
