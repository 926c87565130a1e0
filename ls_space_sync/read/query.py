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
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import click
import duckdb
import pyarrow as pa

from ls_space_sync.read.diff import open_ref
from ls_space_sync.errors import Terminal
from ls_space_sync.store.dataset import ProjectStore

_TABLE = re.compile(r"^project_(\d+)$")

EXAMPLES: dict[str, str] = {
    "label-distribution": """
-- Label distribution per control (from_name): regions and tasks per label.
-- Cancelled (skipped) annotations are left out.
SELECT r.value ->> 'from_name' AS control,
       l.value ->> '$' AS label,
       count(*) AS regions,
       count(DISTINCT t.id) AS tasks
FROM {table} AS t,
     unnest(t.annotations) AS u(a),
     json_each(a.result) AS r,
     json_each(r.value, '$.value.' || (r.value ->> 'type')) AS l
WHERE NOT coalesce(a.was_cancelled, false)
GROUP BY ALL
ORDER BY control, regions DESC, label
""",
    "annotations-per-annotator": """
-- Annotations per annotator (completed_by = Label Studio user id).
SELECT a.completed_by AS annotator,
       count(*) AS annotations,
       count(*) FILTER (WHERE a.was_cancelled) AS cancelled,
       count(DISTINCT t.id) AS tasks,
       min(a.created_at) AS first_created,
       max(a.updated_at) AS last_updated
FROM {table} AS t, unnest(t.annotations) AS u(a)
GROUP BY ALL
ORDER BY annotations DESC, annotator
""",
    "disagreements": """
-- Tasks whose annotators disagree: per task and control, more than one distinct answer, where an
-- answer is the sorted list of labels one annotation gives for that control.
WITH answers AS (
    SELECT t.id AS task_id, a.id AS annotation_id, r.value ->> 'from_name' AS control,
           list_sort(list(l.value ->> '$')) AS answer
    FROM {table} AS t,
         unnest(t.annotations) AS u(a),
         json_each(a.result) AS r,
         json_each(r.value, '$.value.' || (r.value ->> 'type')) AS l
    WHERE NOT coalesce(a.was_cancelled, false)
    GROUP BY ALL
)
SELECT task_id, control,
       count(*) AS annotations,
       count(DISTINCT answer) AS distinct_answers,
       list_sort(list(DISTINCT array_to_string(answer, '|'))) AS answers
FROM answers
GROUP BY ALL
HAVING count(DISTINCT answer) > 1
ORDER BY task_id, control
""",
    "lead-time": """
-- Lead time (seconds an annotator spent on an annotation) percentiles, per annotator and overall.
SELECT coalesce(CAST(a.completed_by AS VARCHAR), 'all') AS annotator,
       count(a.lead_time) AS annotations,
       quantile_cont(a.lead_time, 0.5) AS p50_seconds,
       quantile_cont(a.lead_time, 0.9) AS p90_seconds,
       quantile_cont(a.lead_time, 0.99) AS p99_seconds,
       max(a.lead_time) AS max_seconds
FROM {table} AS t, unnest(t.annotations) AS u(a)
WHERE NOT coalesce(a.was_cancelled, false) AND a.lead_time IS NOT NULL
GROUP BY ROLLUP (a.completed_by)
ORDER BY GROUPING(a.completed_by), a.completed_by
""",
}


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


def stored_projects(root: Path) -> list[int]:
    """Ids of the projects that have a dataset under the store root."""
    out = []
    for path in Path(root).glob("project-*.lance"):
        suffix = path.name[len("project-"):-len(".lance")]
        if suffix.isdigit() and ProjectStore(root, int(suffix)).exists():
            out.append(int(suffix))
    return sorted(out)


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


def referenced_projects(query: str, root: Path) -> list[int]:
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
    root: Path,
    *,
    ref: str | int | None = None,
    refs: Mapping[int, str | int | None] | None = None,
    projects: Iterable[int] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB connection with project datasets as tables ``project_<id>``.

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
    return con


def run(
    root: Path,
    query: str,
    *,
    ref: str | int | None = None,
    refs: Mapping[int, str | int | None] | None = None,
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
    con = connect(root, ref=ref, refs=refs, projects=named)
    try:
        return con, con.sql(query)
    except duckdb.Error as exc:
        con.close()
        known = ", ".join(table_name(p) for p in stored_projects(root)) or "none (run `ls-space-sync sync` first)"
        raise QueryError(f"{exc}\n(tables: {known})") from None


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
    return int(con.execute("SELECT count(*) FROM ls_space_sync_result").fetchone()[0])


def sql(root: Path, query: str, **refs: Any) -> pa.Table:
    """Run a query (see :func:`run`) and return its result as an Arrow table."""
    con, relation = run(root, query, **refs)
    try:
        return to_arrow(relation) if relation is not None else pa.table({})
    finally:
        con.close()



# --- command line ---------------------------------------------------------------------------

def parse_at(values: Iterable[str]) -> dict[int, str]:
    """Parse ``--at`` values (``project_3=run-000002`` or ``3=run-000002``) into ``{project: ref}``.

    Raises:
        click.BadParameter: a value is not ``TABLE=REF``.
    """
    out: dict[int, str] = {}
    for value in values:
        name, sep, ref = value.partition("=")
        m = re.fullmatch(r"(?:project_)?(\d+)", name.strip())
        if not sep or not m or not ref.strip():
            raise click.BadParameter(f"{value!r}: write TABLE=REF, e.g. project_3=run-000002", param_hint="--at")
        out[int(m.group(1))] = ref.strip()
    return out


@click.command("sql", epilog="Examples (--example NAME --project P): " + ", ".join(EXAMPLES))
@click.argument("query", required=False)
@click.option("--example", "example_name", type=click.Choice(list(EXAMPLES)), help="Run a worked example query.")
@click.option("--project", "-p", type=int, help="The project an --example runs on.")
@click.option("--tag", help="Every table at this tag, e.g. run-000003.")
@click.option("--version", "version", type=int, help="Every table at this version number.")
@click.option("--as-of", "as_of", metavar="TIME", help="Every table as of this UTC time (ISO 8601).")
@click.option("--at", "at", multiple=True, metavar="TABLE=REF",
              help="One table at a tag, version or @time, e.g. project_3=run-000002 (repeatable).")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write the result to a .csv, .json, .jsonl or .parquet file.")
@click.option("--max-rows", default=40, show_default=True, help="Rows shown on the terminal.")
@click.option("--show-query", is_flag=True, help="Print the query before its result.")
@click.pass_obj
def sql_command(obj: Any, query: str | None, example_name: str | None, project: int | None, tag: str | None,
                version: int | None, as_of: str | None, at: tuple[str, ...], output: Path | None, max_rows: int,
                show_query: bool) -> None:
    """Run DuckDB SQL over the project datasets: each is a table named project_<id>.

    \b
    ls-space-sync sql "SELECT count(*) FROM project_3"
    ls-space-sync sql --tag run-000002 "SELECT is_labeled, count(*) FROM project_3 GROUP BY 1"
    ls-space-sync sql --example label-distribution --project 3 -o labels.csv
    """
    from ls_space_sync.read.api import ref_of

    if example_name:
        if query or project is None:
            raise click.UsageError("--example needs --project P and no QUERY")
        query = example(example_name, project)
    if not query:
        raise click.UsageError('give a QUERY, e.g. "SELECT count(*) FROM project_3", or --example NAME --project P')
    try:
        ref = ref_of(tag, version, as_of)
    except ValueError:
        raise click.UsageError("give at most one of --tag, --version and --as-of") from None
    if show_query:
        click.echo(query, err=True)
    try:
        con, relation = run(obj.settings.resolved_store_root, query, ref=ref, refs=parse_at(at))
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if relation is None:
            return
        if output is not None:
            rows = write_result(con, relation, output)
            click.echo(f"wrote {rows} rows to {output}", err=True)
        else:
            # On a terminal fit its width; piped, show every column.
            width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 100_000
            relation.show(max_rows=max_rows, max_width=width)
    except (duckdb.Error, QueryError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        con.close()
