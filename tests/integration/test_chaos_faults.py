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
import time
from pathlib import Path

import httpx
import pytest
from label_studio_sdk import LabelStudio

from tests.chaoslib import (
    Result, StoreState, Zygote, error_message, push_differences, running_runs, server_tasks, store_differences,
    store_state, stored_tasks, sync_line, target_duplicates, unclear, write_config,
)
from tests.faultproxy import KINDS, FaultProxy, NoFaults, RandomSchedule, Script

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("CHAOS_SEED", "20261201"))
TIMEOUT = 2.0  # label_studio.timeout_seconds of the chaos config
HANG = 2.6  # a hang outlasts it
VERBOSE = bool(os.environ.get("CHAOS_VERBOSE"))
BROKEN = ("body_null", "body_list", "body_empty_dict", "body_no_key", "truncated_json", "non_json")

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


class Bench:
    """One chaos setup: a proxy, a CLI zygote, a config and data dir, and the judging of passes."""

    def __init__(self, server: Server, proxy: FaultProxy, zygote: Zygote, workdir: Path, projects,
                 problems: list[str] | None = None, **cfg):
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
        done = re.search(rf"^push project {source} v(\d+) -> project {target}", result.stdout, re.M)
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


@pytest.fixture(scope="module")
def server(label_studio):
    s = Server(label_studio)
    yield s
    s.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("chaos-cli"))
    yield z
    z.close()


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
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "30"))
SYNC_ARGS = [(), (), (), ("--full-scan",)]


def test_random_faults_over_many_sync_and_push_passes(server, proxy, zygote, tmp_path):
    """30 rounds: random changes, then a sync pass and (most rounds) a push pass through the proxy,
    which faults ~1 request in 6 (seeded, every kind, bursts of 1-3 so some outlast the retries).
    Some passes list the projects (``projects: all``). Bounded: 30 rounds or 200 s."""
    rng = random.Random(SEED)
    pid = server.project(make_tasks(rng, 40), "chaos: random faults")
    target = server.project([], "chaos: random faults (push target)")
    bench = Bench(server, proxy, zygote, tmp_path, [pid])
    proxy.schedule = RandomSchedule(SEED, rate=0.16, weights=WEIGHTS)
    deadline = time.monotonic() + 200
    rounds = 0
    for rounds in range(1, ROUNDS + 1):
        if time.monotonic() > deadline:
            break
        changes = mutate(server, pid, rng, rng.randint(1, 3))
        every = rng.random() < 0.2
        bench.sync(f"round {rounds} sync{' (projects: all)' if every else ''} after: {'; '.join(changes)}", pid,
                   *rng.choice(SYNC_ARGS), every=every, key=f"round {rounds} sync")
        if rng.random() < 0.75:
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
