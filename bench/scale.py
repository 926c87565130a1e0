"""Beyond one machine (issue 14): its three scale ratios in one run.

    python bench/scale.py [--tasks N] [--store-runs R] [--poll-projects P] [--first-projects F] [--first-tasks T]

* commit time per run in a bucket (SeaweedFS on 127.0.0.1) vs local disk — ``scale_store.py``;
* a poll cycle over P projects with 1 daemon vs 2 daemons on this machine, one PostgreSQL state —
  ``scale_daemons.py``;
* the first sync of F projects of T tasks, serial vs the daemon's parallel runs — ``scale_daemons.py``.

Each part is also a script of its own; this one runs both with one set of options and prints one
table (each row a ratio measured in this run, with PASS/MISS where the issue sets a goal).
"""

from __future__ import annotations

import argparse

import scale_daemons
import scale_store
from common import BenchEnv, Row, main_for


def run(env: BenchEnv) -> list[Row]:
    """The object-store rows, then the daemon rows."""
    return scale_store.run(env) + scale_daemons.run(env)


def _arguments(parser: argparse.ArgumentParser) -> None:
    scale_store.add_scale_store_arguments(parser)
    scale_daemons.extra_args(parser)


if __name__ == "__main__":
    main_for("scale", run, needs_server=False, extra_args=_arguments)
