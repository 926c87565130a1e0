"""Options that several commands share, declared once: the version options, the project option,
and ``--json`` output.

Light on purpose: this module and the command modules import only click and this package's
errors at import time, so ``ls-space-sync --help`` does not load Lance, DuckDB, SQLAlchemy or the
Label Studio SDK. Commands import what they need when they run.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import click

F = Callable[..., Any]


def version_options(fn: F) -> F:
    """``--tag``, ``--version`` and ``--as-of`` (at most one): which stored version a command reads."""
    fn = click.option("--as-of", "as_of", metavar="TIME",
                      help="The version current at this UTC time (ISO 8601, e.g. 2026-11-21T18:00:00Z).")(fn)
    fn = click.option("--version", "version", type=int, help="A version number.")(fn)
    fn = click.option("--tag", "tag", help="A tag, e.g. run-000003 (default: the latest version).")(fn)
    return fn


def project_option(required: bool = True, multiple: bool = False, help: str | None = None) -> Callable[[F], F]:
    """``--project/-p``: one project id (or several with ``multiple``)."""
    text = help or ("Project id (repeatable; default: the configured projects)." if multiple else "Project id.")
    return click.option("--project", "-p", type=int, required=required and not multiple, multiple=multiple, help=text)


def json_option(fn: F) -> F:
    """``--json``: machine-readable output instead of the table for people."""
    return click.option("--json", "as_json", is_flag=True, help="JSON instead of a table for people.")(fn)


def pick_ref(tag: str | None, version: int | None, as_of: str | None) -> Any:
    """The :class:`ls_space_sync.model.refs.Ref` of the version options.

    Raises:
        UsageError: more than one given. BadTime: ``as_of`` is not ISO 8601 (both exit 2).
    """
    from ls_space_sync.model.refs import from_options

    return from_options(tag, version, as_of)


def pick_version(tag: str | None, version: int | None, as_of: str | None) -> dict[str, Any]:
    """The version options as ``ProjectStore.dataset`` keyword arguments (see :func:`pick_ref`)."""
    args: dict[str, Any] = pick_ref(tag, version, as_of).dataset_args()
    return args


def echo_json(obj: Any) -> None:
    """Print one JSON object on a line (UTC times as ISO 8601, non-ASCII kept)."""
    click.echo(json.dumps(obj, default=str, ensure_ascii=False))
