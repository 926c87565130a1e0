"""The test-server helpers (tests/lsserver.py): which kinds run, and what a server's kind implies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ls_space_sync.quickstart.localserver import LocalLabelStudio
from tests import lsserver


def test_every_kind_runs_unless_the_variable_names_some(monkeypatch):
    monkeypatch.delenv(lsserver.KINDS_ENV_VAR, raising=False)
    assert lsserver.enabled_kinds() == ("sqlite", "postgresql", "oldest")
    monkeypatch.setenv(lsserver.KINDS_ENV_VAR, " sqlite, postgresql ")
    assert lsserver.enabled_kinds() == ("sqlite", "postgresql")
    monkeypatch.setenv(lsserver.KINDS_ENV_VAR, "sqlite,mysql")
    with pytest.raises(ValueError, match=r"LS_SPACE_SYNC_TEST_LS_KINDS: unknown kinds \['mysql'\]"):
        lsserver.enabled_kinds()


def test_the_kinds_needed_are_read_from_the_items_parameters():
    items = [SimpleNamespace(callspec=SimpleNamespace(params={"label_studio": "postgresql"})),
             SimpleNamespace(callspec=SimpleNamespace(params={"other": 1})),
             SimpleNamespace()]
    assert lsserver.kinds_needed(items) == {"postgresql"}


def test_only_a_server_on_sqlite_reuses_task_ids(tmp_path):
    pg = SimpleNamespace(user="postgres", port=5433)
    on_pg = LocalLabelStudio(tmp_path / "a", venv=tmp_path / "venv", extra_env=lsserver.postgres_env(pg))
    on_sqlite = LocalLabelStudio(tmp_path / "b", venv=tmp_path / "venv")
    assert on_pg.extra_env["POSTGRE_PORT"] == "5433" and on_pg.extra_env["DJANGO_DB"] == "default"
    assert (lsserver.database_of(on_pg), lsserver.reuses_task_ids(on_pg)) == ("postgresql", False)
    assert (lsserver.database_of(on_sqlite), lsserver.reuses_task_ids(on_sqlite)) == ("sqlite", True)


def test_the_oldest_release_and_its_venv_follow_the_variables(monkeypatch, tmp_path):
    monkeypatch.delenv(lsserver.OLDEST_VERSION_ENV_VAR, raising=False)
    monkeypatch.delenv(lsserver.OLDEST_VENV_ENV_VAR, raising=False)
    assert lsserver.oldest_version() == lsserver.OLDEST_LABEL_STUDIO_VERSION == "1.21.0"
    assert lsserver.oldest_venv().name == "label-studio-1.21.0-venv"
    monkeypatch.setenv(lsserver.OLDEST_VERSION_ENV_VAR, "1.20.0")
    assert lsserver.oldest_venv().name == "label-studio-1.20.0-venv"
    monkeypatch.setenv(lsserver.OLDEST_VENV_ENV_VAR, str(tmp_path / "v"))
    assert lsserver.oldest_venv() == tmp_path / "v"
