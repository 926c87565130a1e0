"""Chaos: sync and push through a fault-injecting proxy (tests/faultproxy.py) on loopback.

Every pass, whatever the proxy did to its requests, must end one of two ways:

- exit 0, and the store equal to the server (sync: latest version vs ``GET /api/tasks?fields=all``
  read straight from the server, by id and content; push: the target project's tasks vs the
  pushed version's rows, by origin and content, none twice);
- exit 1 with a clear message (one line naming the failure, no traceback, no raw decoder error),
  the store at its previous version (same latest version, same tags), and a failed push leaves no
  task imported twice.

No run may be left ``running``, and once the faults stop one pass makes the store exact. A
broken invariant is reported as the pass, the faults the proxy injected in it (request number,
endpoint, kind) and the outcome. ``CHAOS_SEED`` picks the seed (printed with the counts).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from ls_space_sync.store.state import utcnow
from tests.chaoslib import (
    Result,
    Server,
    StoreState,
    Zygote,
    choice,
    error_message,
    make_tasks,
    mutate,
    push_differences,
    running_runs,
    store_differences,
    store_state,
    stored_tasks,
    sync_line,
    target_duplicates,
    unclear,
    write_config,
)
from tests.faultproxy import KINDS, FaultProxy, NoFaults, RandomSchedule, Script

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("CHAOS_SEED", "20261201"))
TIMEOUT = 2.0  # label_studio.timeout_seconds of the chaos config
HANG = 2.6  # a hang outlasts it
VERBOSE = bool(os.environ.get("CHAOS_VERBOSE"))
BROKEN = ("body_null", "body_list", "body_empty_dict", "body_no_key", "truncated_json", "non_json")

class Bench:
    """One chaos setup: a proxy, a CLI zygote, a config and data dir, and the judging of passes."""

    def __init__(self, server: Server, proxy: FaultProxy, zygote: Zygote, workdir: Path, projects,
                 problems: list[str] | None = None, sections: dict | None = None):
        cfg = sections or {}
        self.server, self.proxy, self.zygote = server, proxy, zygote
        workdir.mkdir(parents=True, exist_ok=True)
        self.data = workdir / "data"
        self.root = self.data / "datasets"
        self.state_url = f"sqlite:///{(self.data / 'state.db').resolve()}"
        self.config = write_config(workdir / "chaos.yaml", proxy.url, self.data, projects, timeout=TIMEOUT, **cfg)
        # the same store, configured with `projects: all` (the sync lists the projects first)
        self.config_all = write_config(workdir / "chaos-all.yaml", proxy.url, self.data, "all", timeout=TIMEOUT,
                                       **cfg)
        self.env = {"LABEL_STUDIO_API_KEY": server.key}
        self.problems: list[str] = [] if problems is None else problems
        self.stats = {"sync passes": 0, "sync ok": 0, "sync failed": 0, "push passes": 0, "push ok": 0,
                      "push failed": 0, "mismatches": 0}

    def cli(self, label: str, *argv: str, timeout: float = 120, every: bool = False, key: str | None = None) -> Result:
        self.proxy.set_pass(label, key)
        config = self.config_all if every else self.config
        result = self.zygote.run(["--config", str(config), *argv], self.env, timeout=timeout)
        if VERBOSE:
            print(f"[{label}] {' '.join(argv)}: exit {result.rc} in {result.seconds:.2f} s, "
                  f"{len(self.proxy.requests(label))} requests, {len(self.proxy.faults(label))} faults")
        return result

    def spawn(self, *argv: str):
        """Start a CLI command without waiting (the proxy's pass label is not changed)."""
        return self.zygote.spawn(["--config", str(self.config), *argv], self.env)

    def fail(self, label: str, result: Result, message: str, mismatch: bool = False) -> None:
        if mismatch:
            self.stats["mismatches"] += 1
        self.problems.append(f"{label}: {message}\n  faults the proxy injected in this pass:\n"
                             f"{self.proxy.describe(label)}\n  output:\n{result.tail()}")

    def _common(self, label: str, result: Result) -> None:
        if "Traceback (most recent call last)" in result.output:
            last = [x for x in result.output.splitlines() if x.strip()][-1]
            self.fail(label, result, f"printed a traceback ending {last.strip()[:200]!r}")
        if result.rc not in (0, 1):
            self.fail(label, result, f"exited {result.rc} (expected 0 or 1)")
        left = running_runs(self.state_url)
        if left:
            self.fail(label, result, f"left runs marked running: {[r.run_id for r in left]}")

    def sync(self, label: str, pid: int, *args: str, every: bool = False, key: str | None = None) -> Result:
        """Run one sync pass and judge it for project ``pid`` (``every``: with ``projects: all``)."""
        before = store_state(self.root, pid)
        result = self.cli(label, "sync", *args, every=every, key=key)
        self.judge_sync(label, pid, result, before)
        return result

    def judge_sync(self, label: str, pid: int, result: Result, before: StoreState, must_succeed: bool = False) -> str:
        """Judge a finished sync pass; return ``"ok"``, ``"failed"`` or ``"bad"``."""
        self.stats["sync passes"] += 1
        n = len(self.problems)
        self._common(label, result)
        if must_succeed and result.rc != 0:
            self.fail(label, result, f"no fault was injected, yet it exited {result.rc}")
        after = store_state(self.root, pid)
        line = sync_line(result, pid)
        if line is not None and line[0] == "ok":
            self.stats["sync ok"] += 1
            if result.rc != 0 and error_message(result) is None and "FAILED" not in result.stdout:
                self.fail(label, result, f"reported project {pid} synced but exited {result.rc}")
            stored = stored_tasks(self.root, pid) if after.version else []
            diffs = store_differences(stored, self.server.tasks(pid))
            if diffs:
                self.fail(label, result, f"exited {result.rc} and reported {line[1]!r}, but the store ({after}) "
                          f"is not the server: " + "; ".join(diffs), mismatch=True)
        elif result.rc == 0:
            self.stats["sync ok"] += 1
            self.fail(label, result, f"exited 0 without a summary line for project {pid} (it was not synced)",
                      mismatch=True)
        else:
            self.stats["sync failed"] += 1
            message = line[1] if line else error_message(result)
            if message is None:
                self.fail(label, result, f"exited {result.rc} without a 'project {pid}: FAILED: ...' or "
                          "'error: ...' line")
            elif unclear(message):
                self.fail(label, result, f"exited {result.rc} but {unclear(message)}")
            if after != before:
                self.fail(label, result, f"failed, but the store moved from {before} to {after}", mismatch=True)
        return "bad" if len(self.problems) > n else "ok" if line and line[0] == "ok" else "failed"

    def push(self, label: str, source: int, target: int, *args: str, must_succeed: bool = False,
             key: str | None = None) -> Result:
        """Run one push pass (latest version of ``source`` into ``target``) and judge it."""
        self.stats["push passes"] += 1
        before = store_state(self.root, source)
        result = self.cli(label, "push", "-p", str(source), "--to-project", str(target), *args, key=key)
        self._common(label, result)
        if must_succeed and result.rc != 0:
            self.fail(label, result, f"no fault was injected, yet it exited {result.rc}")
        after = store_state(self.root, source)
        if after != before:
            self.fail(label, result, f"a push moved the source store from {before} to {after}")
        target_tasks = self.server.tasks(target, raw=True)
        done = re.search(rf"^push project {source} v(\d+) -> project {target}", result.stdout, re.MULTILINE)
        if result.rc == 0:
            self.stats["push ok"] += 1
            if not done:
                self.fail(label, result, "exited 0 without its summary line")
                return result
            rows = stored_tasks(self.root, source, int(done.group(1)))
            diffs = push_differences(rows, target_tasks)
            if diffs:
                self.fail(label, result, f"exited 0 ({done.group(0)}), but project {target} does not hold "
                          f"v{done.group(1)}: " + "; ".join(diffs), mismatch=True)
        else:
            self.stats["push failed"] += 1
            message = error_message(result)
            if message is None:
                self.fail(label, result, f"exited {result.rc} without an 'error: ...' line")
            elif unclear(message):
                self.fail(label, result, f"exited {result.rc} but {unclear(message)}")
            dups = target_duplicates(target_tasks)
            if dups:
                self.fail(label, result, f"failed and left project {target} with " + "; ".join(dups), mismatch=True)
        return result

    def assert_clean(self) -> None:
        assert_no_problems(self.problems)


@pytest.fixture
def proxy(label_studio):
    with FaultProxy(label_studio.url, hang_seconds=HANG) as p:
        yield p


@pytest.fixture(scope="module")
def shared_project(server):
    """45 tasks (5 pages of 10, 2 stamp pages of 25), annotations and predictions on some."""
    return server.project(make_tasks(random.Random(SEED), 45), "chaos: one fault at a time")


def assert_no_problems(problems: list[str]) -> None:
    if problems:
        pytest.fail(f"{len(problems)} broken invariants (CHAOS_SEED={SEED}):\n\n" + "\n\n".join(problems),
                    pytrace=False)


def report(name: str, **counts) -> None:
    line = json.dumps({"test": name, "seed": SEED, **counts})
    print(f"\nCHAOS {line}")
    path = os.environ.get("CHAOS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


# --- one broken answer at a time: the defect class of issue 10 #1 ----------------------------

# (endpoint, first broken request, scenario): from that request on, every request to the endpoint
# in the pass gets the fault, so it outlasts any number of retries.
SYNC_CASES = [
    ("project", 0, "first sync"),
    ("task list", 2, "first sync"),  # the third page of a first sync
    ("task stamps", 1, "full scan"),  # the second page of a full scan's stamps
]


@pytest.mark.parametrize("endpoint, index, scenario", SYNC_CASES, ids=[c[0].replace(" ", "-") for c in SYNC_CASES])
def test_broken_answers_fail_the_sync_clearly_and_commit_nothing(server, proxy, zygote, shared_project, tmp_path,
                                                                endpoint, index, scenario):
    """Each broken answer (null, [], {}, the dict without its key, truncated JSON, non-UTF-8 bytes),
    in its own store; then one clean pass must make the store exact (in every store the broken
    pass changed, and in the last one: a failed first sync leaves nothing to recover from)."""
    pid = shared_project
    problems: list[str] = []
    base = None
    if scenario == "full scan":
        base = Bench(server, proxy, zygote, tmp_path / "base", [pid], problems=problems)
        assert base.cli("setup", "sync").rc == 0
    benches = []
    for kind in BROKEN:
        work = tmp_path / kind
        if base is not None:
            shutil.copytree(base.data, work / "data")
        bench = Bench(server, proxy, zygote, work, [pid], problems=problems)
        proxy.schedule = Script(*[(endpoint, i, kind) for i in range(index, index + 10)])
        bench.sync(f"{scenario}, {kind} from {endpoint} request #{index} on", pid,
                   *(("--full-scan",) if base else ()))
        if base is not None or store_state(bench.root, pid).version is not None or kind == BROKEN[-1]:
            benches.append(bench)
    proxy.schedule = NoFaults()
    proxy.set_pass("the next pass, no faults")
    running = [(b, store_state(b.root, pid), b.spawn("sync")) for b in benches]  # all at once
    for bench, before, child in running:
        bench.judge_sync(f"the next pass after {bench.data.parent.name}, no faults", pid, child.wait(120), before,
                         must_succeed=True)
    assert_no_problems(problems)


def test_a_broken_project_list_is_never_taken_for_no_projects(server, proxy, zygote, shared_project, tmp_path):
    """With ``projects: all`` the sync lists the projects first, and the daemon re-reads the list
    every poll interval: a broken answer must fail the pass clearly, never read as "no projects"
    (a sync that exits 0 having synced nothing; a daemon that unschedules every project)."""
    from ls_space_sync.quickstart.localserver import free_port

    pid = shared_project
    problems: list[str] = []
    for kind in BROKEN:
        bench = Bench(server, proxy, zygote, tmp_path / kind, [pid], problems=problems)
        proxy.schedule = Script(("project list", "*", kind))
        bench.sync(f"sync (projects: all), {kind} at every project list request", pid, every=True)
    port = free_port()
    bench = Bench(server, proxy, zygote, tmp_path / "daemon", "all", problems=problems, sections={
        "sync": {"interval_seconds": 1}, "server": {"port": port}, "compaction": {"interval_seconds": None},
        "scheduler": {"jitter_seconds": 0, "max_backoff_seconds": 2, "shutdown_timeout_seconds": 20}})
    proxy.schedule = NoFaults()
    proxy.set_pass("daemon")
    daemon = zygote.spawn(["--config", str(bench.config), "run"], bench.env)

    def listed() -> list[str] | None:
        try:
            return sorted(httpx.get(f"http://127.0.0.1:{port}/health", timeout=5, trust_env=False).json()["projects"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    try:
        deadline = time.monotonic() + 60
        while str(pid) not in (listed() or []) and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.3)
        assert str(pid) in (listed() or []), f"the daemon never listed project {pid}:\n{daemon.result(-1).tail()}"
        for kind in ("body_list", "body_empty_dict", "body_null"):
            label = f"daemon, {kind} at every project list request"
            proxy.set_pass(label)
            proxy.schedule = Script(("project list", "*", kind))
            end = time.monotonic() + 3.5
            while time.monotonic() < end:
                now = listed()
                if now is not None and str(pid) not in now:
                    lists = [e for e in proxy.requests(label) if e.endpoint == "project list"]
                    problems.append(f"{label}: the daemon dropped project {pid} from its schedule (/health lists "
                                    f"{now}) after {len(lists)} project list requests answered {kind}")
                    break
                time.sleep(0.3)
            proxy.schedule = NoFaults()
            deadline = time.monotonic() + 10
            while str(pid) not in (listed() or []) and time.monotonic() < deadline:
                time.sleep(0.3)
    finally:
        if daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGTERM)
        result = daemon.wait(60)
    if result.rc != 0:
        problems.append(f"SIGTERM: the daemon exited {result.rc}:\n{result.tail()}")
    assert_no_problems(problems)


# Push: (endpoint, kind, which requests, how the target is prepared)
PUSH_CASES = [
    # the second import's answer is lost after the server created its tasks
    ("import", "body_empty_dict", "once", "fresh"),
    ("import", "truncated_json", "once", "fresh"),
    ("import", "close_mid_body", "once", "fresh"),
    # reading the linked target tasks before updating them in place
    ("tasks by id", "body_null", "always", "changed"),
    # the scan of target meta that a push does after a push that failed
    ("task origins", "body_null", "always", "interrupted"),
    # the target's label config, the server's users
    ("project", "body_null", "always", "fresh"),
    ("project", "non_json", "always", "fresh"),
    ("users", "body_null", "always", "fresh"),
]


@pytest.fixture(scope="module")
def synced_base(server, zygote, shared_project, tmp_path_factory, label_studio):
    """A data dir that holds the shared project, synced once (copied by each push case)."""
    work = tmp_path_factory.mktemp("chaos-base")
    with FaultProxy(label_studio.url) as p:
        bench = Bench(server, p, zygote, work, [shared_project])
        assert bench.cli("base", "sync").rc == 0
    return bench.data


@pytest.mark.parametrize("endpoint, kind, when, prepare", PUSH_CASES,
                         ids=[f"{c[0].replace(' ', '-')}-{c[1]}" for c in PUSH_CASES])
def test_a_broken_answer_fails_the_push_clearly_and_imports_nothing_twice(server, proxy, zygote, shared_project,
                                                                         synced_base, tmp_path, endpoint, kind,
                                                                         when, prepare):
    pid = shared_project
    shutil.copytree(synced_base, tmp_path / "data")
    bench = Bench(server, proxy, zygote, tmp_path, [pid])
    target = server.project([], f"chaos push target ({endpoint} {kind})")
    if prepare == "changed":  # pushed once; then three source tasks change, and the store follows
        assert bench.cli("setup push", "push", "-p", str(pid), "--to-project", str(target)).rc == 0
        ids = sorted(server.tasks(pid))
        for task_id in ids[:3]:
            server.sdk.tasks.update(id=task_id, data={"text": f"changed for the push {task_id} {time.time()}"})
        assert bench.cli("setup sync", "sync").rc == 0
    if prepare == "interrupted":  # a push whose second import was done but its answer lost
        proxy.schedule = Script(("import", 1, "http_502", "post"))
        assert bench.cli("setup push", "push", "-p", str(pid), "--to-project", str(target)).rc == 1
    rules = [(endpoint, 1, kind)] if when == "once" else [(endpoint, i, kind) for i in range(10)]
    proxy.schedule = Script(*rules)
    bench.push(f"push, {kind} at {endpoint} {'request #1' if when == 'once' else 'every request'}", pid, target)
    proxy.schedule = NoFaults()
    bench.push("the next push, no faults", pid, target, must_succeed=True)
    bench.assert_clean()


def test_a_push_that_failed_midway_is_not_taken_for_what_the_target_holds(server, proxy, zygote, tmp_path):
    """Found by the random test (seed 20261201, round 14). A push updates task a in place (PATCH of
    its annotation), then fails on task b of the same chunk (the server created b's prediction, its
    answer was lost); the links of the chunk keep the hash of a's *previous* content. When the
    source's task a goes back to that content, the next push takes it for an echo of the last push
    and leaves the target's task a as it is: exit 0, target wrong, and every later push agrees."""
    pid = server.project([{"data": {"text": "a"}, "annotations": [{"result": choice("pos")}]},
                          {"data": {"text": "b"}}], "chaos: a push that failed midway")
    target = server.project([], "chaos: a push that failed midway (target)")
    bench = Bench(server, proxy, zygote, tmp_path, [pid])
    a, b = sorted(server.tasks(pid))
    bench.sync("first sync", pid)
    bench.push("first push", pid, target, must_succeed=True)
    annotation = server.tasks(pid, raw=True)[a]["annotations"][0]["id"]
    server.sdk.annotations.update(id=annotation, result=choice("neg"))
    server.sdk.predictions.create(task=b, result=choice("pos"), score=0.5, model_version="m1")
    bench.sync("sync of a: pos -> neg, b: a new prediction", pid)
    proxy.schedule = Script(("prediction create", 0, "http_502", "post"))
    bench.push("push, 502 after the server created b's prediction", pid, target)
    proxy.schedule = NoFaults()
    server.sdk.annotations.update(id=annotation, result=choice("pos"))
    bench.sync("sync of a: neg -> pos (its first content)", pid)
    bench.push("push after a went back to its first content, no faults", pid, target, must_succeed=True)
    bench.push("one more push, no faults", pid, target, must_succeed=True)
    bench.assert_clean()


# --- many passes, random faults, random changes ---------------------------------------------

# Hangs cost a timeout each: rarer than the rest.
WEIGHTS = {k: (0.4 if k == "hang" else 1.0) for k in KINDS}
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "20"))
SYNC_ARGS = [(), (), (), ("--full-scan",)]


def test_random_faults_over_many_sync_and_push_passes(server, proxy, zygote, tmp_path):
    """20 rounds: random changes, then a sync pass and (most rounds) a push pass through the proxy,
    which faults ~1 sync request in 6 and ~1 push request in 16 (seeded, every kind, bursts of 1-3
    so some outlast the retries) and the first request to every endpoint the passes use.
    Some passes list the projects (``projects: all``). Bounded: 20 rounds or 200 s."""
    rng = random.Random(SEED)
    pid = server.project(make_tasks(rng, 40), "chaos: random faults")
    target = server.project([], "chaos: random faults (push target)")
    bench = Bench(server, proxy, zygote, tmp_path, [pid])
    # A push makes 10-30 requests: at the sync's rate few would get far enough to write anything.
    sync_faults = RandomSchedule(SEED, rate=0.16, weights=WEIGHTS, cover=True)
    push_faults = RandomSchedule(f"{SEED}-push", rate=0.06, weights=WEIGHTS, cover=True)
    deadline = time.monotonic() + 200
    rounds = 0
    for rounds in range(1, ROUNDS + 1):
        if time.monotonic() > deadline:
            break
        changes = mutate(server, pid, rng, rng.randint(1, 3))
        every = rng.random() < 0.2
        proxy.schedule = sync_faults
        bench.sync(f"round {rounds} sync{' (projects: all)' if every else ''} after: {'; '.join(changes)}", pid,
                   *rng.choice(SYNC_ARGS), every=every, key=f"round {rounds} sync")
        if rng.random() < 0.8:
            proxy.schedule = push_faults
            bench.push(f"round {rounds} push", pid, target, "--delete")
    proxy.schedule = NoFaults()
    bench.judge_sync("final sync, no faults", pid, bench.cli("final sync, no faults", "sync"),
                     store_state(bench.root, pid), must_succeed=True)
    bench.push("final push, no faults", pid, target, "--delete", must_succeed=True)
    proxy.dump(tmp_path / "proxy-events.jsonl")
    if bench.problems:
        bench.problems.append(f"every request of the test, with its faults: {tmp_path / 'proxy-events.jsonl'}")
    faults = proxy.fault_counts()
    report("random faults", rounds=rounds, requests=len(proxy.requests()), faults=sum(faults.values()),
           by_kind=faults, by_endpoint=_by_endpoint(proxy), **bench.stats, problems=len(bench.problems))
    bench.assert_clean()


def _by_endpoint(proxy: FaultProxy) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in proxy.faults():
        out[e.endpoint] = out.get(e.endpoint, 0) + 1
    return dict(sorted(out.items()))


# --- the daemon ---------------------------------------------------------------------------------

def test_the_daemon_under_random_faults(server, proxy, zygote, tmp_path):
    """``ls-space-sync run`` (``projects: all``, a poll every second) through the proxy with random
    faults, in rounds: the proxy answers 503 while the test changes the project (so no run sees half
    a change), then lets the faults through for a few seconds. Every version the daemon commits in
    a round must be the server's state of that round, ``/health`` must keep answering and keep the
    project, and once the faults stop the store becomes exact; SIGTERM then ends the daemon with 0."""
    from sqlalchemy import select

    from ls_space_sync.quickstart.localserver import free_port
    from ls_space_sync.store.state import StateDB, SyncRun

    rng = random.Random(SEED + 7)
    pid = server.project(make_tasks(rng, 30), "chaos: the daemon")
    port = free_port()
    bench = Bench(server, proxy, zygote, tmp_path, "all", sections={
        "sync": {"interval_seconds": 1}, "server": {"port": port}, "compaction": {"interval_seconds": None},
        "scheduler": {"jitter_seconds": 0, "max_backoff_seconds": 2, "shutdown_timeout_seconds": 20}})
    proxy.schedule = RandomSchedule(f"{SEED}-daemon", rate=0.2, weights=WEIGHTS)
    proxy.set_pass("daemon")
    daemon = zygote.spawn(["--config", str(bench.config), "run"], bench.env)
    health_url = f"http://127.0.0.1:{port}/health"
    problems = bench.problems
    db = StateDB(bench.state_url)

    def runs_of(project: int) -> list:
        with db.Session() as s:
            return list(s.scalars(select(SyncRun).where(SyncRun.project_id == project, SyncRun.kind == "pull")))

    def health() -> dict | None:
        try:
            resp = httpx.get(health_url, timeout=5, trust_env=False)
            return resp.json() if resp.status_code == 200 else {"status_code": resp.status_code}
        except httpx.HTTPError:
            return None

    try:
        deadline = time.monotonic() + 60
        while health() is None and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.2)
        assert health() is not None, f"the daemon did not serve /health:\n{daemon.result(-1).tail()}"
        deadline = time.monotonic() + 30  # until a project list got through the faults
        while str(pid) not in (health() or {}).get("projects", {}) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert str(pid) in (health() or {}).get("projects", {}), \
            f"the daemon never listed project {pid} in 30 s:\n{daemon.result(-1).tail()}"
        rounds = 3
        for r in range(1, rounds + 1):
            proxy.blocked = True  # every request 503, not forwarded: runs fail fast and clearly
            deadline = time.monotonic() + 30
            while any(x.status == "running" for x in runs_of(pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
            changes = mutate(server, pid, rng, rng.randint(2, 4))
            snapshot = server.tasks(pid)
            opened = utcnow()
            proxy.set_pass(f"daemon round {r}")
            proxy.blocked = False
            end = time.monotonic() + 6
            seen: dict[str, str] = {}  # the first of each kind of problem in the round
            while time.monotonic() < end:
                report_ = health()
                if report_ is None or "projects" not in report_:
                    seen.setdefault("health", f"round {r}: GET /health answered {report_!r}")
                elif str(pid) not in report_["projects"]:
                    seen.setdefault("dropped", f"round {r}: the daemon dropped project {pid} from its schedule "
                                    f"(/health lists {sorted(report_['projects'])})\n  faults so far in this "
                                    f"round:\n{proxy.describe(f'daemon round {r}')}")
                time.sleep(0.5)
            problems.extend(seen.values())
            proxy.blocked = True
            deadline = time.monotonic() + 30
            while any(x.status == "running" for x in runs_of(pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
            for run in runs_of(pid):
                if run.started_at < opened or run.version is None or run.status != "succeeded":
                    continue
                diffs = store_differences(stored_tasks(bench.root, pid, run.version), snapshot)
                if diffs:
                    bench.stats["mismatches"] += 1
                    problems.append(f"daemon round {r} (after: {'; '.join(changes)}): run {run.run_id} succeeded "
                                    f"with v{run.version}, which is not the server: " + "; ".join(diffs)
                                    + f"\n  faults in this round:\n{proxy.describe(f'daemon round {r}')}")
        proxy.schedule = NoFaults()
        proxy.set_pass("daemon, no faults")
        proxy.blocked = False
        deadline = time.monotonic() + 30
        diffs = ["not synced yet"]
        while diffs and time.monotonic() < deadline:
            time.sleep(1)
            store = bench.root / f"project-{pid}.lance"
            diffs = store_differences(stored_tasks(bench.root, pid), server.tasks(pid)) if store.exists() else [
                "no dataset"]
        if diffs:
            problems.append("30 s after the faults stopped the daemon's store is not the server: " + "; ".join(diffs))
    finally:
        if daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGTERM)
        result = daemon.wait(60)
        db.dispose()
    if result.rc != 0:
        problems.append(f"SIGTERM: the daemon exited {result.rc}:\n{result.tail()}")
    # (a traceback while it stops is test_sigterm_while_the_daemon_lists_the_projects_stops_cleanly's)
    lines = result.output.splitlines()
    before_stop = lines[:next((i for i, x in enumerate(lines) if "received SIGTERM" in x), len(lines))]
    for i, line in enumerate(before_stop):
        if "Traceback" in line or "unexpected error" in line:
            last = next((x for x in before_stop[i + 1:] if x and not x.startswith((" ", "Traceback"))), "")
            problems.append(f"the daemon logged {line.strip()[:200]!r} ... {last.strip()[:300]!r}")
            break
    left = running_runs(bench.state_url)
    if left:
        problems.append(f"the daemon left runs marked running: {[x.run_id for x in left]}")
    passes = [x for x in runs_of_all(bench.state_url) if x.project_id == pid]
    faults = proxy.fault_counts()
    report("daemon", rounds=rounds, runs=len(passes), succeeded=sum(x.status == "succeeded" for x in passes),
           skipped=sum(x.status == "skipped" for x in passes), failed=sum(x.status == "failed" for x in passes),
           requests=len(proxy.requests()), faults=sum(faults.values()), by_kind=faults,
           mismatches=bench.stats["mismatches"], problems=len(problems))
    assert_no_problems(problems)


def runs_of_all(state_url: str) -> list:
    from sqlalchemy import select

    from ls_space_sync.store.state import StateDB, SyncRun

    db = StateDB(state_url)
    try:
        with db.Session() as s:
            return list(s.scalars(select(SyncRun).where(SyncRun.kind == "pull")))
    finally:
        db.dispose()


def test_sigterm_while_the_daemon_lists_the_projects_stops_cleanly(server, proxy, zygote, tmp_path):
    """SIGTERM while the daemon's project list (``projects: all``) waits to retry a 503: the daemon
    must stop with 0 and no traceback (found by the daemon test: it closed its HTTP client under
    the discover job, whose retry then raised ``RuntimeError: Cannot send a request, as the client
    has been closed``)."""
    from ls_space_sync.quickstart.localserver import free_port

    port = free_port()
    bench = Bench(server, proxy, zygote, tmp_path, "all", sections={
        "label_studio": {"retries": 2, "retry_max_wait_seconds": 2},
        "sync": {"interval_seconds": 5}, "server": {"port": port}, "compaction": {"interval_seconds": None},
        "scheduler": {"jitter_seconds": 0, "shutdown_timeout_seconds": 20}})
    proxy.schedule = Script(("project list", "*", "http_503", "pre"))
    proxy.set_pass("daemon")
    daemon = zygote.spawn(["--config", str(bench.config), "run"], bench.env)
    try:
        assert proxy.wait_for(lambda evs: any(e.endpoint == "project list" for e in evs), timeout=60), \
            f"the daemon never listed the projects:\n{daemon.result(-1).tail()}"
        time.sleep(0.2)  # its retry is waiting now (0.5 s or more)
    finally:
        if daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGTERM)
        result = daemon.wait(60)
    assert result.rc == 0, f"SIGTERM: exit {result.rc}\n{result.tail()}"
    tracebacks = [x for x in result.output.splitlines() if "Traceback" in x or "raised an exception" in x]
    last = [x for x in result.output.splitlines() if x and not x.startswith((" ", "Traceback"))]
    if tracebacks:
        pytest.fail(f"SIGTERM while the project list waited to retry a 503: the daemon logged "
                    f"{tracebacks[0].strip()!r}; its log ends:\n" + "\n".join(last[-4:]), pytrace=False)
