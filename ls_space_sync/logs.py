"""Logging: JSON lines in daemon mode, readable lines on a terminal; run_id and project on every
line of a run; known secrets masked wherever they would appear."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Iterator

from pythonjsonlogger.json import JsonFormatter

from ls_space_sync.errors import _secrets, mask, register_secret  # noqa: F401 - register_secret: its old home

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
_project: contextvars.ContextVar[int | None] = contextvars.ContextVar("project", default=None)
@contextlib.contextmanager
def run_context(run_id: str | None = None, project: int | None = None) -> Iterator[None]:
    """Stamp ``run_id`` and ``project`` on every log record emitted inside the block (per thread/task)."""
    t1 = _run_id.set(run_id)
    t2 = _project.set(project)
    try:
        yield
    finally:
        _run_id.reset(t1)
        _project.reset(t2)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = getattr(record, "run_id", None) or _run_id.get()
        record.project = getattr(record, "project", None) or _project.get()
        if _secrets:
            record.msg = mask(record.getMessage())
            record.args = None
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = ""
        project, run_id = getattr(record, "project", None), getattr(record, "run_id", None)
        if project is not None:
            prefix += f"[project {project}] "
        if run_id:
            prefix += f"[{run_id}] "
        return mask(f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:7} {prefix}{record.getMessage()}"
                    + (("\n" + self.formatException(record.exc_info)) if record.exc_info else ""))


def setup_logging(fmt: str = "auto", verbose: int = 0, stream=None) -> None:
    """Configure the root logger once.

    Args:
        fmt: ``json`` (one object per line: time, level, logger, message, run_id, project), ``text``,
            or ``auto`` (text on a terminal, JSON otherwise).
        verbose: 0 warnings and our info, 1 info, 2 debug.
    """
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ContextFilter())
    if use_json:
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(run_id)s %(project)s",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(_TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ls_space_sync", False):
            root.removeHandler(h)
    handler._ls_space_sync = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    logging.getLogger("ls_space_sync").setLevel(logging.INFO if verbose < 2 else logging.DEBUG)
    for noisy in ("httpx", "httpcore", "apscheduler.executors.default"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
