"""Commands that write into Label Studio: ``push``, ``restore``, ``mirror``."""

from __future__ import annotations

from typing import Any

import click

from ls_space_sync.cli.options import pick_version, version_options


@click.command("push")
@click.option("--project", "-p", type=int, required=True, help="Source project: the dataset to read.")
@version_options
@click.option("--ids", metavar="1,2,3", help="Only these source task ids.")
@click.option("--where", metavar="SQL", help='Only rows matching a SQL predicate, e.g. "is_labeled = true".')
@click.option("--to-project", "to_project", type=int, help="Push into this existing project.")
@click.option("--new-project", is_flag=True, help="Create a project with the version's label config.")
@click.option("--title", help="Title of the project --new-project creates.")
@click.option("--delete", is_flag=True, help="Delete target tasks whose source rows were deleted.")
@click.option("--full", is_flag=True, help="Compare every pushed task with the server, not only changed rows.")
@click.option("--media", "media", type=click.Choice(["keep", "reupload"]), default="keep", show_default=True,
              help="reupload: upload the stored bytes of media the server no longer serves, and push the new URLs.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.pass_obj
def push_command(ctx: Any, project: int, tag: str | None, version: int | None, as_of: str | None, ids: str | None,
                 where: str | None, to_project: int | None, new_project: bool, title: str | None, delete: bool,
                 full: bool, media: str, progress: bool | None) -> None:
    """Push a stored version's rows into a Label Studio project as tasks.

    Sends only rows that changed since the last push to the same project; changed tasks are
    updated in place (task ids kept). Annotations keep their author when that user exists on
    the server, else the server records you as the author.
    """
    import sys

    from ls_space_sync.logs import setup_logging
    from ls_space_sync.push.engine import PushError, push

    setup_logging(ctx.settings.log_format, ctx.verbose)
    if (to_project is None) == (not new_project):
        raise click.UsageError("give exactly one of --to-project ID and --new-project")
    if title and not new_project:
        raise click.UsageError("--title names the project --new-project creates")
    try:
        id_list = [int(i) for i in ids.split(",") if i.strip()] if ids else None
    except ValueError:
        raise click.UsageError(f"--ids takes task ids separated by commas, like 1,2,3 (got {ids!r})") from None
    which = pick_version(tag, version, as_of)
    show = sys.stderr.isatty() if progress is None else progress
    try:
        result = push(ctx.syncer, project, target_project=to_project, version=which.get("version"),
                      as_of=which.get("as_of"), ids=id_list, where=where, delete=delete, full=full, title=title,
                      progress=show, media=media)
    except PushError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.summary())
    if result.updated:
        click.echo("  changed tasks were updated in place: data/meta patched, annotations and predictions "
                   "matched by content, then updated, deleted or created; task ids kept")


@click.command("restore")
@click.option("--project", "-p", type=int, required=True, help="The project to restore.")
@version_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.pass_obj
def restore_command(ctx: Any, project: int, tag: str | None, version: int | None, as_of: str | None, yes: bool,
                    progress: bool | None) -> None:
    """Make a project's tasks equal to a stored version: create, update in place, delete.

    Shows what will change and asks first (unless --yes). The project is pulled before (what the
    restore overwrites stays in the dataset) and after.
    """
    import sys

    from ls_space_sync.logs import setup_logging
    from ls_space_sync.push.restore import apply_restore, plan_restore

    setup_logging(ctx.settings.log_format, ctx.verbose)
    if tag is None and version is None and as_of is None:
        raise click.UsageError("say which version to restore: --tag, --version or --as-of")
    which = pick_version(tag, version, as_of)
    plan = plan_restore(ctx.syncer, project, which.get("version"), as_of=which.get("as_of"))
    click.echo(f"pulled first: {plan.pulled}")
    click.echo(plan.describe())
    if not plan:
        return
    if not yes:
        click.confirm("apply these changes to the project in Label Studio?", abort=True)
    show = sys.stderr.isatty() if progress is None else progress
    done = apply_restore(ctx.syncer, plan, progress=show)
    click.echo(f"restored project {project} to v{plan.version}: +{done.created} ~{done.updated} "
               f"-{done.deleted} ({done.requests} requests); pulled after: {done.pulled}")


@click.command("mirror")
@click.option("--source", "-s", "sources", type=int, multiple=True, help="Only the pairs with this source project.")
@click.pass_obj
def mirror_command(ctx: Any, sources: tuple[int, ...]) -> None:
    """Run one pass over the configured mirror pairs (``mirrors:`` in the config).

    Each pass pulls the source, pushes what changed to the target and, with both_ways, pushes the
    target's own edits back. `ls-space-sync run` does the same on a schedule.
    """
    import sys

    from ls_space_sync.errors import LsSpaceSyncError
    from ls_space_sync.logs import setup_logging
    from ls_space_sync.push.mirror import mirror_once, summary_lines

    setup_logging(ctx.settings.log_format, ctx.verbose)
    pairs = [p for p in ctx.settings.mirrors if not sources or p.source in sources]
    if not pairs:
        raise click.UsageError("no mirror pairs configured; add to the config file, e.g.\n"
                               "  mirrors:\n    - {source: 1, target: 2, both_ways: true}")
    failed = 0
    for pair in pairs:
        try:
            res = mirror_once(ctx.syncer, pair)
        except (LsSpaceSyncError, ValueError) as exc:  # a malformed task is a ValueError too
            failed += 1
            click.echo(f"mirror {pair.source} -> {pair.target}: FAILED: {exc}")
            continue
        head, *details = summary_lines(res, pair)
        click.echo(head)
        for line in details:
            click.echo(f"  {line}")
    sys.exit(1 if failed else 0)
