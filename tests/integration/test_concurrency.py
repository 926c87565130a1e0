"""Two ``sync`` processes of one project, and two ``push`` processes into one target, at once:
one runs, the other is refused at once with a clear message, and the data stays intact.

One of each pair is an ordinary process (``python -m ls_space_sync``), the other a process
forked by the chaos CLI runner (tests/chaoslib.py :class:`Zygote`). The proxy (tests/faultproxy.py)
holds the first process's task listing (or import) until the second one has been refused, so the
two surely overlap, with no timing guesswork.
"""

from __future__ import annotations

import random
import threading

import pytest

from tests.chaoslib import (
    error_message,
    make_tasks,
    popen_real,
    push_differences,
    run_real,
    running_runs,
    store_differences,
    stored_tasks,
    sync_line,
    unclear,
    write_config,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


def wait_exit(proc, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except Exception:
        proc.kill()  # our own child, by its Popen handle
        proc.wait(timeout=10)
        raise


def output(path) -> str:
    return open(f"{path}.out").read() + open(f"{path}.err").read()


def test_two_syncs_of_one_project_one_is_refused(server, label_studio, zygote, tmp_path):
    pid = server.project(make_tasks(random.Random(1), 30), "chaos: two syncs at once")
    env = {"LABEL_STUDIO_API_KEY": server.key}
    with FaultProxy(label_studio.url) as proxy:
        gate = proxy.holds["task list"] = threading.Event()
        config = write_config(tmp_path / "c.yaml", proxy.url, tmp_path / "data", [pid], timeout=120)
        first = popen_real(["--config", str(config), "sync"], env, tmp_path / "first")
        try:
            assert proxy.wait_for(lambda evs: any(e.endpoint == "task list" for e in evs), timeout=60), \
                f"the first sync never listed tasks:\n{output(tmp_path / 'first')}"
            second = zygote.run(["--config", str(config), "sync"], env, timeout=60)  # the first holds the lock
        finally:
            gate.set()
            rc = wait_exit(first)
        project_reads = [e for e in proxy.requests() if e.endpoint == "project"]
        third = zygote.run(["--config", str(config), "sync"], env)
    line = sync_line(second, pid)
    assert second.rc == 1 and line is not None and line[0] == "failed", f"the second sync was not refused:\n{second.tail()}"
    assert "another process" in line[1] and not unclear(line[1]), line[1]
    assert "Traceback" not in second.output
    assert len(project_reads) == 1, "the refused sync sent requests to Label Studio"
    assert rc == 0, output(tmp_path / "first")
    root = tmp_path / "data" / "datasets"
    assert not store_differences(stored_tasks(root, pid), server.tasks(pid))
    assert not running_runs(f"sqlite:///{tmp_path / 'data' / 'state.db'}")
    assert third.rc == 0 and f"project {pid}: no change" in third.stdout, third.tail()


def test_two_pushes_into_one_target_one_is_refused(server, label_studio, zygote, tmp_path):
    pid = server.project(make_tasks(random.Random(2), 30), "chaos: two pushes at once")
    target = server.project([], "chaos: two pushes at once (target)")
    env = {"LABEL_STUDIO_API_KEY": server.key}
    with FaultProxy(label_studio.url) as proxy:
        config = write_config(tmp_path / "c.yaml", proxy.url, tmp_path / "data", [pid], timeout=120)
        assert zygote.run(["--config", str(config), "sync"], env).rc == 0
        gate = proxy.holds["import"] = threading.Event()
        argv = ["--config", str(config), "push", "-p", str(pid), "--to-project", str(target)]
        first = zygote.spawn(argv, env)
        try:
            assert proxy.wait_for(lambda evs: any(e.endpoint == "import" for e in evs), timeout=60), \
                f"the first push never imported:\n{first.result(-1).tail()}"
            second = run_real(argv, env, timeout=60)
        finally:
            gate.set()
            done = first.wait(120)
        rc = done.rc
        imports = [e for e in proxy.requests() if e.endpoint == "import"]
        again = zygote.run(argv, env)
    message = error_message(second)
    assert second.rc == 1 and message is not None, f"the second push was not refused:\n{second.tail()}"
    assert "another process" in message and not unclear(message), message
    assert "Traceback" not in second.output
    assert rc == 0, done.tail()
    assert len(imports) == 3, f"{len(imports)} imports for 30 tasks in chunks of 10: the refused push imported"
    root = tmp_path / "data" / "datasets"
    assert not push_differences(stored_tasks(root, pid), server.tasks(target, raw=True))
    assert not running_runs(f"sqlite:///{tmp_path / 'data' / 'state.db'}")
    assert again.rc == 0 and "+0 ~0 -0" in again.stdout, again.tail()
