"""``ls-space-sync media ...``: the media files tasks reference (docs/media.md)."""

from __future__ import annotations

from typing import Any

import click

from ls_space_sync.cli.options import echo_json, json_option, project_option


@click.group("media", invoke_without_command=True)
@project_option(multiple=True, help="Project id (repeatable; default: every project with media).")
@json_option
@click.pass_context
def media_group(ctx: click.Context, project: tuple[int, ...], as_json: bool) -> None:
    """The media files tasks reference, stored with each version: `media status` lists what is missing.

    Without a subcommand: the same as `media status`.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(status_command, project=project, as_json=as_json)


@media_group.command("status")
@project_option(multiple=True, help="Project id (repeatable; default: every project with media).")
@json_option
@click.pass_obj
def status_command(obj: Any, project: tuple[int, ...], as_json: bool) -> None:
    """List each project's stored media and the URLs that are missing, with the reason.

    Reads the store only. A missing URL is fetched again by the next sync run of its project.
    Exit code 1 when a URL is missing.
    """
    from ls_space_sync.media.status import media_projects, media_status

    root = obj.settings.resolved_store_root
    ids = list(project) or media_projects(root)
    views = [media_status(root, pid) for pid in ids]
    if as_json:
        echo_json([v.as_dict() for v in views])
    else:
        if not views:
            click.echo("no project has media yet (set media.enabled: true and run `ls-space-sync sync`)")
        for v in views:
            click.echo(f"project {v.project}: {v.stored} of {v.urls} URLs stored, {v.blobs} files, "
                       f"{v.bytes / 1e6:.1f} MB; {len(v.failed)} missing")
            for f in v.failed:
                kept = " (tags keep earlier bytes)" if f["stored_before"] else ""
                click.echo(f"  {f['url']}  task {f['task_id']}: {f['reason']}; {f['attempts']} attempts{kept}")
    if any(v.failed for v in views):
        raise SystemExit(1)
