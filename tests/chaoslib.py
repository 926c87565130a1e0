"""Shared parts of the chaos tests: a fast way to run the CLI as real processes, the server's and
the store's views of a project, and the invariants every pass must keep.

**Running the CLI.** Importing ``ls_space_sync.cli`` takes ~3 s (the SDK imports pandas), which
over a hundred passes would be most of the suite's time. :class:`Zygote` imports it once in a
helper process that then ``fork()``s one child per command; the child runs the console entry
point (``ls_space_sync.cli:run``) with its own argv, environment, working directory and stdout /
stderr files, and exits with its exit code: a real process, killable with SIGKILL, ~0.1 s to
start. :func:`run_real` runs ``python -m ls_space_sync`` the ordinary way, for the tests where
the process itself is the point (concurrent runs, secrets).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from label_studio_sdk import LabelStudio

from ls_space_sync.labelstudio import CORE_TASK_FIELDS
from ls_space_sync.model.records import VOLATILE_KEYS, table_to_tasks
from ls_space_sync.store import ProjectStore
from ls_space_sync.store.state import RUNNING, StateDB, SyncRun

ORIGIN_KEY = "ls_space_sync"

# --- the CLI as processes ------------------------------------------------------------------

_ZYGOTE = r"""
import atexit, io, json, os, select, sys, threading, traceback
import importlib
import ls_space_sync.cli as cli  # the console entry point, ls_space_sync.cli:run
# Preloaded so that each forked command starts at once; a module that is not there is skipped.
for name in ("lance", "pyarrow", "pandas", "label_studio_sdk", "sqlalchemy", "fastapi", "uvicorn", "apscheduler",
             "ls_space_sync.cli.console", "ls_space_sync.cli.push", "ls_space_sync.cli.service",
             "ls_space_sync.pull", "ls_space_sync.push", "ls_space_sync.service", "ls_space_sync.store",
             "ls_space_sync.labelstudio", "ls_space_sync.model"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass

def reply(obj):
    os.write(1, (json.dumps(obj) + "\n").encode())

def child(cmd):
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, cmd["stdout"]), (2, cmd["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False, encoding="utf-8")
        sys.stderr = open(2, "w", closefd=False, encoding="utf-8", errors="backslashreplace", buffering=1)
        os.chdir(cmd["cwd"])
        os.environ.clear()
        os.environ.update(cmd["env"])
        sys.argv = ["ls-space-sync", *cmd["argv"]]
        try:
            cli.run()
            code = 0
        except SystemExit as exc:
            c = exc.code
            if c is None:
                code = 0
            elif isinstance(c, int):
                code = c
            else:
                print(c, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        try:  # what the interpreter does at exit: join non-daemon threads, then the atexit hooks
            threading._shutdown()
        except BaseException:
            pass
        try:
            atexit._run_exitfuncs()
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)

reply({"ready": os.getpid()})
buf = b""
running = set()
while True:
    r, _, _ = select.select([0], [], [], 0.02)
    if r:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = json.loads(line)
            pid = os.fork()
            if pid == 0:
                child(cmd)
            running.add(pid)
            reply({"id": cmd["id"], "pid": pid})
    for pid in list(running):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            running.discard(pid)
            reply({"exited": pid, "rc": os.waitstatus_to_exitcode(status)})
for pid in running:  # the tests waited for their children; anything left is stopped
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except OSError:
        pass
"""


@dataclass
class Result:
    """A finished CLI process."""

    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def tail(self, n: int = 6) -> str:
        lines = [x for x in self.output.splitlines() if x.strip()]
        return "\n".join("    | " + x[:300] for x in lines[-n:]) or "    | (no output)"


class Child:
    """A running CLI process started by a :class:`Zygote`."""

    def __init__(self, zygote: Zygote, pid: int, argv: list[str], out: Path, err: Path):
        self.zygote, self.pid, self.argv, self.out, self.err = zygote, pid, argv, out, err
        self.started = time.monotonic()

    def poll(self) -> int | None:
        return self.zygote._exited.get(self.pid)

    def kill(self) -> None:
        """SIGKILL, by pid (a process this test started)."""
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> Result:
        """Wait for the exit; on timeout kill it and raise ``TimeoutError`` (every wait is bounded)."""
        rc = self.zygote._wait_exit(self.pid, timeout)
        if rc is None:
            self.kill()
            self.zygote._wait_exit(self.pid, 10)
            raise TimeoutError(f"ls-space-sync {' '.join(self.argv)} still ran after {timeout:.0f} s; killed it\n"
                               f"{self.result(-9).tail()}")
        return self.result(rc)

    def result(self, rc: int) -> Result:
        return Result(self.argv, rc, self.out.read_text(errors="replace"), self.err.read_text(errors="replace"),
                      time.monotonic() - self.started)


class Zygote:
    """A helper process that has imported ``ls_space_sync`` and forks one child per CLI command."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "zygote.log", "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "LS_SPACE_SYNC__"))}
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=str(self.workdir))
        self._cond = threading.Condition()
        self._started: dict[int, int] = {}
        self._exited: dict[int, int] = {}
        self._n = 0
        self._ready = False
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready, timeout=120):
                raise RuntimeError(f"the CLI zygote did not start; see {self.workdir / 'zygote.log'}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                if "ready" in msg:
                    self._ready = True
                elif "exited" in msg:
                    self._exited[msg["exited"]] = msg["rc"]
                else:
                    self._started[msg["id"]] = msg["pid"]
                self._cond.notify_all()

    def _wait_exit(self, pid: int, timeout: float) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exited, timeout=timeout)
            return self._exited.get(pid)

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Child:
        """Start ``ls-space-sync *argv`` with exactly ``env`` (plus PATH/HOME) as its environment."""
        with self._cond:
            self._n += 1
            n = self._n
        out, err = self.workdir / f"run-{n:04d}.out", self.workdir / f"run-{n:04d}.err"
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **env}
        cmd = {"id": n, "argv": argv, "env": full_env, "cwd": str(cwd or self.workdir), "stdout": str(out),
               "stderr": str(err)}
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: n in self._started, timeout=30):
                raise RuntimeError("the CLI zygote did not fork")
            pid = self._started[n]
        return Child(self, pid, argv, out, err)

    def run(self, argv: list[str], env: dict[str, str], timeout: float = 120, cwd: Path | None = None) -> Result:
        return self.spawn(argv, env, cwd).wait(timeout)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._reader.join(timeout=5)
        self._log.close()


def run_real(argv: list[str], env: dict[str, str], timeout: float = 120) -> Result:
    """``python -m ls_space_sync *argv`` as an ordinary process (startup ~3 s)."""
    started = time.monotonic()
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **env}
    proc = subprocess.run([sys.executable, "-m", "ls_space_sync", *argv], capture_output=True, text=True, check=False,
                          timeout=timeout, env=full_env)
    return Result(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def popen_real(argv: list[str], env: dict[str, str], out: Path) -> subprocess.Popen:
    """Start ``python -m ls_space_sync *argv``; stdout and stderr go to ``out`` (.out / .err)."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **env}
    with open(f"{out}.out", "wb") as stdout, open(f"{out}.err", "wb") as stderr:
        return subprocess.Popen([sys.executable, "-m", "ls_space_sync", *argv], env=full_env, stdout=stdout,
                                stderr=stderr)


def write_config(path: Path, url: str, data_dir: Path, projects: Any, *, timeout: float = 2.5, retries: int = 1,
                 **sections: Any) -> Path:
    """A chaos config: short timeouts, few retries, tiny backoff, lag 0, small pages."""
    cfg: dict[str, Any] = {
        "label_studio": {"url": url, "timeout_seconds": timeout, "retries": retries, "retry_max_wait_seconds": 0.05},
        "projects": projects,
        "data_dir": str(data_dir),
        "sync": {"lag_seconds": 0, "page_size": 10, "scan_page_size": 25, "full_scan_every": 0},
        "push": {"chunk_size": 10},
        "log_format": "text",
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg, indent=1))
    return path


# --- views of a project -----------------------------------------------------------------------

_TOP = set(CORE_TASK_FIELDS.split(","))


def server_tasks(url: str, api_key: str, project_id: int, *, raw: bool = False) -> dict[int, dict]:
    """The server's own view (``GET /api/tasks?fields=all``, straight to the server, not through the
    proxy), by id: the top-level keys a sync stores, less request-time keys (all keys if ``raw``)."""
    out: dict[int, dict] = {}
    page = 1
    with httpx.Client(timeout=120, trust_env=False) as http:
        while True:
            resp = http.get(f"{url}/api/tasks/", headers={"Authorization": f"Token {api_key}"},
                            params={"project": project_id, "fields": "all", "page": page, "page_size": 1000})
            if resp.status_code == 404:
                break
            resp.raise_for_status()
            tasks = resp.json()["tasks"]
            for task in tasks:
                for key in ("annotations", "predictions"):
                    for item in task.get(key) or []:
                        for volatile in VOLATILE_KEYS:
                            item.pop(volatile, None)
                out[task["id"]] = task if raw else {k: v for k, v in task.items() if k in _TOP}
            if len(tasks) < 1000:
                break
            page += 1
    return out


@dataclass
class StoreState:
    """What a pass may change in the store: the latest version, the tags, the rows' ids."""

    version: int | None
    tags: dict[str, int]

    def __str__(self) -> str:
        return f"v{self.version} with {len(self.tags)} tags" if self.version else "no dataset"


def store_state(root: Path, project_id: int) -> StoreState:
    store = ProjectStore(root, project_id)
    return StoreState(store.version(), store.tags())


def stored_tasks(root: Path, project_id: int, version: Any = None) -> list[dict]:
    """The stored rows of a version (latest by default) as Label Studio task JSON, in row order."""
    return table_to_tasks(ProjectStore(root, project_id).dataset(version).to_table())


def _ids(ids: Iterable[int], limit: int = 12) -> str:
    ids = sorted(ids)
    shown = ", ".join(map(str, ids[:limit]))
    return f"[{shown}{', ...' if len(ids) > limit else ''}] ({len(ids)})"


def store_differences(stored: list[dict], server: dict[int, dict]) -> list[str]:
    """How the stored tasks differ from the server's, one line per kind of difference ([] = equal)."""
    problems = []
    counts = Counter(t["id"] for t in stored)
    dups = [i for i, n in counts.items() if n > 1]
    if dups:
        problems.append(f"duplicate task ids in the dataset: {_ids(dups)}")
    by_id = {t["id"]: t for t in stored}
    missing, extra = set(server) - set(by_id), set(by_id) - set(server)
    if missing:
        problems.append(f"tasks on the server missing from the store: {_ids(missing)}")
    if extra:
        problems.append(f"tasks in the store the server does not have: {_ids(extra)}")
    changed = []
    for task_id in sorted(set(server) & set(by_id)):
        a, b = by_id[task_id], server[task_id]
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            changed.append(f"{task_id} ({', '.join(keys)})")
    if changed:
        problems.append(f"tasks whose content differs: {', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}"
                        f" ({len(changed)})")
    return problems


def running_runs(state_url: str, kind: str | None = None) -> list[SyncRun]:
    """Runs of any project still marked running in the state database."""
    from sqlalchemy import select

    db = StateDB(state_url)
    try:
        with db.Session() as s:
            q = select(SyncRun).where(SyncRun.status == RUNNING)
            if kind is not None:
                q = q.where(SyncRun.kind == kind)
            return list(s.scalars(q))
    finally:
        db.dispose()


# --- a pushed project's content -------------------------------------------------------------

def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def content(task: dict) -> str:
    """What a push must carry over, as one comparable string: data, meta (less the origin),
    annotations and predictions by content (ids differ between projects; order does not matter)."""
    annotations = sorted(_canon([a.get("result"), bool(a.get("was_cancelled")), bool(a.get("ground_truth")),
                                 a.get("lead_time")]) for a in task.get("annotations") or [])
    predictions = sorted(_canon([p.get("result"), p.get("score"), p.get("model_version")])
                         for p in task.get("predictions") or [])
    meta = {k: v for k, v in (task.get("meta") or {}).items() if k != ORIGIN_KEY}
    return _canon({"data": task.get("data"), "meta": meta, "annotations": annotations, "predictions": predictions})


def push_differences(rows: list[dict], target: dict[int, dict]) -> list[str]:
    """How a push target differs from the stored rows it should hold ([] = equal): by origin, content
    and count, so a task imported twice shows even when both copies are right."""
    problems = []
    by_origin: dict[int, list[dict]] = {}
    strangers = []
    for task in target.values():
        origin = (task.get("meta") or {}).get(ORIGIN_KEY) or {}
        if isinstance(origin.get("source_id"), int):
            by_origin.setdefault(origin["source_id"], []).append(task)
        else:
            strangers.append(task["id"])
    dups = {sid: [t["id"] for t in ts] for sid, ts in by_origin.items() if len(ts) > 1}
    if dups:
        shown = "; ".join(f"source {sid} -> target {ids}" for sid, ids in sorted(dups.items())[:6])
        problems.append(f"tasks pushed twice (one origin, several target tasks): {shown} ({len(dups)})")
    if strangers:
        problems.append(f"target tasks without an origin: {_ids(strangers)}")
    source = {t["id"]: t for t in rows}
    missing, extra = set(source) - set(by_origin), set(by_origin) - set(source)
    if missing:
        problems.append(f"source rows missing from the target: {_ids(missing)}")
    if extra:
        problems.append(f"target tasks whose source row is not in the version: {_ids(extra)}")
    changed = [sid for sid in sorted(set(source) & set(by_origin))
               if any(content(t) != content(source[sid]) for t in by_origin[sid])]
    if changed:
        detail = []
        for sid in changed[:2]:
            want, have = json.loads(content(source[sid])), json.loads(content(by_origin[sid][0]))
            parts = [f"{k}: source {str(want[k])[:300]} target {str(have[k])[:300]}" for k in want if want[k] != have[k]]
            detail.append(f"source {sid} -> target {by_origin[sid][0]['id']}: " + "; ".join(parts))
        problems.append(f"target tasks whose content differs from their source row: source ids {_ids(changed)} "
                        f"({' | '.join(detail)})")
    return problems


def target_duplicates(target: dict[int, dict]) -> list[str]:
    """Only the duplicate check of :func:`push_differences` (fine after a failed push)."""
    return [p for p in push_differences([], target) if p.startswith(("tasks pushed twice", "target tasks without"))]


# --- judging a pass ---------------------------------------------------------------------------

# What a message must never be: a raw decoder or programming error instead of what went wrong.
RAW_ERROR = re.compile(
    r"Traceback \(most recent call last\)|Expecting value|Expecting property name|Unterminated string|"
    r"Expecting ',' delimiter|Extra data: line|Invalid control character|codec can't decode|JSONDecodeError|"
    r"KeyError|TypeError|AttributeError|IndexError|'NoneType'|object is not subscriptable|"
    r"string indices must be|list indices must be|not iterable|has no attribute")


def unclear(message: str) -> str | None:
    """Why a failure message is not a clear one (``None`` if it is)."""
    if len(message.strip()) < 15:
        return f"the message is empty or too short: {message!r}"
    found = RAW_ERROR.search(message)
    if found:
        return f"the message is a raw error ({found.group(0)!r}): {message.strip()[:300]!r}"
    return None


def sync_line(result: Result, project_id: int) -> tuple[str, str] | None:
    """The summary line of a project in a sync's output: ``("ok", line)``, ``("failed", message)``, or None."""
    for line in result.stdout.splitlines():
        if line.startswith(f"project {project_id}: FAILED: "):
            return "failed", line[len(f"project {project_id}: FAILED: "):]
        if re.match(rf"project {project_id}: (run-\d+ v\d+|no change) ", line):
            return "ok", line
    return None


def error_message(result: Result) -> str | None:
    """The ``error: ...`` line a failed command printed (stderr), if any."""
    for line in result.stderr.splitlines():
        if line.startswith("error: "):
            return line[len("error: "):]
    return None


# --- a project to break things on -------------------------------------------------------------

LABEL_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/><Choice value="mixed"/></Choices>
</View>"""


def choice(value: str) -> list[dict]:
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]


def make_tasks(rng: random.Random, n: int, start: int = 0) -> list[dict]:
    out = []
    for i in range(start, start + n):
        task: dict = {"data": {"text": f"review {i}: {rng.choice(['great', 'awful', 'fine', 'odd'])}"},
                      "meta": {"batch": i % 3}}
        if rng.random() < 0.6:
            task["annotations"] = [{"result": choice(rng.choice(["pos", "neg"])), "lead_time": round(rng.random(), 3)}]
        if rng.random() < 0.5:
            task["predictions"] = [{"result": choice("mixed"), "score": round(rng.random(), 3), "model_version": "m1"}]
        out.append(task)
    return out


class Server:
    """Direct access to the session's Label Studio (never through the proxy): the SDK and the views."""

    def __init__(self, label_studio):
        self.url, self.key = label_studio.url, label_studio.api_key
        self.http = httpx.Client(timeout=120, trust_env=False)
        self.sdk = LabelStudio(base_url=self.url, api_key=self.key, timeout=120, httpx_client=self.http)
        self.created: list[int] = []

    def project(self, tasks: list[dict], title: str) -> int:
        pid = self.sdk.projects.create(title=title, label_config=LABEL_CONFIG).id
        self.created.append(pid)
        for start in range(0, len(tasks), 200):
            self.sdk.projects.import_tasks(id=pid, request=tasks[start:start + 200], return_task_ids=True)
        return pid

    def tasks(self, pid: int, raw: bool = False) -> dict[int, dict]:
        return server_tasks(self.url, self.key, pid, raw=raw)

    def close(self) -> None:
        for pid in self.created:
            try:
                self.sdk.projects.delete(id=pid)
            except Exception:  # noqa: BLE001 - cleanup only
                pass
        self.http.close()


def mutate(server: Server, pid: int, rng: random.Random, n: int) -> list[str]:
    """``n`` random changes to a project, each of a kind a sync must see (all move ``updated_at``
    or the task count): imports, deletes (the newest task too: SQLite reuses its id), annotations
    created / updated / deleted, predictions created, task data edited. Returns what was done."""
    done = []
    tasks = server.tasks(pid, raw=True)
    annotations = {i: [a["id"] for a in t["annotations"]] for i, t in tasks.items()}
    for _ in range(n):
        ids = sorted(annotations)
        op = rng.choices(["import", "delete", "ann_create", "ann_update", "ann_delete", "pred_create", "patch"],
                         [2, 1, 3, 2, 1, 2, 2])[0]
        if op == "import" or len(ids) < 10:
            new = make_tasks(rng, rng.randint(1, 3), start=rng.randint(1000, 9999))
            got = server.sdk.projects.import_tasks(id=pid, request=new, return_task_ids=True).task_ids
            annotations.update((i, None) for i in got)  # None: not known here
            done.append(f"imported {len(new)} tasks")
            continue
        task_id = rng.choice(ids)
        if annotations[task_id] is None:
            annotations[task_id] = [a["id"] for a in server.sdk.tasks.get(id=task_id).annotations or []]
        mine = annotations[task_id]
        if op == "delete":
            victim = ids[-1] if rng.random() < 0.4 else task_id
            server.sdk.tasks.delete(id=victim)
            annotations.pop(victim)
            done.append(f"deleted task {victim}")
        elif op == "ann_create" or (op in ("ann_update", "ann_delete") and not mine):
            a = server.sdk.annotations.create(id=task_id, result=choice(rng.choice(["pos", "neg", "mixed"])))
            mine.append(a.id)
            done.append(f"annotated task {task_id}")
        elif op == "ann_update":
            server.sdk.annotations.update(id=mine[0], result=choice(rng.choice(["pos", "neg", "mixed"])))
            done.append(f"updated annotation {mine[0]} of task {task_id}")
        elif op == "ann_delete":
            gone = mine.pop()
            server.sdk.annotations.delete(id=gone)
            done.append(f"deleted annotation {gone} of task {task_id}")
        elif op == "pred_create":
            server.sdk.predictions.create(task=task_id, result=choice("pos"), score=round(rng.random(), 3),
                                          model_version=rng.choice(["m1", "m2"]))
            done.append(f"predicted task {task_id}")
        else:
            server.sdk.tasks.update(id=task_id, data={"text": f"edited {rng.randint(0, 10**6)}"})
            done.append(f"edited the data of task {task_id}")
    return done


