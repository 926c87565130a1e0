"""Run every benchmark against one real Label Studio and print one results table.

    python bench/run_all.py [--tasks 20000|100000] [--only NAME ...] [--out DIR] [--work DIR]

Starts a Label Studio on 127.0.0.1 (the integration tests' venv), loads the workload once, then
runs first_sync, poll, incremental (they share the server and project) and store (no server).
``bench/push_throughput.py`` and the other scripts owned elsewhere run as subprocesses when they
exist, with those of ``--tasks``, ``--out`` and ``--ls-venv`` their ``--help`` lists; rows they
write to ``OUT/<name>.json`` (``{"rows": [Row fields]}``) join the table. A missing or failing
script is reported below the table, never fatal. Every line is a
ratio against an anchor measured in the same run; the raw numbers go to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import common
from common import BenchEnv, Row, format_table, label_studio, load_project, log, machine_info, timer

HERE = Path(__file__).resolve().parent
SERVER_BENCHES = ["first_sync", "poll", "incremental"]
LOCAL_BENCHES = ["store"]
# Owned by other engineers; run as `python bench/<name>.py [--tasks N] [--out DIR]` if present.
SCRIPT_BENCHES = ["push_throughput", "diff_compaction", "daemon_idle", "startup", "history"]
# The --tasks each gets from ours (None: its own default): the push is measured on 10,000 tasks
# (issue 5); the daemon's --tasks means tasks per project.
SCRIPT_TASKS: dict[str, Callable[[int], int] | None] = {
    "push_throughput": lambda n: min(n, 10_000), "diff_compaction": lambda n: n, "daemon_idle": None,
    "startup": None, "history": None}  # startup's --tasks: each of its small projects; history: 2,000
ALL = SERVER_BENCHES + LOCAL_BENCHES + SCRIPT_BENCHES


def _module_run(name: str) -> Callable[[BenchEnv], list[Row]]:
    module = __import__(name)
    return module.run


def run_scripts(env: BenchEnv, names: list[str]) -> tuple[list[Row], dict[str, str]]:
    """Run the other benchmark scripts as subprocesses; collect rows from ``OUT/<name>.json`` if written."""
    rows: list[Row] = []
    status: dict[str, str] = {}
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            status[name] = "not present (bench/%s.py); skipped" % name
            continue
        # Pass only the common options the script declares (its --help lists them).
        usage = common.run_script(script, ["--help"], capture=True).stdout
        tasks = SCRIPT_TASKS.get(name)
        offered = {"--tasks": str(tasks(env.tasks)) if tasks else None, "--out": str(env.out),
                   "--ls-venv": str(env.args.ls_venv) if env.args.ls_venv else None}
        args = [x for flag, value in offered.items() if value and flag in usage for x in (flag, value)]
        log(f"running {script.name} {' '.join(args)}")
        result_file = env.out / f"{name}.json"
        result_file.unlink(missing_ok=True)
        load_before = os.getloadavg()[0]
        with timer() as t:
            proc = common.run_script(script, args)
        if proc.returncode != 0:
            status[name] = f"FAILED: exit {proc.returncode} after {t['s']:.0f} s (its output is above)"
            continue
        status[name] = f"ok in {t['s']:.0f} s (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})"
        try:
            for d in json.loads(result_file.read_text()).get("rows", []):
                rows.append(Row(**{k: d[k] for k in ("bench", "measure", "ours", "anchor", "unit", "target", "better",
                                                     "note") if k in d}, raw=d.get("raw", {})))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            status[name] += f"; no rows read from {result_file.name} ({type(exc).__name__})"
    return rows, status


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/run_all.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_arguments(parser)
    parser.add_argument("--only", nargs="+", choices=ALL, metavar="NAME",
                        help=f"run only these ({', '.join(ALL)})")
    parser.add_argument("--store-runs", type=int, default=1000, help="synthetic runs of the store benchmark")
    args = parser.parse_args()
    selected = args.only or ALL
    env = common.make_env(args)
    started = time.perf_counter()
    machine_before = machine_info()
    rows: list[Row] = []
    status: dict[str, str] = {}

    def attempt(name: str, fn: Callable[[BenchEnv], list[Row]]) -> None:
        log(f"=== {name}")
        load_before = os.getloadavg()[0]
        try:
            with timer() as t:
                got = fn(env)
            rows.extend(got)
            # The machine is shared: each benchmark's load average says how far to trust its seconds.
            status[name] = f"ok in {t['s']:.0f} s (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})"
        except Exception as exc:  # noqa: BLE001 - one failed benchmark must not hide the others
            traceback.print_exc()
            status[name] = f"FAILED: {type(exc).__name__}: {exc}"

    server_names = [n for n in SERVER_BENCHES if n in selected]
    if server_names:
        with label_studio(env):
            with timer() as t:
                env.project_id = load_project(env, env.tasks)
            status["load"] = f"{env.tasks:,} tasks ready in {t['s']:.0f} s"
            for name in server_names:
                attempt(name, _module_run(name))
    for name in (n for n in LOCAL_BENCHES if n in selected):
        attempt(name, _module_run(name))
    script_rows, script_status = run_scripts(env, [n for n in SCRIPT_BENCHES if n in selected])
    rows.extend(script_rows)
    status.update(script_status)

    total = time.perf_counter() - started
    table = format_table(rows)
    print(f"\n{table}\n")
    for name, text in status.items():
        print(f"  {name}: {text}")
    print(f"  total: {total / 60:.1f} min; load average before {machine_before['load_avg']}, "
          f"after {machine_info()['load_avg']}")
    info: dict[str, Any] = {"status": status, "total_seconds": total, "machine_before": machine_before,
                            "tasks": env.tasks, "selected": selected, **env.info}
    path = common.write_results(env.out, "results", rows, info)
    (env.out / "results.md").write_text(table + "\n")
    print(f"  raw numbers: {path}; profiles: {env.out}/profile-*.txt")
    failed = any(s.startswith("FAILED") for s in status.values())
    env.finish(not failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
