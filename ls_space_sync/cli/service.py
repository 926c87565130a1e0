"""Commands of the service: ``run`` (the daemon) and ``webhooks install|remove``."""

from __future__ import annotations

import logging
import os
from typing import Any

import click

log = logging.getLogger("ls_space_sync.service.http")

@click.command("run")
@click.option("--host", help="Bind address (default: server.host, 127.0.0.1).")
@click.option("--port", type=int, help="TCP port (default: server.port, 9090).")
@click.option("--install-webhooks", is_flag=True,
              help="First register the webhook on each project, as `webhooks install` does (best effort).")
@click.pass_obj
def run_command(obj: Any, host: str | None, port: int | None, install_webhooks: bool) -> None:
    """Run as a service: scheduled syncs of every project, plus /health, /metrics and /webhook.

    Stops on SIGTERM or SIGINT: no new runs, running ones finish (up to
    scheduler.shutdown_timeout_seconds), exit 0.
    """
    server = obj.overrides.setdefault("server", {})
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    from ls_space_sync.labelstudio.client import LabelStudioError
    from ls_space_sync.logs import setup_logging
    from ls_space_sync.service.http import ServiceError, serve

    settings = obj.settings
    setup_logging(settings.log_format, obj.verbose)
    settings.require_label_studio()
    if install_webhooks:
        from ls_space_sync.service.webhooks import apply

        try:
            for change in apply(settings, "install"):
                log.info("%s", change.summary())
        except LabelStudioError as exc:  # polls still run; the next start tries again
            log.warning("could not install the webhooks: %s", exc)
    try:
        drained = serve(settings)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    if not drained:
        # Runs still going hold non-daemon threads that would keep the process alive; their
        # runs stay recorded as running and the next sync of each project settles them.
        logging.shutdown()
        os._exit(0)


def _command(obj: Any, what: str, project: tuple[int, ...]) -> None:
    from ls_space_sync.labelstudio.client import LabelStudioError
    from ls_space_sync.logs import setup_logging
    from ls_space_sync.service.webhooks import apply

    settings = obj.settings
    setup_logging(settings.log_format, obj.verbose)
    try:
        for change in apply(settings, what, list(project)):
            click.echo(change.summary())
    except LabelStudioError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("webhooks")
def webhooks_command() -> None:
    """Install or remove the project webhooks that make the daemon sync right after a change."""


@webhooks_command.command("install")
@click.option("--project", "-p", type=int, multiple=True, help="Project id (repeatable; default: the configured projects).")
@click.pass_obj
def install_command(obj: Any, project: tuple[int, ...]) -> None:
    """Register one webhook per project to <server.public_url>/webhook with the secret header (idempotent)."""
    _command(obj, "install", project)


@webhooks_command.command("remove")
@click.option("--project", "-p", type=int, multiple=True, help="Project id (repeatable; default: the configured projects).")
@click.pass_obj
def remove_command(obj: Any, project: tuple[int, ...]) -> None:
    """Delete the webhooks that `webhooks install` registered (found by their URL)."""
    _command(obj, "remove", project)
