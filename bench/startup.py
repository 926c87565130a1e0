"""Start-up cost (issue 11): ``--help``, a no-change ``sync`` and the idle daemon, per source tree.

Each ``--tree NAME=PATH`` (one or two; default this checkout) is measured in the same run against
one Label Studio on 127.0.0.1, with the same interpreter (this one: the project's venv has every
dependency). A tree's ``ls_space_sync/`` is first copied into the work folder, so a tree that is
being edited cannot change between runs; each child runs with ``PYTHONPATH`` set to that copy
(ahead of the venv's editable install; checked once per tree by printing
``ls_space_sync.__file__``) and an empty working directory.

1. ``python -m ls_space_sync --help``: wall time of the whole process, median of ``--runs``
   after one untimed run (which also writes the bytecode caches), and its peak RSS (``wait4``).
2. ``python -m ls_space_sync sync -p P`` on a small unchanged project (``--tasks``, default 20):
   wall time of the whole process, median of ``--runs``, after a first sync, the sync's lag and
   one untimed sync. Every tree has its own data folder; the sync state confirms that the timed
   runs changed nothing.
3. ``python -m ls_space_sync run`` with ``--projects`` small projects (default 10), webhooks off,
   poll interval 300 s: VmRSS of the daemon (and of any child process it started) once it has
   synced every project once and then idled ``--idle`` seconds (default 20).

The runs of 1 and 2 alternate between the trees, so a change in the machine's load falls on both.
The goals are absolute, not ratios (issue 11): ``--help`` <= 0.3 s, no-change sync <= 1 s,
idle daemon <= 150 MB (MB here is MiB, VmRSS / 1024). With two trees the second is compared with
the first (``after / before``).

    .venv/bin/python bench/startup.py --ls-venv .ci-cache/label-studio-venv
    .venv/bin/python bench/startup.py --tree before=/tmp/before --tree after=. --runs 7

Prints its own table (each measure per tree, the ratio, PASS/MISS against the absolute goal) and
the common results table; ``-X importtime`` of ``--help`` per tree goes to
``OUT/startup-importtime-NAME.txt``, the daemon's log to ``WORK/startup-NAME/daemon.log``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common import REPO_ROOT, BenchEnv, Row, load_project, log, machine_info, main_for, median, timer
from daemon_idle import rss_mb
from ls_space_sync.quickstart.localserver import free_port

HELP_GOAL_S = 0.3
SYNC_GOAL_S = 1.0
IDLE_GOAL_MB = 150.0
DEFAULT_TASKS = 20
DAEMON_INTERVAL_S = 300  # so no poll falls in the idle window
DAEMON_START_LIMIT_S = 300  # the first pass over every project must end within this
CHILD_LIMIT_S = 300  # any one CLI process


@dataclass
class Tree:
    """A source tree to measure, copied to ``src`` when the run starts."""

    name: str
    path: Path
    src: Path
    commit: str = ""
    dirty: int = 0  # files under ls_space_sync/ with uncommitted changes when copied
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.commit}{f', +{self.dirty} uncommitted' if self.dirty else ''})"


def _arguments(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:  # the common --tasks means a large project; here a small one
        if action.dest == "tasks":
            action.default, action.help = DEFAULT_TASKS, f"tasks in each small project (default {DEFAULT_TASKS})"
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="a source tree to measure (at most two: before, then after; default: this checkout)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs of --help and of the sync (default 7)")
    parser.add_argument("--projects", type=int, default=10, help="projects the daemon syncs (default 10)")
    parser.add_argument("--idle", type=float, default=20, help="seconds the daemon idles before RSS is read")


def trees_of(env: BenchEnv) -> list[Tree]:
    """Parse ``--tree``, copy each tree's package into the work folder and note its commit."""
    specs = env.args.tree or [f"this={REPO_ROOT}"]
    if len(specs) > 2 or any("=" not in s for s in specs):
        raise SystemExit("--tree takes NAME=PATH, once or twice")
    trees = []
    for spec in specs:
        name, _, path = spec.partition("=")
        root = Path(path).resolve()
        if not (root / "ls_space_sync" / "__init__.py").exists():
            raise SystemExit(f"--tree {spec}: no ls_space_sync package in {root}")
        tree = Tree(name, root, env.work / f"src-{name}")
        shutil.rmtree(tree.src, ignore_errors=True)
        shutil.copytree(root / "ls_space_sync", tree.src / "ls_space_sync",
                        ignore=shutil.ignore_patterns("__pycache__"))
        git = ["git", "-C", str(root)]
        tree.commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     check=False).stdout.strip() or "?"
        status = subprocess.run([*git, "status", "--porcelain", "--", "ls_space_sync"], capture_output=True,
                                text=True, check=False).stdout
        tree.dirty = len(status.splitlines())
        trees.append(tree)
    return trees


def child_env(env: BenchEnv, tree: Tree) -> dict[str, str]:
    """The sync environment with only ``tree``'s copy on ``PYTHONPATH``."""
    return {**env.child_env(), "PYTHONPATH": str(tree.src)}


def run_cli(env: BenchEnv, tree: Tree, args: list[str], out: Path, *, python_flags: tuple[str, ...] = ()
            ) -> tuple[float, float]:
    """Run ``python -m ls_space_sync ARGS`` from ``tree`` to its end; return wall seconds and peak RSS (MB).

    Output goes to ``out``. Raises ``RuntimeError`` if it exits non-zero or runs past ``CHILD_LIMIT_S``.
    """
    cwd = env.work / f"startup-{tree.name}" / "cwd"  # empty: no ./config.yaml, no package shadowing the copy
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, *python_flags, "-m", "ls_space_sync", *args]
    with open(out, "wb") as f, timer() as t:
        proc = subprocess.Popen(cmd, env=child_env(env, tree), cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        killer = threading.Timer(CHILD_LIMIT_S, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"[{tree.name}] {' '.join(args)} exited {proc.returncode}: see {out}")
    return t["s"], usage.ru_maxrss / 1024


def check_import_path(env: BenchEnv, tree: Tree) -> None:
    """Fail unless a child with ``tree``'s environment imports the package from ``tree``'s copy."""
    got = subprocess.run([sys.executable, "-c", "import ls_space_sync; print(ls_space_sync.__file__)"],
                         env=child_env(env, tree), cwd=env.work, capture_output=True, text=True, timeout=120,
                         check=False).stdout.strip()
    if not got.startswith(str(tree.src)):
        raise RuntimeError(f"[{tree.name}] the child imports ls_space_sync from {got!r}, not from {tree.src}")
    log(f"[{tree.label}] copied from {tree.path}; ls_space_sync imported from {got}")
    tree.results["imported_from"] = got


def sync_runs(data_dir: Path) -> list[dict[str, Any]]:
    """The runs in a tree's state database (read-only, so the database stays the tree's own), oldest first."""
    db = data_dir / "state.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT project_id, status, finished_at, inserted, updated, deleted, full_scan, "
                                "requests FROM sync_runs ORDER BY started_at").fetchall()
    except sqlite3.OperationalError:  # being created, or locked for a moment
        return []
    return [dict(r) for r in rows]


def measure_help(env: BenchEnv, trees: list[Tree]) -> None:
    """Median wall time and peak RSS of ``--help`` per tree, runs alternating between trees."""
    for tree in trees:
        out = env.work / f"startup-{tree.name}" / "help.txt"
        run_cli(env, tree, ["--help"], out)  # untimed: bytecode caches, page cache
        if "Usage:" not in out.read_text():
            raise RuntimeError(f"[{tree.name}] --help printed no usage: see {out}")
        importtime = env.out / f"startup-importtime-{tree.name}.txt"
        run_cli(env, tree, ["--help"], importtime, python_flags=("-X", "importtime"))
        tree.results["heaviest_imports_ms"] = heaviest_imports(importtime)
        log(f"[{tree.name}] heaviest imports of --help (ms, cumulative): "
            f"{', '.join(f'{name} {ms:.0f}' for ms, name in tree.results['heaviest_imports_ms'])}")
        tree.results["help"] = []
    for _ in range(env.args.runs):
        for tree in trees:
            tree.results["help"].append(run_cli(env, tree, ["--help"], env.work / f"startup-{tree.name}" / "help.txt"))
    for tree in trees:
        log(f"[{tree.name}] --help: {[round(s, 3) for s, _ in tree.results['help']]} s")


def measure_sync(env: BenchEnv, trees: list[Tree], project_id: int) -> None:
    """Median wall time of a no-change ``sync`` per tree after a first sync; check nothing changed."""
    def sync(tree: Tree, out: str) -> tuple[float, float]:
        data = env.work / f"startup-{tree.name}" / "sync-data"
        return run_cli(env, tree, ["--data-dir", str(data), "sync", "-p", str(project_id)],
                       env.work / f"startup-{tree.name}" / out)

    for tree in trees:
        shutil.rmtree(env.work / f"startup-{tree.name}" / "sync-data", ignore_errors=True)
        log(f"[{tree.name}] first sync of project {project_id}: {sync(tree, 'sync-first.txt')[0]:.2f} s")
    # Past the lag, one untimed sync moves each cursor past the import, so the timed ones re-read nothing.
    time.sleep(env.settings(env.work).sync.lag_seconds + 1.5)
    for tree in trees:
        sync(tree, "sync.txt")
        tree.results["sync"] = []
    for _ in range(env.args.runs):
        for tree in trees:
            tree.results["sync"].append(sync(tree, "sync.txt"))
    for tree in trees:
        timed = sync_runs(env.work / f"startup-{tree.name}" / "sync-data")[-env.args.runs:]
        changed = sum(r["inserted"] + r["updated"] + r["deleted"] for r in timed)
        tree.results["sync_runs"] = timed
        log(f"[{tree.name}] no-change sync: {[round(s, 3) for s, _ in tree.results['sync']]} s; "
            f"statuses {sorted({r['status'] for r in timed})}, rows changed {changed}, "
            f"full scans {sum(bool(r['full_scan']) for r in timed)}")
        if changed:
            raise RuntimeError(f"[{tree.name}] the timed syncs changed {changed} rows: not a no-change sync")


def heaviest_imports(path: Path, top: int = 8) -> list[tuple[float, str]]:
    """The top-level packages (ours left out) that took longest to import, from ``-X importtime`` output.

    Returns ``(cumulative milliseconds, package)``, slowest first.
    """
    found = []
    for line in path.read_text().splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        name = name.strip()
        if cumulative.strip().isdigit() and "." not in name and not name.startswith(("ls_space_sync", "_")):
            found.append((int(cumulative) / 1000, name))
    return sorted(found, reverse=True)[:top]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (``/proc/PID/task/*/children``), at most 100."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 100:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:  # the thread or process ended meanwhile
                continue
            found += kids
            todo += kids
    return found


def measure_daemon(env: BenchEnv, tree: Tree, project_ids: list[int]) -> None:
    """Start ``run`` on ``project_ids``, wait for its first pass, idle, read VmRSS, stop it with SIGTERM."""
    home = env.work / f"startup-{tree.name}"
    data = home / "daemon-data"
    shutil.rmtree(data, ignore_errors=True)
    config = home / "daemon.yaml"
    config.write_text(yaml.safe_dump({
        "projects": project_ids, "data_dir": str(data), "log_format": "json",
        "sync": {"interval_seconds": DAEMON_INTERVAL_S},  # per project; no poll falls in the idle window
        "server": {"port": free_port()},  # no webhook_secret: webhooks off
    }))
    log_path = home / "daemon.log"
    (home / "cwd").mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as daemon_log:
        daemon = subprocess.Popen([sys.executable, "-m", "ls_space_sync", "-c", str(config), "run"],
                                  env=child_env(env, tree), cwd=home / "cwd", stdout=daemon_log,
                                  stderr=subprocess.STDOUT)
        try:
            with timer() as t:
                deadline = time.monotonic() + DAEMON_START_LIMIT_S
                while {r["project_id"] for r in sync_runs(data) if r["finished_at"]} < set(project_ids):
                    if daemon.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"[{tree.name}] the daemon did not sync every project: see {log_path}")
                    time.sleep(0.5)
            first_pass = sync_runs(data)
            log(f"[{tree.name}] daemon: first pass over {len(project_ids)} projects done {t['s']:.0f} s after start "
                f"(statuses {sorted({r['status'] for r in first_pass})}); idling {env.args.idle:.0f} s")
            samples = []
            end = time.monotonic() + env.args.idle
            while time.monotonic() < end:
                time.sleep(min(2.0, max(end - time.monotonic(), 0)))
                samples.append(rss_mb(daemon.pid))
            children = {pid: (Path(f"/proc/{pid}/comm").read_text().strip(), rss_mb(pid))
                        for pid in descendants(daemon.pid)}
            tree.results["daemon"] = {
                "rss_mb": samples[-1], "rss_max_mb": max(samples), "rss_samples_mb": samples,
                "children": children, "children_rss_mb": sum(mb for _, mb in children.values()),
                "first_pass_seconds": t["s"], "runs": len(first_pass), "statuses": [r["status"] for r in first_pass],
                "runs_while_idle": len(sync_runs(data)) - len(first_pass),
            }
            log(f"[{tree.name}] daemon at rest: VmRSS {samples[-1]:.0f} MB (max {max(samples):.0f} MB while idle); "
                f"child processes: {children or 'none'}")
            daemon.send_signal(signal.SIGTERM)
            tree.results["daemon"]["exit_on_sigterm"] = daemon.wait(60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.3f} {unit}" if unit == "s" else f"{value:.0f} {unit}".strip()


def report(trees: list[Tree]) -> tuple[list[Row], list[dict[str, Any]]]:
    """Print the per-tree table; return the common rows and the table's lines (for the JSON)."""
    measures = [  # (key, label, unit, absolute goal or None)
        ("help_s", "`--help` wall time, median", "s", HELP_GOAL_S),
        ("help_rss", "`--help` peak RSS, median", "MB", None),
        ("sync_s", "no-change `sync` wall time, median", "s", SYNC_GOAL_S),
        ("sync_rss", "no-change `sync` peak RSS, median", "MB", None),
        ("idle_rss", "daemon at rest, VmRSS (its children included)", "MB", IDLE_GOAL_MB),
        ("children", "daemon's child processes", "", None),
    ]
    for tree in trees:
        r = tree.results
        r["values"] = {
            "help_s": median([s for s, _ in r["help"]]), "help_rss": median([mb for _, mb in r["help"]]),
            "sync_s": median([s for s, _ in r["sync"]]), "sync_rss": median([mb for _, mb in r["sync"]]),
            "idle_rss": r["daemon"]["rss_mb"] + r["daemon"]["children_rss_mb"],
            "children": len(r["daemon"]["children"]),
        }
    head = ["measure", *(t.label for t in trees)]
    if len(trees) == 2:
        head.append(f"{trees[1].name} / {trees[0].name}")
    head += ["goal (absolute)", *(f"{t.name}: result" for t in trees)]
    lines: list[dict[str, Any]] = []
    body = []
    rows: list[Row] = []
    for key, label, unit, goal in measures:
        values = [t.results["values"][key] for t in trees]
        verdicts = ["-" if goal is None else "PASS" if v <= goal else "MISS" for v in values]
        ratio = values[1] / values[0] if len(trees) == 2 and values[0] else None
        cells = [label, *(_fmt(v, unit) for v in values)]
        if len(trees) == 2:
            cells.append("-" if ratio is None else f"{ratio:.2f}x")
        cells += [f"<= {goal:g} {unit}" if goal is not None else "-", *verdicts]
        body.append(cells)
        lines.append({"measure": label, "unit": unit, "goal": goal, "ratio": ratio,
                      "values": {t.name: v for t, v in zip(trees, values)},
                      "verdicts": {t.name: v for t, v in zip(trees, verdicts)}})
        # The common table is ratio-based: against a goal the anchor is the goal (target 1x).
        if goal is not None:
            rows += [Row("startup", f"{label} [{t.name}] vs absolute goal", v, goal, unit, 1.0, raw=t.results)
                     for t, v in zip(trees, values)]
        if ratio is not None:
            rows.append(Row("startup", f"{label}: {trees[1].name} vs {trees[0].name}", values[1], values[0], unit))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def fmt_line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    machine = machine_info()
    print(f"\nStart-up (issue 11), {machine['date']}, load average {machine['load_avg']}, "
          f"{machine['nproc']} cores; goals are absolute\n")
    print("\n".join([fmt_line(head), fmt_line(["-" * w for w in widths]), *map(fmt_line, body)]))
    print()
    return rows, lines


def run(env: BenchEnv) -> list[Row]:
    """Measure every tree; return the common rows (the per-tree table is printed)."""
    if env.args.runs < 1 or env.args.projects < 1:
        raise SystemExit("--runs and --projects must be at least 1")
    assert env.project_id is not None  # main_for loaded it
    trees = trees_of(env)
    for tree in trees:
        check_import_path(env, tree)
    project_ids = [env.project_id] + [load_project(env, env.tasks, title=f"startup idle {i} ({env.tasks} tasks)")
                                      for i in range(1, env.args.projects)]
    env.info.update(trees={t.name: {"path": str(t.path), "commit": t.commit, "uncommitted": t.dirty}
                           for t in trees}, runs=env.args.runs, projects=project_ids, load_before=os.getloadavg())
    measure_help(env, trees)
    measure_sync(env, trees, env.project_id)
    for tree in trees:
        measure_daemon(env, tree, project_ids)
    rows, lines = report(trees)
    env.info.update(table=lines, load_after=os.getloadavg())
    return rows


if __name__ == "__main__":
    main_for("startup", run, extra_args=_arguments)
