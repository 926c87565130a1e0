"""Chaos: ``kill -9`` of ``sync`` and ``push`` at random moments (seeded), then the next run.

The CLI runs as real processes (tests/chaoslib.py :class:`Zygote`) talking to Label Studio through
a pass-through proxy (tests/faultproxy.py), which tells when the k-th request of a run has been
answered: each trial picks k from 0 (the process is still starting) to the run's last request
(then a longer delay, into the commit), sleeps a moment more and sends SIGKILL. After each kill:

- the dataset opens, at its old content or at the new one (the server's), with no task id twice;
- a push target holds no task twice (one origin, two target tasks);
- the next run, not killed, exits 0 and makes the store (or the target) exact;
- no run is left ``running`` in the state database, every succeeded run's tag names its version,
  and the killed run's staging file (rows it had fetched, ``<store>/.staging/<run_id>.arrow``) is
  gone after the next run.

Bounded: 11 sync and 9 push kills (at most 8 more trials each), every process waited for at most
120 s.
"""

from __future__ import annotations

import os
import random
import shutil
import time

import pytest
from sqlalchemy import select

from ls_space_sync.store import ProjectStore
from ls_space_sync.store.state import StateDB, SyncRun
from tests.chaoslib import (
    Server,
    Zygote,
    choice,
    make_tasks,
    push_differences,
    running_runs,
    store_differences,
    stored_tasks,
    target_duplicates,
    write_config,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("CHAOS_SEED", "20261201"))
TASKS = 80  # a first sync: 16 pages of 5; a full scan: 4-6 pages of 20 stamps
PUSH_TASKS = 64  # a first push: 8 chunks of 8
VERBOSE = bool(os.environ.get("CHAOS_VERBOSE"))
SYNC_KILLS = int(os.environ.get("CHAOS_SYNC_KILLS", "11"))
PUSH_KILLS = int(os.environ.get("CHAOS_PUSH_KILLS", "9"))


class Killer:
    """Runs CLI commands through the proxy and kills them at a seeded random moment."""

    def __init__(self, server: Server, proxy: FaultProxy, zygote: Zygote, workdir, pid: int, rng: random.Random,
                 page: int, scan_page: int, chunk: int):
        self.server, self.proxy, self.zygote, self.pid, self.rng = server, proxy, zygote, pid, rng
        self.data = workdir / "data"
        self.root = self.data / "datasets"
        self.state_url = f"sqlite:///{(self.data / 'state.db').resolve()}"
        self.config = write_config(workdir / "kill.yaml", proxy.url, self.data, [pid], timeout=30, retries=2,
                                   sync={"page_size": page, "scan_page_size": scan_page},
                                   push={"chunk_size": chunk})
        self.env = {"LABEL_STUDIO_API_KEY": server.key}
        self.problems: list[str] = []
        self.stats = {"trials": 0, "kills": 0, "finished before the kill": 0, "mismatches": 0,
                      "killed after committing": 0, "runs recovered by the next sync": 0,
                      "left staging files": 0}
        self.expected: dict[str, int] = {}  # requests an unkilled run of each kind made
        self.dead: set[str] = set()  # run ids of the last killed run
        self.leftovers: list[str] = []  # staging files left behind (reported at the end, do not stop the trials)

    def run(self, label: str, *argv: str):
        self.proxy.set_pass(label)
        result = self.zygote.run(["--config", str(self.config), *argv], self.env, timeout=120)
        self.log(f"[{label}] {' '.join(argv)}: exit {result.rc} in {result.seconds:.2f} s, "
                 f"{len(self.proxy.requests(label))} requests")
        return result

    def log(self, text: str) -> None:
        if VERBOSE:
            print(f"{time.monotonic():.2f} {text}")

    def kill_during(self, label: str, kind: str, *argv: str, at_commit: bool = False) -> str:
        """Start the command, SIGKILL it at a random moment; return when (for messages).

        ``at_commit``: the moment a new version appears in the dataset (the commit is done, the
        tag and the checkpoint are not), plus 0-20 ms; the window a kill at a random time rarely hits.
        """
        self.proxy.set_pass(label)
        expected = self.expected.get(kind, 15)
        k = self.rng.randint(0, expected)
        delay = self.rng.uniform(0, 0.5) if k == 0 else self.rng.uniform(0, 0.3) if k == expected \
            else self.rng.uniform(0, 0.1)
        versions = self.root / f"project-{self.pid}.lance" / "_versions"
        before = set(os.listdir(versions)) if versions.exists() else set()
        child = self.zygote.spawn(["--config", str(self.config), *argv], self.env)
        if at_commit:
            delay = self.rng.uniform(0, 0.004)
            deadline = time.monotonic() + 60
            while child.poll() is None and time.monotonic() < deadline and not (
                    versions.exists() and set(os.listdir(versions)) - before):
                time.sleep(0.0005)
            when = f"when its version appeared + {delay * 1000:.1f} ms"
        elif k:
            self.proxy.wait_for(lambda evs: sum(1 for e in evs if e.label == label and e.finished) >= k
                                or child.poll() is not None, timeout=60)
        time.sleep(delay)
        self.stats["trials"] += 1
        if not at_commit:
            when = f"after {k} of ~{expected} requests + {delay:.2f} s"
        if child.poll() is None:
            child.kill()
        if child.wait(30).rc == -9:
            self.stats["kills"] += 1
        else:
            self.stats["finished before the kill"] += 1
            when += " (it had already exited)"
            if not at_commit:  # a run of this kind needs fewer requests than guessed: aim inside it
                made = sum(1 for e in self.proxy.requests(label))
                self.expected[kind] = max(1, made - 1)
        result = child.wait(30)
        self.log(f"[{label}] killed {when}")
        # The server finishes what it was sent (an import the dead process started) before the next run.
        self.proxy.wait_for(lambda evs: all(e.finished for e in evs if e.label == label), timeout=60)
        return f"{when}, exit {result.rc}"

    def fail(self, label: str, message: str, mismatch: bool = False) -> None:
        if mismatch:
            self.stats["mismatches"] += 1
        self.problems.append(f"{label}: {message}")

    def check_store_after_kill(self, label: str, old: list[dict] | None) -> None:
        """The dataset opens at the old content or at the server's, no id twice."""
        self.server_now = self.server.tasks(self.pid)
        self.dead = {r.run_id for r in running_runs(self.state_url)}  # the killed run, if it had started one
        try:
            now = stored_tasks(self.root, self.pid) if (self.root / f"project-{self.pid}.lance" / "_versions").exists() \
                else None
        except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
            self.fail(label, f"the dataset does not open after the kill: {type(exc).__name__}: {exc}")
            return
        if now is None:
            if old is not None:
                self.fail(label, "the dataset is gone after the kill", mismatch=True)
            return
        server = self.server_now
        as_new = store_differences(now, server)
        if not as_new:
            if old is not None and store_differences(old, server):
                self.stats["killed after committing"] += 1
            return
        as_old = store_differences(now, {t["id"]: t for t in old}) if old is not None else ["there was none"]
        if as_old:
            self.fail(label, "after the kill the dataset is neither its old content nor the server's: "
                      f"vs the server: {'; '.join(as_new)}; vs the old content: {'; '.join(as_old)}", mismatch=True)

    def check_next_sync(self, label: str) -> None:
        result = self.run(label, "sync")
        if result.rc != 0:
            self.fail(label, f"the next sync exited {result.rc}:\n{result.tail()}")
            return
        diffs = store_differences(stored_tasks(self.root, self.pid), self.server_now)
        if diffs:
            self.fail(label, "the next sync exited 0 but the store is not the server: " + "; ".join(diffs),
                      mismatch=True)
        self.check_no_running(label)
        # the bookkeeping: every succeeded run's tag names its version (a run killed after its
        # commit is recorded by the next one, which tags its version)
        tags = ProjectStore(self.root, self.pid).tags()
        db = StateDB(self.state_url)
        try:
            with db.Session() as s:
                runs = list(s.scalars(select(SyncRun).where(SyncRun.project_id == self.pid, SyncRun.kind == "pull")))
        finally:
            db.dispose()
        self.stats["runs recovered by the next sync"] += sum(1 for r in runs if r.run_id in self.dead and "recovered" in (
            r.error or ""))
        for r in runs:
            if r.status == "succeeded" and r.tag and tags.get(r.tag) != r.version:
                self.fail(label, f"run {r.run_id} succeeded with {r.tag} v{r.version}, but the dataset's tag "
                          f"{r.tag} names {tags.get(r.tag)}")

    def check_no_running(self, label: str) -> None:
        left = running_runs(self.state_url)
        if left:
            self.fail(label, f"runs left marked running: {[(r.run_id, r.kind) for r in left]}")
        staging = self.root / ".staging"
        left = sorted(p for p in staging.iterdir() if p.stem in self.dead) if staging.exists() else []
        if left:  # a run's rows staged on disk before its commit: nothing reads them once it is dead
            self.stats["left staging files"] += len(left)
            self.leftovers.append(f"{label}: the staging file of the killed run is still there after the next "
                                  f"run: {', '.join(f'{p.name} ({p.stat().st_size} bytes)' for p in left)}")

    def old_content(self) -> list[dict] | None:
        if not (self.root / f"project-{self.pid}.lance" / "_versions").exists():
            return None
        return stored_tasks(self.root, self.pid)


def report(name: str, **counts) -> None:
    import json

    line = json.dumps({"test": name, "seed": SEED, **counts})
    print(f"\nCHAOS {line}")
    path = os.environ.get("CHAOS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def big_change(server: Server, pid: int, rng: random.Random) -> str:
    """A change that gives the next run several pages of work: a bulk import, a few edits and a delete."""
    new = make_tasks(rng, rng.randint(8, 16), start=rng.randint(10_000, 99_999))
    ids = sorted(server.tasks(pid)) + server.sdk.projects.import_tasks(id=pid, request=new,
                                                                        return_task_ids=True).task_ids
    for task_id in rng.sample(ids, 3):
        server.sdk.annotations.create(id=task_id, result=choice(rng.choice(["pos", "neg"])))
    victims = sorted({ids[-1] if rng.random() < 0.5 else rng.choice(ids) for _ in range(len(new) - 2)})
    server.sdk.actions.create(id="delete_tasks", project=pid, selected_items={"all": False, "included": victims})
    return f"imported {len(new)} tasks, annotated 3, deleted {len(victims)} tasks"


def test_kill_9_of_sync_at_random_moments(server, label_studio, zygote, tmp_path):
    rng = random.Random(SEED)
    pid = server.project(make_tasks(rng, TASKS), "chaos: kill -9 of sync")
    with FaultProxy(label_studio.url) as proxy:
        k = Killer(server, proxy, zygote, tmp_path, pid, rng, page=5, scan_page=20, chunk=8)
        k.expected = {"first": TASKS // 5 + 1, "scan": TASKS // 20 + 4, "changes": 5}
        trial = 0
        while k.stats["kills"] < SYNC_KILLS and trial < SYNC_KILLS + 8:
            trial += 1
            kind = "first" if trial == 1 else rng.choice(["first", "scan", "scan", "changes", "changes"])
            if kind == "first":
                shutil.rmtree(k.data, ignore_errors=True)
                what, argv = "a first sync", ("sync",)
            else:
                what = big_change(server, pid, rng)
                argv = ("sync", "--full-scan") if kind == "scan" else ("sync",)
                what = f"{what}; {' '.join(argv)}"
            old = k.old_content()
            at_commit = trial % 4 == 2  # trials 2, 6, 10 aim at the commit
            label = f"sync trial {trial} ({what})"
            when = k.kill_during(label, kind, *argv, at_commit=at_commit)
            label = f"{label}, killed {when}"
            k.check_store_after_kill(label, old)
            k.check_next_sync(f"{label}; the next sync")
            if len(k.problems) > 5:
                break  # enough to go on; the rest of the trials would repeat it
        report("kill -9 of sync", **k.stats)

    k.problems += k.leftovers
    if k.problems:
        pytest.fail(f"{len(k.problems)} broken invariants (CHAOS_SEED={SEED}):\n" + "\n".join(k.problems), pytrace=False)
    assert k.stats["kills"] >= SYNC_KILLS, f"only {k.stats['kills']} of {k.stats['trials']} trials killed a sync"


def test_kill_9_of_push_at_random_moments(server, label_studio, zygote, tmp_path):
    rng = random.Random(SEED + 1)
    pid = server.project(make_tasks(rng, PUSH_TASKS), "chaos: kill -9 of push")
    with FaultProxy(label_studio.url) as proxy:
        k = Killer(server, proxy, zygote, tmp_path, pid, rng, page=10, scan_page=200, chunk=8)
        k.expected = {"fresh": 2 * (PUSH_TASKS // 8) + 3, "changes": 10}
        assert k.run("first sync", "sync").rc == 0
        target = None
        trial = 0
        while k.stats["kills"] < PUSH_KILLS and trial < PUSH_KILLS + 8:
            trial += 1
            kind = "fresh" if target is None else rng.choice(["fresh", "changes", "changes"])
            if kind == "fresh":
                if target is not None:
                    server.sdk.projects.delete(id=target)
                target = server.project([], f"chaos: kill -9 of push, target {trial}")
                what = f"a first push into project {target}"
            else:
                what = big_change(server, pid, rng)
                sync = k.run(f"push trial {trial}: sync", "sync")
                assert sync.rc == 0, sync.tail()
                what = f"{what}, synced; a push into project {target}"
            label = f"push trial {trial} ({what})"
            argv = ("push", "-p", str(pid), "--to-project", str(target), "--delete")
            when = k.kill_during(label, kind, *argv)
            label = f"{label}, killed {when}"
            dups = target_duplicates(server.tasks(target, raw=True))
            if dups:
                k.fail(label, "right after the kill, the target holds " + "; ".join(dups), mismatch=True)
            if len(k.problems) > 5:
                break  # enough to go on; the rest of the trials would repeat it
            result = k.run(f"{label}; the next push", *argv)
            if result.rc != 0:
                k.fail(f"{label}; the next push", f"exited {result.rc}:\n{result.tail()}")
                continue
            diffs = push_differences(stored_tasks(k.root, pid), server.tasks(target, raw=True))
            if diffs:
                k.fail(f"{label}; the next push", "exited 0 but the target does not hold the version: "
                       + "; ".join(diffs), mismatch=True)
            k.check_no_running(f"{label}; the next push")
        report("kill -9 of push", **k.stats)

    k.problems += k.leftovers
    if k.problems:
        pytest.fail(f"{len(k.problems)} broken invariants (CHAOS_SEED={SEED}):\n" + "\n".join(k.problems), pytrace=False)
    assert k.stats["kills"] >= PUSH_KILLS, f"only {k.stats['kills']} of {k.stats['trials']} trials killed a push"
