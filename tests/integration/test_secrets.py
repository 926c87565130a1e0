"""The API token never shows: not in logs (text or JSON, -vv), not on stdout, not in the state
database, not in any file of the data dir, not in the daemon's ``/health`` — also when a request
fails and its error is printed.

The hard case is a server (or a gateway) whose error page echoes the request, ``Authorization:
Token <key>`` included: the proxy (tests/faultproxy.py, ``echo_token=True``) answers every request
so, and the client's message quotes the start of the body. Commands run as ordinary processes
(the first failing sync as ``python -m ls_space_sync``, the rest forked by the chaos CLI runner,
tests/chaoslib.py), configured through ``LABEL_STUDIO_API_KEY`` as users do.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import time
from pathlib import Path

import httpx
import pytest

from ls_space_sync.quickstart.localserver import free_port
from tests.chaoslib import Result, make_tasks, run_real, write_config
from tests.faultproxy import FaultProxy, NoFaults, Script

pytestmark = pytest.mark.integration


def leaks(secret: str, data_dir: Path, results: list[Result], extra: dict[str, str] | None = None) -> list[str]:
    """Where ``secret`` shows: which command's stdout/stderr, which file under ``data_dir``."""
    found = []
    for r in results:
        for stream, text in (("stdout", r.stdout), ("stderr", r.stderr)):
            if secret in text:
                line = next(x for x in text.splitlines() if secret in x)
                found.append(f"`ls-space-sync {' '.join(r.argv[2:])}` {stream}: {line.strip()[:300]!r}")
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        if secret.encode() in raw:
            at = raw.index(secret.encode())
            found.append(f"file {path.relative_to(data_dir)}: ...{raw[max(0, at - 120):at + 50]!r}...")
    for name, text in (extra or {}).items():
        if secret in text:
            found.append(f"{name}: ...{text[max(0, text.index(secret) - 120):text.index(secret) + 50]}...")
    return found


def test_the_token_never_shows_even_when_an_error_page_echoes_it(server, label_studio, zygote, tmp_path):
    pid = server.project(make_tasks(random.Random(3), 12), "chaos: secrets")
    target = server.project([], "chaos: secrets (target)")
    token = server.key
    data = tmp_path / "data"
    env = {"LABEL_STUDIO_API_KEY": token}
    results: list[Result] = []
    with FaultProxy(label_studio.url, echo_token=True) as proxy:
        text = write_config(tmp_path / "text.yaml", proxy.url, data, [pid], log_format="text")
        json_ = write_config(tmp_path / "json.yaml", proxy.url, data, [pid], log_format="json")

        def cli(config: Path, *argv: str, rc: int, real: bool = False) -> Result:
            run = run_real if real else zygote.run
            result = run(["--config", str(config), *argv], env)
            results.append(result)
            assert result.rc == rc, f"`{' '.join(argv)}` exited {result.rc}, not {rc}:\n{result.tail()}"
            return result

        # a clean sync with debug logs, then every request answered 500/502 echoing the request's token
        cli(text, "-vv", "sync", rc=0)
        proxy.schedule = Script(("*", "*", "http_500"))
        failed = cli(text, "-vv", "sync", "--full-scan", rc=1, real=True)
        assert "injected 500" in failed.output, "the failure did not quote the server's answer"
        cli(json_, "-vv", "sync", "--full-scan", rc=1)
        proxy.schedule = Script(("*", "*", "http_502"))
        cli(text, "-vv", "push", "-p", str(pid), "--to-project", str(target), rc=1)
        cli(json_, "push", "-p", str(pid), "--to-project", str(target), rc=1)
        proxy.schedule = NoFaults()
        cli(text, "runs", "--json", rc=0)  # the recorded errors, read back
        cli(text, "runs", rc=0)

        # the daemon: JSON logs, failures recorded and shown on /health
        port = free_port()
        daemon_cfg = write_config(tmp_path / "daemon.yaml", proxy.url, data, [pid], log_format="json",
                                  sync={"interval_seconds": 1}, server={"port": port},
                                  scheduler={"jitter_seconds": 0, "max_backoff_seconds": 1},
                                  compaction={"interval_seconds": None})
        proxy.schedule = Script(("*", "*", "http_503"))
        daemon = zygote.spawn(["--config", str(daemon_cfg), "-v", "run"], env)
        health = ""
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    resp = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5, trust_env=False)
                    health = resp.text
                    if '"consecutive_failures":0' not in health.replace(" ", "") and "consecutive_failures" in health:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        finally:
            if daemon.poll() is None:
                os.kill(daemon.pid, signal.SIGTERM)  # our own child, by its pid
            results.append(daemon.wait(60))
        assert "consecutive_failures" in health, f"/health never showed the failed polls: {health[:300]}"

    # a wrong token is a secret too
    wrong = f"wrong-{secrets.token_hex(12)}"
    with FaultProxy(label_studio.url, echo_token=True) as proxy:
        proxy.schedule = Script(("*", "*", "http_500"))
        cfg = write_config(tmp_path / "wrong.yaml", proxy.url, data, [pid])
        bad = zygote.run(["--config", str(cfg), "-vv", "sync"], {"LABEL_STUDIO_API_KEY": wrong})
        assert bad.rc == 1, bad.tail()
    found = leaks(token, data, results, {"GET /health": health}) + leaks(wrong, data, [bad])
    if found:
        pytest.fail(f"the API token shows in {len(found)} places (an error page echoed the request's "
                    "Authorization header):\n  " + "\n  ".join(found), pytrace=False)
