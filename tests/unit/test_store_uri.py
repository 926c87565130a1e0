"""An object-store ``store_root``: URI parsing, config errors, secrets, and the errors of a store that
refuses us, as one line naming the fix. No server needed: the integration tests
(tests/integration/test_object_store.py) run the features against a real S3-compatible one."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ls_space_sync.cli.console import main
from ls_space_sync.errors import mask
from ls_space_sync.pull.run import staging_dir
from ls_space_sync.settings import ConfigError, Settings, StoreRoot, load_settings
from ls_space_sync.store.dataset import (
    ProjectStore,
    StoreAccessError,
    StoreUnreachable,
    is_local,
    local_dir,
    project_lock,
    stored_projects,
)


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """No credentials anywhere Lance's AWS chain looks: variables, files, profile, instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_a_bucket_uri_is_a_store_root_with_options_and_a_local_staging_dir(tmp_path):
    s = Settings(data_dir=tmp_path, store_root="s3://bucket/some/prefix/",
                 storage_options={"aws_endpoint": "http://127.0.0.1:9000", "allow_http": True, "timeout": 30})
    root = s.resolved_store_root
    assert isinstance(root, StoreRoot) and root.uri == "s3://bucket/some/prefix" and root.scheme == "s3"
    # Every option is a string, as object_store wants them; YAML's true is "true".
    assert root.storage_options == {"aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true", "timeout": "30"}
    assert not is_local(root) and local_dir(root) == (tmp_path / "staging").resolve()
    assert staging_dir(root) == (tmp_path / "staging" / ".staging").resolve()

    store = ProjectStore(root, 7)
    assert store.uri == "s3://bucket/some/prefix/project-7.lance"
    assert store.sibling_uri("media") == "s3://bucket/some/prefix/project-7.media.lance"
    assert store.storage_options == root.storage_options and store.storage_options is not root.storage_options

    moved = Settings(data_dir=tmp_path, store_root="gs://b/p", staging_dir=tmp_path / "fast").resolved_store_root
    assert isinstance(moved, StoreRoot) and moved.local_dir == (tmp_path / "fast").resolve()


def test_a_folder_stays_a_path_and_file_uris_are_folders(tmp_path):
    assert Settings(data_dir=tmp_path).resolved_store_root == (tmp_path / "datasets").resolve()
    assert Settings(store_root=tmp_path / "x").resolved_store_root == tmp_path / "x"
    assert Settings(store_root=f"file://{tmp_path}/y").resolved_store_root == tmp_path / "y"
    store = ProjectStore(Settings(store_root=str(tmp_path)).resolved_store_root, 3)
    assert store.uri == str(tmp_path / "project-3.lance") and store.storage_options is None
    with project_lock(store.root, 3):
        assert (tmp_path / "project-3.lock").exists()


@pytest.mark.parametrize("uri, words", [
    ("http://bucket/prefix", "is not a store Lance writes"),
    ("ftp://bucket/prefix", "s3:// (S3 or S3-compatible)"),
    ("s3:///prefix", "names no bucket; write it as s3://bucket/prefix"),
    ("s3://AKIAXXXX:hunter22@bucket/prefix", "must not hold credentials"),
])
def test_a_bad_uri_is_one_line_naming_the_fix(tmp_path, uri, words):
    config = tmp_path / "config.yaml"
    config.write_text(f"store_root: {uri}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config, env={})
    message = str(err.value)
    assert words in message and "\n" not in message and "hunter22" not in message

    cli = CliRunner().invoke(main, ["--config", str(config), "tags"])
    assert cli.exit_code == 2 and words in cli.output and "Traceback" not in cli.output


def test_data_dir_stays_local(tmp_path):
    with pytest.raises(ConfigError, match="data_dir must be a local folder .*; put the bucket in store_root: s3://b/p"):
        Settings(data_dir="s3://b/p")
    assert Settings(data_dir=f"file://{tmp_path}").data_dir == tmp_path


def test_storage_options_from_the_environment_and_secrets_are_masked(tmp_path):
    s = load_settings(env={"LS_SPACE_SYNC__STORE_ROOT": "s3://bucket/p",
                           "LS_SPACE_SYNC__STORAGE_OPTIONS__AWS_ENDPOINT": "http://127.0.0.1:9000",
                           "LS_SPACE_SYNC__STORAGE_OPTIONS__AWS_SECRET_ACCESS_KEY": "0123456789",
                           "AWS_SESSION_TOKEN": "token-from-env-1"})
    root = s.resolved_store_root
    assert isinstance(root, StoreRoot)
    # A secret stays the string it was (not YAML's int) and is masked in every message from now on.
    assert root.storage_options["aws_secret_access_key"] == "0123456789"
    assert mask("key 0123456789, token token-from-env-1") == "key ***, token ***"
    assert "0123456789" not in repr(root) + str(root)


def test_no_credentials_is_one_line_naming_the_variables(no_aws, tmp_path):
    root = Settings(data_dir=tmp_path, store_root="s3://bucket/p",
                    storage_options={"aws_endpoint": "http://127.0.0.1:1", "allow_http": "true",
                                     "aws_region": "us-east-1"}).resolved_store_root
    with pytest.raises(StoreAccessError) as err:
        ProjectStore(root, 1).exists()
    assert "no credentials for the store s3://bucket/p" in str(err.value)
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(err.value) and "\n" not in str(err.value)

    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path}\nstore_root: s3://bucket/p\n"
                      "storage_options: {aws_endpoint: 'http://127.0.0.1:1', allow_http: true, aws_region: us-east-1}\n")
    cli = CliRunner().invoke(main, ["--config", str(config), "tags"])
    assert cli.exit_code == 2 and "no credentials for the store" in cli.output and "Traceback" not in cli.output


def test_a_store_that_does_not_answer_is_retriable(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s-test")
    root = StoreRoot.parse("s3://bucket/p", {"aws_endpoint": "http://127.0.0.1:1", "allow_http": "true",
                                             "aws_region": "us-east-1", "client_max_retries": "0"}, Path(tmp_path))
    with pytest.raises(StoreUnreachable) as err:
        stored_projects(root)
    assert err.value.retriable and "cannot reach the object store of s3://bucket/p at http://127.0.0.1:1" in str(err.value)
