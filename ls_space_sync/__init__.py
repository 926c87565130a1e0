"""ls_space_sync: mirror Label Studio projects into versioned Lance datasets, and push them back.

The Python API (see :mod:`ls_space_sync.api`) is importable from here::

    import ls_space_sync as lss
    ds = lss.open_dataset(1, tag="run-000001", data_dir="ls-space-data")   # a lance.LanceDataset

Names are loaded on first use, so ``import ls_space_sync`` stays cheap for the command line.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "open_dataset", "read_tasks", "connect", "sql", "version_diff", "export_version",
    "to_hf_dataset", "torch_iterable", "compact", "project_store", "task_history", "config_history",
    "open_view", "to_ray", "to_polars",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module(".read.api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
