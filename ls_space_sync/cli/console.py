"""Command line: ``ls-space-sync [--config FILE] COMMAND``.

Exit codes: 0 ok, 1 a project failed, 2 usage or configuration error.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from ls_space_sync.cli.options import echo_json, json_option, pick_version, version_options
from ls_space_sync.errors import LsSpaceSyncError

if TYPE_CHECKING:
    from ls_space_sync.pull.run import Syncer
    from ls_space_sync.settings import Settings
    from ls_space_sync.store.dataset import ProjectStore

log = logging.getLogger("ls_space_sync")


@dataclass
class Context:
    """What every command gets: the config path and lazily built settings and syncer."""

    config: str | None
    verbose: int
    _settings: Settings | None = None
    _syncer: Syncer | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        """The settings, loaded on first use (``ConfigError``: exit 2 with one line per problem)."""
        if self._settings is None:
            from ls_space_sync.settings import load_settings

            self._settings = load_settings(self.config, overrides=self.overrides)
        return self._settings

    @property
    def syncer(self) -> Syncer:
        """The workspace with its pull runner (client, state, store root), built on first use."""
        if self._syncer is None:
            from ls_space_sync.pull.run import Syncer

            self._syncer = Syncer(self.settings)
            # Its HTTP connections and state pool close when the command ends (a CLI run inside a
            # longer process, such as click's test runner, would otherwise leave sockets open).
            running = click.get_current_context(silent=True)
            if running is not None:
                running.find_root().call_on_close(self._syncer.close)
        return self._syncer

    def store(self, project_id: int) -> ProjectStore:
        """A project's dataset under the configured store root."""
        from ls_space_sync.store.dataset import ProjectStore

        return ProjectStore(self.settings.resolved_store_root, project_id)


pass_ctx = click.make_pass_decorator(Context)


class _Failure(click.ClickException):
    """An :class:`LsSpaceSyncError` on its way out of click: ``error: <message>`` and its exit code."""

    def __init__(self, exc: LsSpaceSyncError):
        super().__init__(str(exc))
        # click annotates exit_code as a ClassVar but reads it from the instance (core.py: e.exit_code),
        # so a per-error exit code set here is the one the process exits with.
        self.exit_code = exc.exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


# Commands that live in other modules of this tree: name -> ("module:attribute", short help).
# A module is imported only when its command runs or its own --help is shown, so
# ``ls-space-sync --help`` lists them from here and stays a click-only import
# (tests/unit/test_cli_layout.py checks each line against the command's own docstring).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "compact": ("ls_space_sync.cli.store:compact_command",
                "Merge small files, prune run tags by policy and remove old untagged versions."),
    "configs": ("ls_space_sync.cli.history:configs_command",
                "List the label config's changes across a project's stored versions, each with a unified diff."),
    "diff": ("ls_space_sync.cli.read:diff_command",
             "Show the tasks inserted, updated and deleted between two versions of a project."),
    "export": ("ls_space_sync.cli.read:export_command",
               "Export a version of a project for training: Parquet, JSONL or a Hugging Face dataset."),
    "history": ("ls_space_sync.cli.history:history_command",
                "List every stored version that changed a task or an annotation: when, which run, what, by whom."),
    "media": ("ls_space_sync.cli.media:media_group",
              "The media files tasks reference, stored with each version: `media status` lists what is missing."),
    "mirror": ("ls_space_sync.cli.push:mirror_command",
               "Run one pass over the configured mirror pairs (``mirrors:`` in the config)."),
    "push": ("ls_space_sync.cli.push:push_command",
             "Push a stored version's rows into a Label Studio project as tasks."),
    "restore": ("ls_space_sync.cli.push:restore_command",
                "Make a project's tasks equal to a stored version: create, update in place, delete."),
    "run": ("ls_space_sync.cli.service:run_command",
            "Run as a service: scheduled syncs of every project, plus /health, /metrics and /webhook."),
    "sql": ("ls_space_sync.cli.read:sql_command",
            "Run DuckDB SQL over the project datasets: each is a table named project_<id>."),
    "status": ("ls_space_sync.cli.status:status_command",
               "Show every project on one screen: last run, lag behind Label Studio, failures, tags."),
    "completion": ("ls_space_sync.cli.status:completion_command",
                   "Print the shell completion script for bash, zsh or fish."),
    "views": ("ls_space_sync.cli.views:views_command",
              "List, refresh and read the materialized views (``views:`` in the config), versioned with their sources."),
    "webhooks": ("ls_space_sync.cli.service:webhooks_command",
                 "Install or remove the project webhooks that make the daemon sync right after a change."),
}


class _Group(click.Group):
    """The command group: commands load on first use (:data:`LAZY_COMMANDS`), and every package
    error becomes one line and an exit code, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module, _, attr = LAZY_COMMANDS[cmd_name][0].partition(":")
            self.add_command(getattr(import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands without importing the lazy ones (their help is in :data:`LAZY_COMMANDS`)."""
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                cmd = self.commands[name]
                if cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(limit)))
            else:
                text = LAZY_COMMANDS[name][1]
                rows.append((name, text if len(text) <= limit else text[:limit - 3].rsplit(" ", 1)[0] + "..."))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LsSpaceSyncError as exc:
            raise _Failure(exc) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "-c", "config", metavar="FILE", help="YAML config (default: ./config.yaml if present).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Override data_dir (state.db and datasets/).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="ls-space-sync")
@click.pass_context
def main(ctx: click.Context, config: str | None, data_dir: Path | None, verbose: int) -> None:
    """Mirror Label Studio projects into versioned Lance datasets, and push them back.

    Settings come from the YAML config and the environment (LABEL_STUDIO_URL,
    LABEL_STUDIO_API_KEY, LS_SPACE_SYNC__SECTION__KEY); see config.example.yaml.
    """
    obj = Context(config=config, verbose=verbose)
    if data_dir is not None:
        obj.overrides["data_dir"] = str(data_dir)
    ctx.obj = obj


def _projects(ctx: Context, project: tuple[int, ...]) -> list[int]:
    return list(project) or ctx.syncer.project_ids()


@main.command()
@click.option("--project", "-p", type=int, multiple=True, help="Project id (repeatable; default: the configured projects).")
@click.option("--full-scan", is_flag=True, help="Scan every task's stamps even if the task count adds up.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@pass_ctx
def sync(ctx: Context, project: tuple[int, ...], full_scan: bool, progress: bool | None) -> None:
    """Sync each project once: one tagged version per project that changed.

    With no Label Studio URL configured, starts a local Label Studio with a sample project
    (installed into DATA_DIR/label-studio-venv on first use), syncs it and shows its tags.
    """
    from ls_space_sync.logs import setup_logging

    setup_logging(ctx.settings.log_format, ctx.verbose)
    if not ctx.settings.label_studio.url:
        from ls_space_sync.quickstart import run_demo

        sys.exit(run_demo(ctx.settings, echo=click.echo, note=lambda line: click.echo(line, err=True)))
    failed = sync_projects(ctx.syncer, _projects(ctx, project), full_scan=full_scan, progress=progress)
    sys.exit(1 if failed else 0)


def sync_projects(syncer: Any, project_ids: list[int], *, full_scan: bool = False, progress: bool | None = None,
                  echo: Callable[[str], None] = click.echo) -> list[int]:
    """Run ``run_once`` for each project, print a summary line each; return the ids that failed."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    failed = []
    for pid in project_ids:
        bar = tqdm(desc=f"project {pid}", unit="task", disable=not show, leave=False)

        def advance(done: int, total: int | None, bar: Any = bar) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.n = done
            bar.refresh()

        try:
            result = syncer.run_once(pid, full_scan=full_scan, progress=advance)
            echo(result.summary())
            for view in result.views:  # the project's materialized views, refreshed after the run
                echo("  " + view.summary())
        except (LsSpaceSyncError, ValueError) as exc:
            failed.append(pid)
            echo(f"project {pid}: FAILED: {exc}")
        finally:
            bar.close()
    return failed


@main.command()
@click.option("--project", "-p", type=int, help="Only this project.")
@click.option("--limit", "-n", default=20, show_default=True, help="How many runs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def runs(ctx: Context, project: int | None, limit: int, as_json: bool) -> None:
    """Show the latest sync runs, newest first."""
    from ls_space_sync.store.state import StateDB

    state = StateDB(ctx.settings.resolved_state_url)
    rows = state.runs(project, limit=limit)
    if as_json:
        for r in rows:
            click.echo(json.dumps({
                "run_id": r.run_id, "project": r.project_id, "kind": r.kind, "trigger": r.trigger,
                "status": r.status, "started_at": r.started_at.isoformat(),
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "seconds": r.duration_seconds, "inserted": r.inserted, "updated": r.updated,
                "deleted": r.deleted, "version": r.version, "tag": r.tag, "full_scan": r.full_scan,
                "requests": r.requests, "error": r.error,
            }))
        return
    click.echo(f"{'started (UTC)':20} {'project':>7} {'kind':5} {'status':9} {'ins':>6} {'upd':>6} {'del':>6} "
               f"{'version':>7} {'tag':12} {'secs':>6}  error")
    for r in rows:
        secs = f"{r.duration_seconds:.1f}" if r.duration_seconds is not None else "-"
        click.echo(f"{r.started_at:%Y-%m-%d %H:%M:%S}  {r.project_id:>7} {r.kind:5} {r.status:9} {r.inserted:>6} "
                   f"{r.updated:>6} {r.deleted:>6} {r.version or '-':>7} {r.tag or '-':12} {secs:>6}  "
                   f"{(r.error or '')[:80]}")


@main.command()
@click.option("--project", "-p", type=int, multiple=True, help="Project id (default: every stored project).")
@json_option
@pass_ctx
def tags(ctx: Context, project: tuple[int, ...], as_json: bool) -> None:
    """List each project's tagged versions with their time and change counts.

    With --json, one object per project: {"project", "uri", "tags": [{"tags", "version",
    "timestamp", "rows", "run_id", "counts"}]}, oldest first.
    """
    from ls_space_sync.store.dataset import stored_projects

    ids = list(project) or stored_projects(ctx.settings.resolved_store_root)
    for pid in ids:
        store = ctx.store(pid)
        if as_json:
            echo_json({"project": pid, "uri": store.uri,
                       "tags": [{**v, "timestamp": v["timestamp"].isoformat()} for v in store.versions() if v["tags"]]})
            continue
        click.echo(f"project {pid} ({store.uri}):")
        for v in store.versions():
            if not v["tags"]:
                continue
            c = v["counts"] or {}
            click.echo(f"  {', '.join(v['tags']):14} v{v['version']:<5} {v['timestamp']:%Y-%m-%d %H:%M:%S}Z "
                       f"{v['rows']:>8} tasks  +{c.get('inserted', 0)} ~{c.get('updated', 0)} -{c.get('deleted', 0)}")


@main.command()
@click.option("--project", "-p", type=int, required=True, help="Project id.")
@version_options
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="File to write (default: stdout for jsonl).")
@click.option("--rows", "as_rows", is_flag=True, help="jsonl of stored rows instead of Label Studio task JSON.")
@pass_ctx
def read(ctx: Context, project: int, tag: str | None, version: int | None, as_of: str | None, fmt: str,
         output: Path | None, as_rows: bool) -> None:
    """Write a project's tasks at a tag, version or time as JSONL (Label Studio task JSON) or Parquet."""
    import pyarrow.parquet as pq

    from ls_space_sync.model.records import row_to_task

    ds = ctx.store(project).dataset(**pick_version(tag, version, as_of))
    if fmt == "parquet":
        if output is None:
            raise click.UsageError("--format parquet needs --output FILE")
        with pq.ParquetWriter(str(output), ds.schema) as writer:
            for batch in ds.to_batches():
                writer.write_batch(batch)
        click.echo(f"wrote {ds.count_rows()} tasks of project {project} v{ds.version} to {output}", err=True)
        return
    out = output.open("w") if output else sys.stdout
    try:
        for batch in ds.to_batches():
            for row in batch.to_pylist():
                obj = row if as_rows else row_to_task(row)
                out.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()
            click.echo(f"wrote {ds.count_rows()} tasks of project {project} v{ds.version} to {output}", err=True)


def run() -> None:
    """Entry point with the error policy: config errors exit 2, one line, no traceback."""
    try:
        main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except LsSpaceSyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
