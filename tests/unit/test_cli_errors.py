"""Bad input at the command line: one clear line naming the fix, a non-zero exit, no traceback
(issue 11). Label Studio is faked over HTTP (respx); the datasets are real, in a temp dir."""

from __future__ import annotations

import pytest
import respx
import yaml
from click.testing import CliRunner

from ls_space_sync.cli.console import main
from tests.fakes import KEY, URL, FakeLabelStudio

OTHER_CONFIG = '<View><Text name="text" value="$text"/><Choices name="other" toName="text"><Choice value="a"/></Choices></View>'


@pytest.fixture
def config(tmp_path, fake, monkeypatch):
    """A config for the fake server, with project 1 synced once (run-000001)."""
    for i in range(3):
        fake.add(f"t{i}", annotations=1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "label_studio": {"url": URL, "retries": 0, "retry_max_wait_seconds": 0.01},
        "data_dir": str(tmp_path / "data"), "projects": [1], "sync": {"lag_seconds": 0},
        "mirrors": [{"source": 1, "target": 2}],
    }))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    out = CliRunner().invoke(main, ["-c", str(path), "sync"])
    assert out.exit_code == 0, out.output
    return str(path)


def one_line_error(out, code: int = 1) -> str:
    assert out.exit_code == code, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit), repr(out.exception)
    lines = out.output.strip().splitlines()
    assert len(lines) == 1, out.output
    assert "Traceback" not in out.output
    return lines[0]


def run(config: str, *args: str):
    return CliRunner().invoke(main, ["-c", config, *args])


def test_restore_with_a_label_config_that_lost_a_control(tmp_path, monkeypatch):
    from tests.unit.test_push import seed

    with respx.mock(assert_all_called=False) as router:
        server = FakeLabelStudio().mount(router)
        src = seed(server, 2)
        monkeypatch.setenv("LABEL_STUDIO_URL", URL)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
        args = ["--data-dir", str(tmp_path / "data")]
        assert CliRunner().invoke(main, [*args, "sync", "-p", str(src)]).exit_code == 0
        server.projects[src]["label_config"] = OTHER_CONFIG  # the rows' "label" control is gone
        first = server.of(src)[0]["id"]
        server.tasks[first]["annotations"].clear()  # a loss the restore has to repair
        server.touch(first)
        out = CliRunner().invoke(main, [*args, "restore", "-p", str(src), "--tag", "run-000001", "--yes"])
    assert out.exit_code == 1 and "Traceback" not in out.output, (out.output, out.exception)
    assert out.output.strip().splitlines()[-1].startswith(f"error: project {src}'s label config has no control tag "
                                                          "named label")


def test_mirror_with_a_malformed_task(config, fake):
    fake.tick(60)
    fake.add("bad")["created_at"] = "not a time"
    line = one_line_error(run(config, "mirror"))
    assert line.startswith("mirror 1 -> 2: FAILED:") and "no valid created_at" in line


def test_push_of_a_missing_tag(config):
    line = one_line_error(run(config, "push", "-p", "1", "--to-project", "2", "--tag", "run-000009"))
    assert "no version or tag 'run-000009'" in line and "ls-space-sync tags" in line


def test_push_into_its_own_project(config):
    line = one_line_error(run(config, "push", "-p", "1", "--to-project", "1"))
    assert "restore -p 1" in line


def test_sql_that_does_not_parse(config):
    line = one_line_error(run(config, "sql", "SELEC count(*) FROM project_1"))
    assert "syntax error" in line.lower() and "project_1" in line


def test_diff_of_a_missing_tag(config):
    line = one_line_error(run(config, "diff", "-p", "1", "run-000001", "run-000007"))
    assert "no version or tag 'run-000007'" in line


def test_diff_at_a_malformed_time(config):
    line = one_line_error(run(config, "diff", "-p", "1", "@tomorrow"), code=2)
    assert "ISO 8601" in line


def test_export_with_a_bad_predicate(config, tmp_path):
    line = one_line_error(run(config, "export", "-p", "1", "--where", "nosuch > 1", "-o", str(tmp_path / "x.parquet")))
    assert "nosuch" in line and ".rs:" not in line


def test_read_of_a_project_never_synced(config):
    line = one_line_error(run(config, "read", "-p", "5"))
    assert "project 5 has no dataset yet" in line and "ls-space-sync sync" in line


def test_sync_with_a_wrong_token(config, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong-token")
    line = one_line_error(run(config, "sync"))
    assert "rejected the API key (401)" in line and "wrong-token" not in line


def test_bad_config_is_exit_2_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("label_studio:\n  url: http://x\nsync:\n  page_size: lots\n")
    out = CliRunner().invoke(main, ["-c", str(path), "runs"])
    assert out.exit_code == 2 and "sync.page_size" in out.output and "Traceback" not in out.output
