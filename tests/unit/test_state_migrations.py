"""The state database's schema versions (store/migrations): a new database reaches the head, a
database made by release 0.1.0 upgrades in place and keeps its rows, an up-to-date database opens
without migrating, two processes opening a new database at once are safe, and a version written
by 0.1.0 (its signpost under the property ``cursor``) is still recovered.

Each database test runs on a temporary SQLite file and on a throwaway PostgreSQL server
(tests/pg.py; like tests/integration/test_postgres_state.py, a server that cannot start fails
the PostgreSQL cases: PostgreSQL is a supported state database, not an optional one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import respx
from sqlalchemy import create_engine, inspect, select, text

from ls_space_sync.pull.run import Syncer
from ls_space_sync.settings import load_settings
from ls_space_sync.store import state as state_module
from ls_space_sync.store.dataset import ProjectStore
from ls_space_sync.store.state import (
    FAILED,
    SCHEMA_REVISION,
    SUCCEEDED,
    Base,
    MirrorTarget,
    PushLink,
    PushRun,
    StateDB,
    StateSchemaError,
    alembic_config,
    schema_revision,
    upgrade_schema,
)
from tests.fakes import KEY, URL, FakeLabelStudio
from tests.pg import PostgresServer

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = {"sync_runs", "project_cursors", "push_links", "push_runs", "mirror_targets", "project_leases", "daemons"}

# What release 0.1.0's `Base.metadata.create_all` made on SQLite, read from a database it created
# (sqlite_master; compared with whitespace collapsed). The push and mirror tables appeared only once
# their modules had been imported, so a 0.1.0 database may hold the pull tables alone.
RELEASE_0_1_PULL_DDL = [
    """CREATE TABLE sync_runs (
        run_id VARCHAR(64) NOT NULL, project_id INTEGER NOT NULL, seq INTEGER NOT NULL,
        kind VARCHAR(16) NOT NULL, "trigger" VARCHAR(32) NOT NULL, status VARCHAR(16) NOT NULL,
        started_at DATETIME NOT NULL, finished_at DATETIME, inserted INTEGER NOT NULL,
        updated INTEGER NOT NULL, deleted INTEGER NOT NULL, full_scan BOOLEAN NOT NULL,
        requests INTEGER NOT NULL, version BIGINT, tag VARCHAR(64), cursor DATETIME, error TEXT,
        PRIMARY KEY (run_id)
    )""",
    "CREATE INDEX ix_sync_runs_status ON sync_runs (status)",
    "CREATE INDEX ix_sync_runs_project_id ON sync_runs (project_id)",
    """CREATE TABLE project_cursors (
        project_id INTEGER NOT NULL, cursor DATETIME, signpost DATETIME, last_full_scan_at DATETIME,
        runs_since_full_scan INTEGER NOT NULL, last_success_at DATETIME,
        PRIMARY KEY (project_id)
    )""",
]
RELEASE_0_1_PUSH_DDL = [
    """CREATE TABLE push_links (
        id INTEGER NOT NULL, source_project INTEGER NOT NULL, source_id BIGINT NOT NULL,
        source_created BIGINT, source_stamp VARCHAR(200), target_project INTEGER NOT NULL,
        target_id BIGINT NOT NULL, target_created BIGINT, target_stamp VARCHAR(200),
        content_hash VARCHAR(64), version BIGINT, run_id VARCHAR(64), pushed_at DATETIME,
        PRIMARY KEY (id),
        UNIQUE (source_project, source_id, source_created, target_project)
    )""",
    "CREATE INDEX ix_push_links_target ON push_links (target_project, target_id)",
    """CREATE TABLE push_runs (
        run_id VARCHAR(64) NOT NULL, source_project INTEGER NOT NULL, target_project INTEGER NOT NULL,
        source_version BIGINT NOT NULL, new_project BOOLEAN NOT NULL,
        PRIMARY KEY (run_id)
    )""",
    "CREATE INDEX ix_push_runs_source_project ON push_runs (source_project)",
    "CREATE INDEX ix_push_runs_target_project ON push_runs (target_project)",
    """CREATE TABLE mirror_targets (
        source_project INTEGER NOT NULL, target_project INTEGER NOT NULL,
        PRIMARY KEY (source_project)
    )""",
]

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server for this module, started only if a PostgreSQL case runs."""
    try:
        server = PostgresServer().start()
    except Exception as exc:  # noqa: BLE001 - any reason must fail the tests, not skip them
        pytest.fail(f"could not start PostgreSQL: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty database: a SQLite file that does not exist yet, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'state.db'}"
    return request.getfixturevalue("postgres").create_database()


def sql(url: str, *statements: str, params: dict | None = None) -> list:
    """Run statements in one transaction on a fresh engine; return the last one's rows (if any)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = None
            for statement in statements:
                result = conn.execute(text(statement), params or {})
            return result.all() if result is not None and result.returns_rows else []
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    try:
        return schema_revision(engine)
    finally:
        engine.dispose()


def at(url: str, t: datetime) -> datetime:
    """``t`` as 0.1.0 bound it: naive UTC on SQLite, aware on PostgreSQL."""
    return t.replace(tzinfo=None) if url.startswith("sqlite") else t


def columns(url: str, table: str) -> list[str]:
    engine = create_engine(url)
    try:
        return [c["name"] for c in inspect(engine).get_columns(table)]
    finally:
        engine.dispose()


def child_env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout's package."""
    path = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def make_release_0_1(url: str, *, push_tables: bool = True) -> None:
    """Make the database release 0.1.0 would have made: its tables, no ``alembic_version``.

    SQLite: the DDL that release emitted, verbatim. PostgreSQL: revision 0001 (which the SQLite
    case proves is that DDL) with the ``alembic_version`` table dropped afterwards.
    """
    if url.startswith("sqlite"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        sql(url, *RELEASE_0_1_PULL_DDL, *(RELEASE_0_1_PUSH_DDL if push_tables else []))
        return
    from alembic import command

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
            conn.exec_driver_sql("DROP TABLE alembic_version")
            if not push_tables:
                conn.exec_driver_sql("DROP TABLE push_links, push_runs, mirror_targets")
    finally:
        engine.dispose()


def fill_release_0_1(url: str) -> None:
    """Rows in every 0.1.0 table, written as that release wrote them (naive UTC on SQLite)."""
    sql(url,
        "INSERT INTO sync_runs (run_id, project_id, seq, kind, \"trigger\", status, started_at, finished_at, inserted, "
        "updated, deleted, full_scan, requests, version, tag, cursor, error) VALUES "
        "('r1', 7, 1, 'pull', 'manual', 'succeeded', :t0, :t1, 5, 0, 0, true, 3, 1, 'run-000001', :c1, NULL), "
        "('r2', 7, 2, 'pull', 'schedule', 'failed', :t1, :t2, 0, 0, 0, false, 1, NULL, NULL, NULL, 'boom'), "
        "('p1', 7, 1, 'push', 'manual', 'succeeded', :t2, :t2, 2, 0, 0, false, 4, 1, NULL, NULL, NULL)",
        "INSERT INTO project_cursors (project_id, cursor, signpost, last_full_scan_at, runs_since_full_scan, "
        "last_success_at) VALUES (7, :c1, :c1, :t1, 0, :t1)",
        "INSERT INTO push_links (source_project, source_id, source_created, source_stamp, target_project, target_id, "
        "target_created, target_stamp, content_hash, version, run_id, pushed_at) VALUES "
        "(7, 101, 1700000000000000, '[1]', 8, 201, 1700000000000001, '[2]', 'h1', 1, 'p1', :t2), "
        "(7, 102, NULL, NULL, 8, 202, NULL, NULL, NULL, 1, 'p1', :t2)",
        "INSERT INTO push_runs (run_id, source_project, target_project, source_version, new_project) "
        "VALUES ('p1', 7, 8, 1, false)",
        "INSERT INTO mirror_targets (source_project, target_project) VALUES (7, 8)",
        params={"t0": at(url, T0), "t1": at(url, T0 + timedelta(seconds=2)),
                "t2": at(url, T0 + timedelta(seconds=3)), "c1": at(url, T0 - timedelta(seconds=5))})


def test_schema_revision_is_the_head_of_the_scripts():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [SCHEMA_REVISION]  # one line of history, ending where the classes are
    assert [s.revision for s in script.walk_revisions()] == ["0003", "0002", "0001"]


def test_a_new_database_gets_every_revision_and_matches_the_classes(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    db = StateDB(db_url)
    try:
        assert schema_revision(db.engine) == SCHEMA_REVISION
        assert TABLES <= set(inspect(db.engine).get_table_names())
        with db.engine.connect() as conn:
            # What the revisions made is what the classes map: no change left for autogenerate.
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
        run = db.start_run(1)
        db.checkpoint(1, signpost=T0, full_scan=True)
        db.finish_run(run.run_id, SUCCEEDED, signpost=T0, full_scan=True)
        assert db.cursor(1).cursor == T0 and db.runs(1)[0].signpost == T0
    finally:
        db.dispose()


def test_revision_0001_is_release_0_1_schema(tmp_path):
    """On SQLite every CREATE that 0001 emits is the one 0.1.0's create_all emitted, word for word."""
    from alembic import command

    old, new = f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    make_release_0_1(old)
    engine = create_engine(new)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    engine.dispose()
    query = "SELECT type, name, sql FROM sqlite_master WHERE tbl_name != 'alembic_version' ORDER BY name"

    def schema(url):
        return [(kind, name, " ".join(ddl.split()) if ddl else None) for kind, name, ddl in sql(url, query)]

    assert schema(new) == schema(old)
    assert len(schema(old)) == 13  # 5 tables, 5 indexes, 3 automatic ones (text primary keys, the unique)


@pytest.mark.parametrize("push_tables", [True, False], ids=["all-tables", "pull-tables-only"])
def test_a_release_0_1_database_upgrades_in_place_and_keeps_its_rows(db_url, push_tables):
    make_release_0_1(db_url, push_tables=push_tables)
    if push_tables:
        fill_release_0_1(db_url)
    else:
        sql(db_url, "INSERT INTO project_cursors (project_id, cursor, signpost, runs_since_full_scan) "
                    "VALUES (7, :c, :c, 3)", params={"c": at(db_url, T0)})
    assert revision_of(db_url) is None  # 0.1.0 had no schema version

    db = StateDB(db_url)
    try:
        assert schema_revision(db.engine) == SCHEMA_REVISION
        assert TABLES <= set(inspect(db.engine).get_table_names())  # what 0.1.0 had not made yet, too
        assert "signpost" not in columns(db_url, "project_cursors")
        assert "cursor" not in columns(db_url, "sync_runs")
        if not push_tables:
            assert db.cursor(7).cursor == T0 and db.cursor(7).runs_since_full_scan == 3
            return
        runs = {r.run_id: r for r in db.runs(7)}
        assert set(runs) == {"r1", "r2", "p1"}
        r1 = runs["r1"]
        assert (r1.status, r1.seq, r1.inserted, r1.full_scan, r1.version, r1.tag, r1.requests) == (
            SUCCEEDED, 1, 5, True, 1, "run-000001", 3)
        assert r1.signpost == T0 - timedelta(seconds=5)  # the old sync_runs.cursor, renamed
        assert r1.started_at == T0 and r1.duration_seconds == 2.0
        assert (runs["r2"].status, runs["r2"].error, runs["r2"].signpost) == (FAILED, "boom", None)
        state = db.cursor(7)
        assert state.cursor == T0 - timedelta(seconds=5) and state.last_success_at == T0 + timedelta(seconds=2)
        with db.Session() as s:
            links = s.scalars(select(PushLink).order_by(PushLink.source_id)).all()
            assert [(link.source_id, link.target_id, link.content_hash, link.source_created) for link in links] == [
                (101, 201, "h1", 1700000000000000), (102, 202, None, None)]
            assert links[0].pushed_at == T0 + timedelta(seconds=3)
            assert s.get(PushRun, "p1").target_project == 8 and s.get(PushRun, "p1").new_project is False
            assert s.get(MirrorTarget, 7).target_project == 8
            s.add(PushLink(source_project=7, source_id=103, target_project=8, target_id=203))
            s.commit()  # the id sequence goes on after the old rows
        # The run counter goes on from the old rows (the next tag is run-000003).
        assert db.start_run(7).seq == 3
    finally:
        db.dispose()


def test_opening_an_up_to_date_database_migrates_nothing(db_url, monkeypatch):
    StateDB(db_url).dispose()
    from alembic import command

    def refuse(*args, **kwargs):
        raise AssertionError("an up-to-date database ran Alembic")

    monkeypatch.setattr(command, "upgrade", refuse)
    db = StateDB(db_url)
    try:
        assert upgrade_schema(db.engine) is False
        assert sql(db_url, "SELECT version_num FROM alembic_version") == [(SCHEMA_REVISION,)]
    finally:
        db.dispose()


def test_opening_an_up_to_date_database_does_not_import_alembic(tmp_path):
    """The CLI opens the state database on every command: at the head that is one query."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    StateDB(url).dispose()
    probe = ("import sys; from ls_space_sync.store.state import StateDB; StateDB(sys.argv[1]).dispose(); "
             "print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, url], env=child_env(), capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_a_database_from_a_newer_release_is_refused(db_url):
    StateDB(db_url).dispose()
    sql(db_url, "UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(StateSchemaError, match="schema revision 0099.*knows up to 0003.*install that release"):
        StateDB(db_url)


def test_a_failed_upgrade_leaves_the_old_schema(tmp_path):
    """The upgrade is one transaction: a revision that fails takes the earlier ones back with it."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    make_release_0_1(url)
    fill_release_0_1(url)
    sql(url, "CREATE TABLE _alembic_tmp_sync_runs (x INTEGER)")  # 0002's copy of sync_runs cannot be made
    with pytest.raises(Exception, match="_alembic_tmp_sync_runs"):
        StateDB(url)
    assert revision_of(url) is None
    assert "cursor" in columns(url, "sync_runs") and "signpost" in columns(url, "project_cursors")
    assert sql(url, "SELECT count(*) FROM sync_runs") == [(3,)]
    sql(url, "DROP TABLE _alembic_tmp_sync_runs")
    db = StateDB(url)  # and once the obstacle is gone, the next open upgrades it
    assert schema_revision(db.engine) == SCHEMA_REVISION and len(db.runs(7)) == 3
    db.dispose()


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
import alembic.command, alembic.script  # imported before the start line, so the opens race
from ls_space_sync.store.state import StateDB
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
StateDB(url).dispose()
"""


@pytest.mark.parametrize("legacy", [False, True], ids=["new", "release-0.1"])
def test_two_processes_opening_the_same_database_at_once(db_url, tmp_path, legacy):
    if legacy:
        make_release_0_1(db_url)
        fill_release_0_1(db_url)
    env = child_env()
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, db_url, str(r), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline, "the openers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    assert sql(db_url, "SELECT version_num FROM alembic_version") == [(SCHEMA_REVISION,)]
    if legacy:
        assert sql(db_url, "SELECT count(*) FROM sync_runs") == [(3,)]
        assert sql(db_url, "SELECT count(*) FROM push_links") == [(2,)]


# --- a version written by release 0.1.0 ----------------------------------------------------------

def test_a_version_from_release_0_1_is_recovered_with_its_signpost(tmp_path, monkeypatch):
    """0.1.0 stored a run's signpost in the version property ``cursor``; a run that died after
    committing such a version is recovered with it (and new versions name it ``signpost``)."""
    settings = load_settings(
        env={"LABEL_STUDIO_URL": URL, "LABEL_STUDIO_API_KEY": KEY},
        overrides={"data_dir": str(tmp_path), "projects": [1], "sync": {"lag_seconds": 5},
                   "label_studio": {"retries": 0}},
    )
    commit = ProjectStore.commit

    def commit_as_release_0_1(self, rows, deletes, properties):
        old = {("cursor" if k == "signpost" else k): v for k, v in properties.items()}
        return commit(self, rows, deletes, old)

    def die():
        raise KeyboardInterrupt("killed between commit and checkpoint")

    with respx.mock(assert_all_called=False) as router:
        fake = FakeLabelStudio().mount(router)
        for i in range(3):
            fake.add(f"t{i}")
        syncer = Syncer(settings)
        with monkeypatch.context() as m:
            m.setattr(ProjectStore, "commit", commit_as_release_0_1)
            with pytest.raises(KeyboardInterrupt):
                syncer.run_once(1, _after_commit=die)
        first = syncer.state.runs(1)[0]
        syncer.state.finish_run(first.run_id, "running", finished_at=None)  # as a SIGKILL leaves it
        props = syncer.store(1).properties(1)
        assert "cursor" in props and "signpost" not in props
        signpost = datetime.fromisoformat(props["cursor"])

        fake.tick(60)
        fake.add("t3")
        result = syncer.run_once(1)
        assert result.recovered == [first.run_id] and result.inserted == 1
        recovered = {r.run_id: r for r in syncer.state.runs(1)}[first.run_id]
        assert (recovered.status, recovered.signpost, recovered.inserted) == (SUCCEEDED, signpost, 3)
        new_props = syncer.store(1).properties(result.version)
        assert "signpost" in new_props and "cursor" not in new_props
        assert syncer.state.cursor(1).cursor == datetime.fromisoformat(new_props["signpost"]) > signpost
        syncer.client.close()
        syncer.state.dispose()


def test_state_module_keeps_every_table():
    """Every table is a class of store/state.py (nothing registers tables on import elsewhere)."""
    assert set(Base.metadata.tables) == TABLES
    assert {mapper.class_.__module__ for mapper in Base.registry.mappers} == {state_module.__name__}
