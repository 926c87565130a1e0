"""``ls-space-sync views list|refresh|read``: the materialized views of the ``views:`` config section."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ls_space_sync.cli.options import echo_json, json_option, pick_ref, version_options


@click.group("views")
def views_command() -> None:
    """List, refresh and read the materialized views (``views:`` in the config), versioned with their sources.

    \b
    ls-space-sync views list
    ls-space-sync views refresh regions
    ls-space-sync views read regions --tag run-000003 --limit 20
    ls-space-sync views diff regions run-000002 run-000003
    """


def _workspace(obj: Any) -> Any:
    from ls_space_sync.views import StoreWorkspace

    return StoreWorkspace(obj.settings)


@views_command.command("list")
@json_option
@click.pass_obj
def list_command(obj: Any, as_json: bool) -> None:
    """Show each configured view: its source, transform, the source version it reflects, rows, last refresh."""
    from ls_space_sync.views.refresh import view_store
    from ls_space_sync.views.transforms import load

    ws = _workspace(obj)
    try:
        if not ws.settings.views and not as_json:
            click.echo("no views configured: add a views: section to the config (see config.example.yaml)")
        for view in ws.settings.views:
            store = view_store(ws, view)
            source = ws.store(view.project)
            state = store.state()
            runs = [r for r in ws.state.runs(view.project, kind="view", limit=200) if r.trigger == view.name]
            last = runs[0] if runs else None
            try:
                current = load(view).fingerprint == state.get("fingerprint")
            except Exception:  # noqa: BLE001 - a transform that does not load is shown, not fatal here
                current = False
            info = {
                "view": view.name, "project": view.project, "table": f"view_{view.name}",
                "transform": view.builtin and f"builtin:{view.builtin}" or (view.sql and "sql") or f"python:{view.python}",
                "executor": view.executor, "uri": store.uri, "built": store.exists(),
                "version": store.version(), "rows": store.count(),
                "source_version": int(state["source_version"]) if state.get("source_version") else None,
                "source_latest": source.version(), "transform_current": current,
                "tags": len(store.tags()),
                "last_refresh": None if last is None else {
                    "status": last.status, "finished_at": last.finished_at.isoformat() if last.finished_at else None,
                    "error": last.error, "full": last.full_scan, "version": last.version},
            }
            if as_json:
                echo_json(info)
                continue
            behind = "" if info["source_version"] == info["source_latest"] else f" (source is at v{info['source_latest']})"
            built = (f"v{info['version']}, {info['rows']} rows, reflects source v{info['source_version']}{behind}, "
                     f"{info['tags']} tags") if info["built"] else "not built yet"
            click.echo(f"{view.name:16} project {view.project:<4} {info['transform']:24} {view.executor:9} {built}")
            if last is not None and last.status == "failed":
                click.echo(f"{'':16} last refresh FAILED at {last.finished_at:%Y-%m-%d %H:%M:%S}Z: {last.error}")
    finally:
        ws.close()


@views_command.command("refresh")
@click.argument("names", nargs=-1)
@click.option("--rebuild", is_flag=True, help="Recompute the whole view, not only the tasks that changed.")
@json_option
@click.pass_obj
def refresh_command(obj: Any, names: tuple[str, ...], rebuild: bool, as_json: bool) -> None:
    """Bring views up to their source's latest version (all views by default); exit 1 if one failed."""
    from dataclasses import asdict

    from ls_space_sync.views.refresh import find_view, refresh_view

    ws = _workspace(obj)
    failed = False
    try:
        views = [find_view(ws, n) for n in names] if names else list(ws.settings.views)
        if not views:
            raise click.UsageError("no views configured: add a views: section to the config (see config.example.yaml)")
        for view in views:
            result = refresh_view(ws, view, rebuild=rebuild, trigger="manual")
            failed = failed or result.status == "failed"
            echo_json(asdict(result)) if as_json else click.echo(result.summary())
    finally:
        ws.close()
    sys.exit(1 if failed else 0)


@views_command.command("read")
@click.argument("name")
@version_options
@click.option("--where", help="A SQL predicate on the view's columns, e.g. \"label = 'Car'\".")
@click.option("--limit", "-n", type=int, help="At most this many rows.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write .parquet, .csv or .jsonl instead.")
@click.pass_obj
def read_command(obj: Any, name: str, tag: str | None, version: int | None, as_of: str | None, where: str | None,
                 limit: int | None, output: Path | None) -> None:
    """Print a view's rows at a tag, version or time as JSON lines (or write them to a file)."""
    from ls_space_sync.store.dataset import check_filter
    from ls_space_sync.views.refresh import find_view, view_store

    ws = _workspace(obj)
    try:
        store = view_store(ws, find_view(ws, name))
        ds = store.at(pick_ref(tag, version, as_of))
    finally:
        ws.close()
    check_filter(ds, where)
    table = ds.to_table(filter=where, limit=limit)
    if output is None:
        for batch in table.to_batches(1000):
            for row in batch.to_pylist():
                click.echo(json.dumps(row, default=str, ensure_ascii=False))
        return
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, str(output))
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, str(output))
    elif suffix in (".jsonl", ".ndjson"):
        with output.open("w") as out:
            for row in table.to_pylist():
                out.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
    else:
        raise click.UsageError(f"cannot tell the format of {output}: name it .parquet, .csv or .jsonl")
    click.echo(f"wrote {table.num_rows} rows of view {name} v{ds.version} to {output}", err=True)


@views_command.command("diff")
@click.argument("name")
@click.argument("old")
@click.argument("new", required=False)
@json_option
@click.pass_obj
def diff_command(obj: Any, name: str, old: str, new: str | None, as_json: bool) -> None:
    """Show the view rows inserted, updated and deleted between two refs (tag, version, @time; NEW default latest)."""
    from ls_space_sync.views.diff import diff_view
    from ls_space_sync.views.refresh import find_view, view_store

    ws = _workspace(obj)
    try:
        result = diff_view(view_store(ws, find_view(ws, name)), old, new)
    finally:
        ws.close()
    if as_json:
        echo_json(result.to_json())
        return
    for line in result.lines():
        click.echo(line)
