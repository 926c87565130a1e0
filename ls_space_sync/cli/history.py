"""Commands that read the history of stored versions: ``history`` (a task or an annotation) and
``configs`` (the label config)."""

from __future__ import annotations

from typing import Any

import click

from ls_space_sync.cli.options import echo_json, json_option, project_option


@click.command("history")
@project_option()
@click.option("--task", "task_id", type=int, help="The task id.")
@click.option("--annotation", "annotation_id", type=int,
              help="Only this annotation's changes (its task is found in the latest version unless --task is given).")
@json_option
@click.pass_obj
def history_command(obj: Any, project: int, task_id: int | None, annotation_id: int | None, as_json: bool) -> None:
    """List every stored version that changed a task or an annotation: when, which run, what, by whom.

    Read from the versions already stored. Annotations and predictions are added (+), changed (~)
    or removed (-), by id, with their author (user id) or model version; "data" is a task data
    edit. A reused task id (SQLite Label Studio) shows as the old task's delete and the new one's
    insert.
    """
    # Not through read.api: it loads DuckDB and the exporters, a third of this command's start-up.
    from ls_space_sync.read.history import find_annotation_task, task_history
    from ls_space_sync.store.dataset import ProjectStore

    if task_id is None and annotation_id is None:
        raise click.UsageError("give --task ID or --annotation ID")
    store = ProjectStore(obj.settings.resolved_store_root, project)
    if task_id is None:
        assert annotation_id is not None
        task_id = find_annotation_task(store, annotation_id)
    result = task_history(store, task_id, annotation_id=annotation_id)
    if as_json:
        echo_json(result.to_json())
        return
    for line in result.lines():
        click.echo(line)


@click.command("configs")
@project_option()
@json_option
@click.pass_obj
def configs_command(obj: Any, project: int, as_json: bool) -> None:
    """List the label config's changes across a project's stored versions, each with a unified diff."""
    from ls_space_sync.read.history import config_history
    from ls_space_sync.store.dataset import ProjectStore

    changes = config_history(ProjectStore(obj.settings.resolved_store_root, project))
    if as_json:
        echo_json({"project_id": project, "changes": [c.to_json() for c in changes]})
        return
    click.echo(f"project {project}: {len(changes)} label config{'s' if len(changes) != 1 else ''} in the stored versions")
    for c in changes:
        click.echo(f"v{c.version} {c.tag or '-'} {c.time:%Y-%m-%d %H:%M:%S}Z run {c.run_id or '-'}")
        for line in c.diff.splitlines():
            click.echo(f"  {line}")
