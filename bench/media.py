"""Media: fetching a project's images through the sync vs a raw parallel download, peak RSS at 10x
the images, and the request cost of a no-change run with media on.

Images (random-noise PNGs made with Pillow, ``--image-px`` square, ~``3 * px * px`` bytes each) are
served by a loopback ``ThreadingHTTPServer`` from ``WORK/www``; each task's ``data.image`` is its
URL. The Label Studio server holds only the tasks.

- fetch time: the media step of ``run_once`` (``MediaRun.fetch``: download with the client's
  retries, hash, blob append, refs commit) vs raw ``httpx`` GETs of the same URLs with
  ``media.concurrency`` threads, each body streamed to a file (median of 3). Target <= 1.2x.
- peak RSS: the peak RSS (its own ``VmHWM``, imports included) of a child running a first sync with
  media of ``10 * N`` images vs the same child with ``N`` images. Target <= 1.2x. Not ``ru_maxrss``
  from ``wait4``: a child started with ``vfork`` (Python 3.10+) carries the parent's high-water mark
  in it (see bench/first_sync.py).
- no-change requests: requests (Label Studio + image server) of a no-change ``run_once`` with
  media on vs the same with media off. Target <= 1.0x.

Run: ``python bench/media.py --images 2000`` (``--rss-images`` sets N of the RSS row, default
``--images / 10``, so 200 vs 2000; the issue's 2,000 vs 20,000 is ``--rss-images 2000``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BenchEnv, Row, label_studio, log, main_for, timer, wait_past_lag  # noqa: E402

HERE = Path(__file__).resolve()
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="box" toName="image"><Label value="a"/></RectangleLabels></View>')


class Files:
    """A loopback http server over a folder, counting the GETs it answers."""

    def __init__(self, root: Path):
        self.served = 0
        files = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                files.served += 1
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.request_queue_size = 128
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_images(root: Path, prefix: str, n: int, px: int, seed: int) -> list[str]:
    """Write ``n`` distinct PNGs under ``root``; return their file names."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = []
    for i in range(n):
        name = f"{prefix}-{i}.png"
        pixels = rng.randbytes(3 * px * px)  # drawn even for a file already there, so file i is always the same
        if not (root / name).exists():
            Image.frombytes("RGB", (px, px), pixels).save(root / name)
        names.append(name)
    return names


def make_project(env: BenchEnv, title: str, urls: list[str]) -> int:
    """Create a project whose tasks show these image URLs (bulk import, 1,000 a request)."""
    with env.http() as http:
        pid = int(http.post("/api/projects/", json={"title": title, "label_config": CONFIG}).json()["id"])
        for start in range(0, len(urls), 1000):
            resp = http.post(f"/api/projects/{pid}/import", json=[{"image": u} for u in urls[start:start + 1000]])
            resp.raise_for_status()
    return pid


def raw_download(urls: list[str], threads: int, dest: Path) -> float:
    """Seconds to GET every URL with ``threads`` threads of one httpx client, bodies streamed to files."""
    dest.mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=60, trust_env=False, limits=httpx.Limits(max_connections=threads)) as http:
        def one(item: tuple[int, str]) -> None:
            i, url = item
            with http.stream("GET", url) as resp, (dest / f"{i}.bin").open("wb") as f:
                resp.raise_for_status()
                for chunk in resp.iter_bytes(1 << 20):
                    f.write(chunk)

        with timer() as t, ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, enumerate(urls)))
    shutil.rmtree(dest, ignore_errors=True)
    return t["s"]


def media_settings(env: BenchEnv, data_dir: Path, enabled: bool = True) -> Any:
    settings = env.settings(data_dir)
    return settings.model_copy(update={"media": settings.media.model_copy(update={"enabled": enabled})})


def timed_sync(env: BenchEnv, pid: int, data_dir: Path, enabled: bool = True) -> dict[str, Any]:
    """A first sync of ``pid`` with media; returns the whole run's and the media step's seconds."""
    from ls_space_sync.media import run as media_run
    from ls_space_sync.pull.run import Syncer

    shutil.rmtree(data_dir, ignore_errors=True)
    spent: list[float] = []
    original = media_run.MediaRun.fetch

    def fetch(self: Any, label_config: str) -> Any:
        started = time.perf_counter()
        try:
            return original(self, label_config)
        finally:
            spent.append(time.perf_counter() - started)

    media_run.MediaRun.fetch = fetch  # type: ignore[method-assign]
    try:
        settings = media_settings(env, data_dir, enabled)
        with Syncer(settings) as syncer, timer() as t:
            result = syncer.run_once(pid)
    finally:
        media_run.MediaRun.fetch = original  # type: ignore[method-assign]
    return {"run_seconds": t["s"], "media_seconds": sum(spent), "status": result.status, "inserted": result.inserted}


def child_rss(env: BenchEnv, pid: int, data_dir: Path) -> dict[str, Any]:
    """Peak RSS (MB) of a child process running a first sync of ``pid`` with media on."""
    shutil.rmtree(data_dir, ignore_errors=True)
    report = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, str(HERE), "--child", "--project", str(pid), "--data-dir", str(data_dir),
           "--report", str(report)]
    proc = subprocess.Popen(cmd, env=env.child_env())
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"media child for project {pid} failed")
    out = json.loads(report.read_text())
    report.unlink()
    shutil.rmtree(data_dir, ignore_errors=True)
    out["ru_maxrss_mb"] = usage.ru_maxrss / 1024  # kept for the record: it includes the parent's peak
    return out


def child(args: argparse.Namespace) -> None:
    from ls_space_sync.pull.run import Syncer
    from ls_space_sync.settings import load_settings

    settings = load_settings(config_path=os.devnull, overrides={"data_dir": str(args.data_dir), "media": {"enabled": True}})
    with Syncer(settings) as syncer:
        result = syncer.run_once(args.project)
        from ls_space_sync.media.store import MediaStore

        blobs = MediaStore(syncer.store(args.project)).blobs()
        Path(args.report).write_text(json.dumps({"inserted": result.inserted,
                                                 "blobs": blobs.count_rows() if blobs is not None else 0,
                                                 "peak_rss_mb": _vm_hwm_mb()}))


def _vm_hwm_mb() -> float:
    """This process's peak RSS so far (``VmHWM`` of ``/proc/self/status``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run(env: BenchEnv) -> list[Row]:
    args = env.args
    n, px = args.images, args.image_px
    small = args.rss_images or max(1, n // 10)
    www = env.work / "www"
    rows: list[Row] = []
    files = Files(www)
    try:
        with label_studio(env):
            log(f"making {n} + {small} + {10 * small} images of {px}x{px} px")
            urls = [f"{files.url}/{f}" for f in make_images(www, f"fetch{px}", n, px, seed=1)]
            env.project_id = make_project(env, f"media bench {n}", urls)
            concurrency = media_settings(env, env.work / "x").media.concurrency
            log(f"project {env.project_id}: {n} image tasks; raw download, {concurrency} threads")
            raw = [raw_download(urls, concurrency, env.work / "raw") for _ in range(2)]
            ours = timed_sync(env, env.project_id, env.work / "sync-media")
            raw.append(raw_download(urls, concurrency, env.work / "raw"))
            off = timed_sync(env, env.project_id, env.work / "sync-plain", enabled=False)
            anchor = sorted(raw)[len(raw) // 2]
            log(f"media step {ours['media_seconds']:.2f} s (run {ours['run_seconds']:.2f} s, without media "
                f"{off['run_seconds']:.2f} s); raw downloads {[round(r, 2) for r in raw]} s")
            rows.append(Row("media", f"fetch {n} images ({px}x{px} px PNG): media step vs raw parallel httpx",
                            ours["media_seconds"], anchor, "s", 1.2,
                            note=f"whole run {ours['run_seconds']:.1f} s vs {off['run_seconds']:.1f} s without media",
                            raw={"ours": ours, "off": off, "raw": raw}))

            # No-change run: media on vs off, requests to Label Studio and to the image server.
            from ls_space_sync.pull.run import Syncer

            costs = {}
            for enabled, data_dir in ((True, env.work / "sync-media"), (False, env.work / "sync-plain")):
                with Syncer(media_settings(env, data_dir, enabled)) as syncer:
                    wait_past_lag(syncer.settings)
                    syncer.run_once(env.project_id)
                    before_ls, before_files = syncer.client.requests, files.served
                    result = syncer.run_once(env.project_id)
                    costs[enabled] = (syncer.client.requests - before_ls) + (files.served - before_files)
                    log(f"no-change run, media {'on' if enabled else 'off'}: {result.status}, {costs[enabled]} requests")
            rows.append(Row("media", "no-change run: requests with media on vs off", costs[True], costs[False],
                            "requests", 1.0))

            # Peak RSS: N vs 10 N images (distinct files), first sync in a child process each.
            small_urls = [f"{files.url}/{f}" for f in make_images(www, f"rss{px}", small, px, seed=2)]
            big_urls = [f"{files.url}/{f}" for f in make_images(www, f"rss{px}", 10 * small, px, seed=2)]
            p_small = make_project(env, f"media rss {small}", small_urls)
            p_big = make_project(env, f"media rss {10 * small}", big_urls)
            rss_small = child_rss(env, p_small, env.work / "rss-small")
            rss_big = child_rss(env, p_big, env.work / "rss-big")
            log(f"peak RSS {rss_small['peak_rss_mb']:.0f} MB at {small} images, {rss_big['peak_rss_mb']:.0f} MB "
                f"at {10 * small}")
            rows.append(Row("media", f"peak RSS of a first sync with media, {10 * small:,} vs {small:,} images",
                            rss_big["peak_rss_mb"], rss_small["peak_rss_mb"], "MB", 1.2,
                            note="whole process (VmHWM), imports included",
                            raw={"small": rss_small, "big": rss_big}))
    finally:
        files.close()
    return rows


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=2000, help="images of the fetch row (default 2,000)")
    parser.add_argument("--image-px", type=int, default=64, help="side of each square PNG, pixels (default 64)")
    parser.add_argument("--rss-images", type=int, default=None,
                        help="N of the RSS row: N vs 10 N images (default --images / 10)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)


if __name__ == "__main__":
    if "--child" in sys.argv:
        p = argparse.ArgumentParser()
        extra_args(p)
        child(p.parse_known_args()[0])
    else:
        main_for("media", run, needs_server=False, extra_args=extra_args)
