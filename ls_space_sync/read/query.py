"""SQL over the project datasets with DuckDB.

Each project's dataset is a table named ``project_<id>`` (``project_3``), at its latest version or
at a chosen tag, version or time (:func:`ls_space_sync.diff.parse_ref`). The Lance datasets are
registered with DuckDB as Arrow datasets: DuckDB pushes the columns a query reads and its simple
filters down to Lance, so ``SELECT count(*) FROM project_3`` reads no JSON at all, and nothing is
loaded into Python before the result.

The row format is :mod:`ls_space_sync.records`: ``annotations`` and ``predictions`` are
``list<struct>`` (``unnest`` them), each with ``result`` as a JSON string (``json_each`` it).
:data:`EXAMPLES` holds worked queries for the usual questions; ``ls-space-sync sql --example NAME
--project P`` runs one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import duckdb
import pyarrow as pa

from ls_space_sync.errors import Terminal
from ls_space_sync.model.refs import Ref
from ls_space_sync.read.diff import open_ref
from ls_space_sync.read.examples import EXAMPLES
from ls_space_sync.store.dataset import ProjectStore, Root, stored_projects  # noqa: F401 - stored_projects: its old home
from ls_space_sync.views.store import ViewStore, stored_views

_TABLE = re.compile(r"^project_(\d+)$")
_VIEW_TABLE = re.compile(r"^view_([a-z][a-z0-9_]*)$")



class QueryError(Terminal, ValueError):
    """A query DuckDB cannot run, or an output file of an unknown kind; the message says why."""


def table_name(project_id: int) -> str:
    """The SQL table name of a project's dataset: ``project_3``."""
    return f"project_{int(project_id)}"


def example(name: str, project_id: int) -> str:
    """Return the example query ``name`` (a key of :data:`EXAMPLES`) for a project's table.

    Raises:
        QueryError: no such example.
    """
    if name not in EXAMPLES:
        raise QueryError(f"no example query {name!r}; choose one of: {', '.join(EXAMPLES)}")
    return EXAMPLES[name].strip().format(table=table_name(project_id))


def _identifiers(query: str) -> list[str]:
    """Every identifier token of a query (DuckDB's tokenizer: string literals and comments are not
    identifiers), without binding it, so a query whose tables DuckDB cannot name yet still has them."""
    tokens = duckdb.tokenize(query)
    ends = [pos for pos, _ in tokens[1:]] + [len(query)]
    out = []
    for (pos, kind), end in zip(tokens, ends):
        if kind == duckdb.token_type.identifier:
            out.append(query[pos:end].strip().strip('"'))
    return out


def _names(query: str) -> set[str]:
    try:
        return set(duckdb.get_table_names(query))
    except duckdb.Error:
        try:
            return set(_identifiers(query))
        except duckdb.Error:
            return set()


def referenced_views(query: str, root: Root) -> dict[str, int]:
    """The stored views whose tables (``view_<name>``) a query names: ``{name: source project id}``.

    Raises:
        QueryError: a view name is stored under two projects (say which to read with the Python API).
    """
    stored = stored_views(root)
    out = {}
    for name in _names(query):
        m = _VIEW_TABLE.match(name.split(".")[-1].strip('"'))
        if m and m.group(1) in stored:
            pids = stored[m.group(1)]
            if len(pids) > 1:
                raise QueryError(f"view {m.group(1)} is stored for projects {pids}; remove the stale one "
                                 f"(project-<id>.view-{m.group(1)}.lance) or read it with lss.open_view")
            out[m.group(1)] = pids[0]
    return out


def referenced_projects(query: str, root: Root) -> list[int]:
    """Project ids whose tables a query names.

    DuckDB names the tables of most queries (``get_table_names``); for those it cannot bind
    without the tables (an ``UNNEST`` of a column, DuckDB 1.x-2.0) the identifiers of the query's
    tokens are read instead. Never "every stored project": a version selector (``--tag``) applies
    to the tables a query reads, and tag names are per project.
    """
    try:
        names = duckdb.get_table_names(query)
    except duckdb.Error:
        try:
            names = set(_identifiers(query))
        except duckdb.Error:
            return []  # not even tokens: DuckDB's own error, from running it, says why
    out = set()
    for name in names:
        m = _TABLE.match(name.split(".")[-1].strip('"'))
        if m:
            out.add(int(m.group(1)))
    return sorted(out)


def connect(
    root: Root,
    *,
    ref: Ref | str | int | None = None,
    refs: Mapping[int, Ref | str | int | None] | None = None,
    projects: Iterable[int] | None = None,
    views: Mapping[str, int] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB connection with project datasets as tables ``project_<id>``.

    Materialized views are tables ``view_<name>`` (``views``: ``{name: source project}``; default
    every stored view), at the same ref as their source project (views carry their source's tags).

    Args:
        root: the store root (``Settings.resolved_store_root``).
        ref: the version every table shows (tag, version, ``@time``; default latest).
        refs: per-project refs that override ``ref``, ``{3: "run-000002"}``.
        projects: the projects to register (default: every stored project, plus those in ``refs``).

    The connection's time zone is UTC, so timestamps print as stored.

    Raises:
        StoreError: a project has no dataset, or no such tag/version.
    """
    refs = dict(refs or {})
    ids = sorted(set(stored_projects(root) if projects is None else projects) | set(refs))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for pid in ids:
        ds = open_ref(ProjectStore(root, pid), refs.get(pid, ref))
        con.register(table_name(pid), ds)
    if views is None:
        views = {name: pids[0] for name, pids in stored_views(root).items() if len(pids) == 1}
    for name, pid in views.items():
        con.register(f"view_{name}", open_ref(ViewStore(ProjectStore(root, pid), name), refs.get(pid, ref)))
    return con


def run(
    root: Root,
    query: str,
    *,
    ref: Ref | str | int | None = None,
    refs: Mapping[int, Ref | str | int | None] | None = None,
) -> tuple[duckdb.DuckDBPyConnection, Any]:
    """Run one SQL statement over the project tables it names; return ``(connection, relation)``.

    The relation is ``None`` for a statement without a result (``CREATE VIEW ...``). Only the
    datasets the query names are opened.

    Raises:
        StoreError: a named project has no dataset, or no such tag/version.
        QueryError: DuckDB rejected the query (the message is DuckDB's, plus the known tables).
    """
    query = query.strip().rstrip(";")
    # A table of a project without a dataset is left to DuckDB, whose error lists the known ones.
    named = [p for p in referenced_projects(query, root) if ProjectStore(root, p).exists()]
    con = connect(root, ref=ref, refs=refs, projects=named, views=referenced_views(query, root))
    try:
        return con, con.sql(query)
    except duckdb.Error as exc:
        con.close()
        known = ", ".join([table_name(p) for p in stored_projects(root)] + [f"view_{v}" for v in stored_views(root)]) \
            or "none (run `ls-space-sync sync` first)"
        # One line: DuckDB's first line says what and where ("syntax error at or near ..."); the
        # rest is its caret drawing.
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise QueryError(f"{first} (tables: {known})") from None


def to_arrow(relation: Any) -> pa.Table:
    """Fetch a DuckDB relation as an Arrow table."""
    # DuckDB 2.0 names it to_arrow_table (fetch_arrow_table warns there); 1.x returns a table from arrow().
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    out = fetch()
    return out.read_all() if isinstance(out, pa.RecordBatchReader) else out


def write_result(con: duckdb.DuckDBPyConnection, relation: Any, path: Path) -> int:
    """Write a query result to ``path`` by its suffix: ``.csv``, ``.parquet``, ``.json`` (one array)
    or ``.jsonl``/``.ndjson`` (one object per line). Returns the row count.

    Raises:
        QueryError: another suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    formats = {
        ".csv": "FORMAT csv, HEADER true",
        ".parquet": "FORMAT parquet",
        ".json": "FORMAT json, ARRAY true",
        ".jsonl": "FORMAT json",
        ".ndjson": "FORMAT json",
    }
    if suffix not in formats:
        raise QueryError(f"cannot tell the format of {path}: name it .csv, .parquet, .json or .jsonl")
    relation.create_view("ls_space_sync_result")
    target = str(path).replace("'", "''")
    con.execute(f"COPY ls_space_sync_result TO '{target}' ({formats[suffix]})")
    row = con.execute("SELECT count(*) FROM ls_space_sync_result").fetchone()
    assert row is not None  # count(*) always returns one row
    return int(row[0])


def sql(root: Root, query: str, **refs: Any) -> pa.Table:
    """Run a query (see :func:`run`) and return its result as an Arrow table."""
    con, relation = run(root, query, **refs)
    try:
        return to_arrow(relation) if relation is not None else pa.table({})
    finally:
        con.close()

