"""Commands on the stored datasets themselves: ``compact``."""

from __future__ import annotations

from typing import Any

import click

from ls_space_sync.cli.options import echo_json, json_option


@click.command("compact")
@click.option("--project", "-p", type=int, multiple=True, help="Project id (repeatable; default: every stored project).")
@click.option("--retention", "retention", type=float, metavar="SECONDS",
              help="Remove untagged versions older than this (default: compaction.retention_seconds).")
@click.option("--keep-tags-count", type=click.IntRange(min=1), help="Keep only the newest N run-NNNNNN tags...")
@click.option("--keep-tags-days", type=click.FloatRange(min=0, min_open=True),
              help="...or those younger than D days (a tag either rule keeps stays).")
@click.option("--dry-run", is_flag=True, help="Only show what would be done.")
@json_option
@click.pass_obj
def compact_command(obj: Any, project: tuple[int, ...], retention: float | None, keep_tags_count: int | None,
                    keep_tags_days: float | None, dry_run: bool, as_json: bool) -> None:
    """Merge small files, prune run tags by policy and remove old untagged versions.

    Every tagged version stays readable. Prints disk use before and after.
    """
    from ls_space_sync.store.compaction import compact_project, summary
    from ls_space_sync.store.dataset import StoreError, stored_projects

    settings = obj.settings
    ids = list(project) or stored_projects(settings.resolved_store_root)
    failed = False
    for pid in ids:
        try:
            report = compact_project(settings, pid, retention_seconds=retention, keep_tags_count=keep_tags_count,
                                     keep_tags_days=keep_tags_days, dry_run=dry_run)
        except StoreError as exc:
            failed = True
            click.echo(f"project {pid}: FAILED: {exc}", err=True)
            continue
        if as_json:
            echo_json(report.as_dict())
        else:
            click.echo(summary(report))
    if failed:
        raise SystemExit(1)
