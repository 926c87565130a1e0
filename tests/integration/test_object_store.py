"""The store in a bucket: the pull-sync, analysis and push suites, and the README flow through the CLI
with a PostgreSQL state, against a real S3-compatible server (SeaweedFS on 127.0.0.1) and a real
Label Studio.

The suites are not copied: their tests run here as they are, with ``store_root`` pointed at a fresh
``s3://lsss-test/<prefix>`` for each test. Every one of them builds its settings with
``load_settings`` (the CLI too, from the environment), so the bucket comes in as the variables
``LS_SPACE_SYNC__STORE_ROOT`` and ``LS_SPACE_SYNC__STORAGE_OPTIONS__*`` (set in this process for the
CLI and subprocesses, and merged into the explicit ``env`` the suites pass). After each test the
bucket must hold its datasets and the local data dir none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, inspect, text

from ls_space_sync import settings as settings_module
from ls_space_sync.settings import StoreRoot
from ls_space_sync.store.dataset import StoreAccessError, stored_projects
from tests.integration import test_analysis as analysis
from tests.integration import test_pull_sync as pull
from tests.integration import test_push as push
from tests.objectstore import SeaweedS3
from tests.pg import PostgresServer

pytestmark = pytest.mark.integration

# The suites' tests and fixtures, collected here a second time with the store in the bucket.
from tests.integration.test_analysis import (  # noqa: E402,F401
    project,
    test_compaction_keeps_every_tag_and_sync_goes_on,
    test_diff_between_tags_equals_the_operations,
    test_exports_round_trip,
    test_sql_counts_equal_the_servers,
)
from tests.integration.test_pull_sync import (  # noqa: E402,F401
    make_syncer,
    test_cli_sync_tags_read_and_errors,
    test_first_sync_then_every_kind_of_change,
    test_killed_between_commit_and_checkpoint_recovers,
    test_reused_id_and_bulk_predictions,
)
from tests.integration.test_push import (  # noqa: E402,F401
    source,
    syncer,
    test_a_second_push_moves_only_changed_tasks_in_place_and_follows_deletes,
    test_a_tag_pushed_to_a_new_project_equals_the_source_task_by_task,
    test_restore_after_deleting_annotations_equals_the_tagged_version,
)


def bucket_env(s3: SeaweedS3, root: str) -> dict[str, str]:
    """The variables that put a store in the bucket: root, endpoint options, credentials."""
    return {"LS_SPACE_SYNC__STORE_ROOT": root,
            "LS_SPACE_SYNC__STORAGE_OPTIONS__AWS_ENDPOINT": s3.endpoint,
            "LS_SPACE_SYNC__STORAGE_OPTIONS__AWS_REGION": "us-east-1",
            "LS_SPACE_SYNC__STORAGE_OPTIONS__ALLOW_HTTP": "true",
            **s3.env}


def bucket_root(s3: SeaweedS3, root: str) -> StoreRoot:
    return StoreRoot.parse(root, {"aws_endpoint": s3.endpoint, "aws_region": "us-east-1", "allow_http": "true",
                                  "aws_access_key_id": s3.env["AWS_ACCESS_KEY_ID"],
                                  "aws_secret_access_key": s3.env["AWS_SECRET_ACCESS_KEY"]}, Path("."))


@pytest.fixture(autouse=True)
def store_in_bucket(request, object_store, monkeypatch, tmp_path):
    """Point every store of a suite's test at a fresh bucket prefix; afterwards check it was used.
    The tests of this module say where their store is themselves."""
    if request.function.__module__ == __name__:
        yield None
        return
    root = object_store.new_root()
    variables = bucket_env(object_store, root)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    real = settings_module.load_settings

    def load_settings(config_path=None, env=None, overrides=None):
        merged = None if env is None else {**env, **variables}
        return real(config_path, env=merged, overrides=overrides)

    for module in (pull, analysis, push):
        monkeypatch.setattr(module, "load_settings", load_settings)
    yield root
    assert stored_projects(bucket_root(object_store, root)), f"nothing was written to {root}"
    assert not list(tmp_path.rglob("project-*.lance")), "a dataset was written to local disk"


def test_a_missing_bucket_is_one_line_naming_the_fix(object_store, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path}\nstore_root: s3://no-such-bucket-here/p\n"
                      f"storage_options: {{aws_endpoint: '{object_store.endpoint}', allow_http: true, "
                      "aws_region: us-east-1}\n")
    out = cli("--config", str(config), "tags", env=object_store.env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "the bucket no-such-bucket-here of store_root s3://no-such-bucket-here/p does not exist" in out.stderr
    with pytest.raises(StoreAccessError):
        stored_projects(bucket_root(object_store, "s3://no-such-bucket-here/p"))


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ls_space_sync", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def bucket_objects(s3: SeaweedS3, root: str) -> dict[str, bytes]:
    """Every object under the root: ``{key: bytes}``."""
    fs = pafs.S3FileSystem(endpoint_override=s3.endpoint, region="us-east-1",
                           access_key=s3.env["AWS_ACCESS_KEY_ID"], secret_key=s3.env["AWS_SECRET_ACCESS_KEY"])
    infos = fs.get_file_info(pafs.FileSelector(root[len("s3://"):], recursive=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path] = f.read()
    return out


def test_readme_flow_with_the_store_in_a_bucket_and_postgres_state(label_studio, ls_client, new_project, postgres,
                                                                   object_store, tmp_path):
    """config.yaml with ``store_root: s3://...`` and a PostgreSQL ``state_url``: sync, tags, read, sql,
    diff, export and compact through the CLI; no credential in the bucket, the state or the output."""
    pid = new_project(pull.TEXT_CONFIG)
    ids = pull.import_text_tasks(ls_client, pid, 6)
    root = object_store.new_root()
    state_url = postgres.create_database()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"label_studio:\n  url: {label_studio.url}\nprojects: [{pid}]\ndata_dir: {tmp_path / 'local'}\n"
        f"state_url: {state_url}\nstore_root: {root}\n"
        f"storage_options:\n  aws_endpoint: {object_store.endpoint}\n  aws_region: us-east-1\n  allow_http: true\n")
    env = {"LABEL_STUDIO_API_KEY": label_studio.api_key, **object_store.env}
    secrets = [label_studio.api_key, object_store.env["AWS_SECRET_ACCESS_KEY"]]
    outputs = []

    def run(*args: str) -> str:
        out = cli("--config", str(config), *args, env=env)
        outputs.append(out.stdout + out.stderr)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert f"project {pid}: run-000001 v1 +6 ~0 -0" in run("sync")
    ls_client.tasks.update(id=ids[0], data={"text": "edited"})
    ls_client.tasks.delete(id=ids[1])
    assert f"project {pid}: run-000002 v2 +0 ~1 -1" in run("sync")

    tags = json.loads(run("tags", "--json").splitlines()[0])
    assert tags["uri"] == f"{root}/project-{pid}.lance"
    assert [t["tags"] for t in tags["tags"]] == [["run-000001"], ["run-000002"]]
    first = [json.loads(line) for line in run("read", "--project", str(pid), "--tag", "run-000001").splitlines()]
    assert sorted(t["id"] for t in first) == sorted(ids)
    latest = [json.loads(line) for line in run("read", "--project", str(pid)).splitlines()]
    assert sorted(t["id"] for t in latest) == sorted(set(ids) - {ids[1]})

    counts = run("sql", f"SELECT count(*) AS n FROM project_{pid}", "--json")
    assert json.loads(counts.splitlines()[0]) == {"n": 5}
    old = run("sql", "--tag", "run-000001", f"SELECT count(*) AS n FROM project_{pid}", "--json")
    assert json.loads(old.splitlines()[0]) == {"n": 6}

    diff = json.loads(run("diff", "--project", str(pid), "run-000001", "run-000002", "--json"))
    assert diff["deleted"] == [ids[1]] and [u["id"] for u in diff["updated"]] == [ids[0]]

    run("export", "--project", str(pid), "--tag", "run-000001", "--format", "parquet", "-o", str(tmp_path / "p.parquet"))
    assert sorted(pq.read_table(tmp_path / "p.parquet").column("id").to_pylist()) == sorted(ids)

    report = json.loads(run("compact", "--retention", "0", "--json").splitlines()[0])
    assert report["status"] == "compacted" and report["fragments_after"] == 1
    # Disk use is measured in the bucket too (both tags are kept, so their files stay).
    assert report["bytes_before"] > 0 and report["bytes_after"] > 0 and report["files_after"] > 0
    after = [json.loads(line) for line in run("read", "--project", str(pid), "--tag", "run-000001").splitlines()]
    assert sorted(t["id"] for t in after) == sorted(ids)  # every tag stays readable

    # Locks and staging stayed on local disk; the datasets are in the bucket only.
    assert not list((tmp_path / "local").rglob("project-*.lance"))
    # With a PostgreSQL state the writer's lock is a lease row (store/leases.py), given back after each run.
    assert not list((tmp_path / "local").rglob("project-*.lock"))
    stored = bucket_objects(object_store, root)
    assert any(key.endswith(".manifest") for key in stored)
    # No credential anywhere: output, bucket, state database.
    for secret in secrets:
        assert all(secret not in o for o in outputs)
        assert all(secret.encode() not in blob for blob in stored.values())
    engine = create_engine(state_url)
    with engine.connect() as con:
        for table in inspect(engine).get_table_names():
            dump = json.dumps([list(map(str, row)) for row in con.execute(text(f'SELECT * FROM "{table}"'))])
            assert all(secret not in dump for secret in secrets), table
    engine.dispose()
