"""Commands for people at a terminal: ``status`` (one screen of the sync's state) and
``completion`` (the shell completion script)."""

from __future__ import annotations

import shutil
import sys
from typing import Any

import click

from ls_space_sync.cli.options import echo_json, json_option

# What click's completion reads from the environment: _<PROG>_COMPLETE=<shell>_source|<shell>_complete.
PROG_NAME = "ls-space-sync"
COMPLETE_VAR = "_LS_SPACE_SYNC_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


@click.command("status")
@click.option("--project", "-p", type=int, multiple=True, help="Project id (repeatable; default: every known project).")
@json_option
@click.pass_obj
def status_command(obj: Any, project: tuple[int, ...], as_json: bool) -> None:
    """Show every project on one screen: last run, lag behind Label Studio, failures, tags.

    Reads the state database and the store only (Label Studio is not asked). Known projects: the
    configured ones, those with a dataset and those with runs. Lag is the time since the last
    succeeded or skipped run; fails counts the failed runs in a row.
    """
    from ls_space_sync.read.overview import lines, overview
    from ls_space_sync.store.state import StateDB

    settings = obj.settings
    configured = settings.projects if isinstance(settings.projects, list) else []
    state = StateDB(settings.resolved_state_url)
    try:
        view = overview(state, settings.resolved_store_root, configured, only=project or None)
    finally:
        state.dispose()
    if as_json:
        echo_json(view.as_dict())
        return
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 160
    for line in lines(view, width):
        click.echo(line)


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion_command(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    \b
    bash:  eval "$(ls-space-sync completion bash)"     (in ~/.bashrc; bash 4.4 or later)
    zsh:   eval "$(ls-space-sync completion zsh)"      (in ~/.zshrc)
    fish:  ls-space-sync completion fish > ~/.config/fish/completions/ls-space-sync.fish

    The same as click's _LS_SPACE_SYNC_COMPLETE=<shell>_source ls-space-sync.
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # the Choice above lists only shells click supports
        raise click.UsageError(f"no completion for {shell}")
    root = ctx.find_root().command
    click.echo(cls(root, {}, PROG_NAME, COMPLETE_VAR).source())
