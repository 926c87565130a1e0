"""Commands that read stored versions: ``sql``, ``diff``, ``export``."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

import click

from ls_space_sync.cli.options import echo_json, json_option, pick_ref, project_option, version_options
from ls_space_sync.read.examples import EXAMPLES


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
@version_options
@click.option("--at", "at", multiple=True, metavar="TABLE=REF",
              help="One table at a tag, version or @time, e.g. project_3=run-000002 (repeatable).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Write the result to a .csv, .json, .jsonl or .parquet file.")
@click.option("--max-rows", default=40, show_default=True, help="Rows shown on the terminal.")
@click.option("--show-query", is_flag=True, help="Print the query before its result.")
@click.option("--json", "as_json", is_flag=True, help="Every row as one JSON object per line instead of a table.")
@click.pass_obj
def sql_command(obj: Any, query: str | None, example_name: str | None, project: int | None, tag: str | None,
                version: int | None, as_of: str | None, at: tuple[str, ...], output: Path | None, max_rows: int,
                show_query: bool, as_json: bool) -> None:
    """Run DuckDB SQL over the project datasets: each is a table named project_<id>.

    \b
    ls-space-sync sql "SELECT count(*) FROM project_3"
    ls-space-sync sql --tag run-000002 "SELECT is_labeled, count(*) FROM project_3 GROUP BY 1"
    ls-space-sync sql --example label-distribution --project 3 -o labels.csv
    """
    import duckdb

    from ls_space_sync.read.query import QueryError, example, run, to_arrow, write_result

    if example_name:
        if query or project is None:
            raise click.UsageError("--example needs --project P and no QUERY")
        query = example(example_name, project)
    if not query:
        raise click.UsageError('give a QUERY, e.g. "SELECT count(*) FROM project_3", or --example NAME --project P')
    ref = pick_ref(tag, version, as_of)
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
        elif as_json:
            for batch in to_arrow(relation).to_batches(1000):
                for row in batch.to_pylist():
                    echo_json(row)
        else:
            # On a terminal fit its width; piped, show every column.
            width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 100_000
            relation.show(max_rows=max_rows, max_width=width)
    except (duckdb.Error, QueryError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        con.close()


@click.command("diff")
@project_option()
@click.argument("old")
@click.argument("new", required=False)
@json_option
@click.option("--no-details", is_flag=True, help="Task ids only: skip annotation and prediction changes.")
@click.option("--limit", default=20, show_default=True, help="Ids and tasks listed per kind (people's output).")
@click.pass_obj
def diff_command(obj: Any, project: int, old: str, new: str | None, as_json: bool, no_details: bool,
                 limit: int) -> None:
    """Show the tasks inserted, updated and deleted between two versions of a project.

    OLD and NEW are tags (run-000002), version numbers (7 or v7), @TIME (UTC, ISO 8601) or
    latest; NEW defaults to latest. Updated tasks list their changed fields and annotations and
    predictions added (+), changed (~) and removed (-), by id.
    """
    from ls_space_sync.read.diff import diff_versions
    from ls_space_sync.store.dataset import ProjectStore

    result = diff_versions(ProjectStore(obj.settings.resolved_store_root, project), old, new, details=not no_details)
    if as_json:
        echo_json(result.to_json())
        return
    for line in result.lines(limit):
        click.echo(line)


@click.command("export")
@project_option()
@version_options
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "hf", "coco", "yolo"]), default="parquet",
              show_default=True, help="parquet: stored rows; jsonl: Label Studio task JSON; hf: a Hugging Face datasets "
              "folder; coco, yolo: images and labels (needs stored media).")
@click.option("--media", "media", type=click.Choice(["auto", "inline", "ref", "none"]), default="auto",
              show_default=True, help="Join stored media: auto (hf: Image() column, parquet: sha256), inline "
              "(Parquet holds the bytes), ref (sha256 only), none.")
@click.option("--regions", is_flag=True, help="One row per region (label, box/span, author) instead of per task.")
@click.option("--source", type=click.Choice(["annotations", "predictions"]), default="annotations", show_default=True,
              help="Whose regions --regions flattens.")
@click.option("--where", metavar="SQL", help='Only tasks matching this predicate, e.g. "is_labeled".')
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="File (or folder for hf).")
@click.pass_obj
def export_command(obj: Any, project: int, tag: str | None, version: int | None, as_of: str | None, fmt: str,
                   media: str, regions: bool, source: str, where: str | None, output: Path) -> None:
    """Export a version of a project for training: Parquet, JSONL or a Hugging Face dataset."""
    from ls_space_sync.errors import LsSpaceSyncError
    from ls_space_sync.read.api import export_version
    from ls_space_sync.read.export import MissingExtra
    from ls_space_sync.store.dataset import BadFilter

    pick_ref(tag, version, as_of)  # exit 2 on a malformed choice, before any work
    try:
        rows = export_version(project, output, fmt, tag, version, as_of, obj.settings, regions=regions, where=where,
                      source=source, media=media)
    except MissingExtra as exc:
        raise click.ClickException(str(exc)) from None
    except BadFilter as exc:
        raise click.ClickException(f"export failed: {exc}") from None
    except LsSpaceSyncError:
        raise  # one line and its exit code (a malformed time: 2), from the command group
    except (OSError, ValueError) as exc:  # Lance reports a bad --where as ValueError/OSError
        raise click.ClickException(f"export failed: {exc}") from None
    what = f"{source[:-1]} regions" if regions else "tasks"
    click.echo(f"wrote {rows} {what} of project {project} to {output}", err=True)
