"""What every benchmark shares: arguments, a real Label Studio, the workload, timing, result rows.

A benchmark module exposes ``run(env: BenchEnv) -> list[Row]``; ``run_all.py`` calls them in
order against one server and one loaded project, and each module also runs alone
(``python bench/poll.py --tasks 2000``) through :func:`main_for`.

Every number is a ratio against an anchor measured in the same run on the same server, because
the machines are shared and noisy: absolute seconds only mean something next to their anchor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from ls_space_sync.labelstudio.client import LabelStudioClient  # noqa: E402
from ls_space_sync.quickstart.localserver import LocalLabelStudio, ensure_venv  # noqa: E402
from ls_space_sync.settings import Settings, load_settings  # noqa: E402
from ls_space_sync.pull.run import Syncer  # noqa: E402

VENV_ENV_VAR = "LS_SPACE_SYNC_TEST_LS_VENV"
DEFAULT_TASKS = 20_000
IMPORT_CHUNK = 1_000  # tasks per bulk import request

# Image boxes and text classification in one project: the two most common Label Studio shapes.
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image">
    <Label value="Car"/><Label value="Person"/><Label value="Tree"/>
  </RectangleLabels>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="Positive"/><Choice value="Negative"/><Choice value="Neutral"/>
  </Choices>
</View>"""
_IMAGES = ["/static/samples/sample.jpg", "/static/samples/kittens.jpg", "/static/samples/trees_in_snow.jpg"]
# 5,000 pseudo-words: texts about as compressible as natural language, not a 30-word loop that
# would flatter the store's compression.
_rng = random.Random(42)
_WORDS = ["".join(_rng.choice("etaoinshrdlucmfwypvbgkjqxz"[:_rng.randint(8, 26)]) for _ in range(_rng.randint(2, 9)))
          for _ in range(5000)]
MODEL_VERSION = "bench-v1"


# --- results -------------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the results table: our number, its anchor, and the ratio against a target.

    ``ratio`` is ``anchor / ours`` when ``better`` is ``"higher"`` (a speed-up, e.g. the poll) and
    ``ours / anchor`` otherwise (an overhead). ``target`` ``None`` makes the row informational.
    """

    bench: str
    measure: str
    ours: float
    anchor: float
    unit: str
    target: float | None = None
    better: str = "lower"  # "lower": ours/anchor <= target; "higher": anchor/ours >= target
    note: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.better == "higher":
            return self.anchor / self.ours if self.ours else float("inf")
        return self.ours / self.anchor if self.anchor else float("inf")

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        ok = self.ratio >= self.target if self.better == "higher" else self.ratio <= self.target
        return "PASS" if ok else "MISS"

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f">= {self.target:g}x" if self.better == "higher" else f"<= {self.target:g}x"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ratio=self.ratio, verdict=self.verdict, target_text=self.target_text)
        return d


def format_table(rows: list[Row]) -> str:
    """Render rows as a Markdown table (readable in a terminal too)."""
    head = ["bench", "measure", "ours", "anchor", "ratio", "target", "result"]
    body = [
        [r.bench, r.measure, f"{_num(r.ours)} {r.unit}", f"{_num(r.anchor)} {r.unit}", f"{r.ratio:.2f}x" if r.ratio != float("inf") else "-",
         r.target_text, r.verdict]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def machine_info() -> dict[str, Any]:
    """Date (UTC), machine (cores, RAM, load) and versions of what is measured."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "label-studio-sdk": ver("label-studio-sdk"),
        "pylance": ver("pylance"),
        "pyarrow": ver("pyarrow"),
        "httpx": ver("httpx"),
    }


def write_results(out: Path, name: str, rows: list[Row], extra: dict[str, Any] | None = None) -> Path:
    """Write ``out/<name>.json`` with the machine, every row and its raw numbers; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_info(), "rows": [r.as_dict() for r in rows], **(extra or {})},
                               indent=2, default=str))
    return path


# --- timing --------------------------------------------------------------------------------------

@contextlib.contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t["s"]`` is the wall time in seconds."""
    t: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield t
    finally:
        t["s"] = time.perf_counter() - start


def median(xs: list[float]) -> float:
    return statistics.median(xs)


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """Profile the block with pyinstrument (5 ms sampling) into ``path`` (text); no-op if ``None``."""
    if path is None:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.005)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))


@contextlib.contextmanager
def server_profiled(env: BenchEnv, path: Path | None, rate: int = 100) -> Iterator[None]:
    """Sample the Label Studio server process with py-spy while the block runs (``rate`` per second).

    Writes ``path`` (collapsed stacks, ``py-spy record --format raw``) and ``path.with_suffix(".top.txt")``
    (:func:`summarize_stacks`). A no-op if ``path`` is ``None`` or py-spy is not installed (the
    ``bench`` extra installs it; it needs ptrace rights over the server, which a same-user child has).
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if path is None or env.server is None or not Path(spy).exists():
        if path is not None:
            log("py-spy not found: no server profile (pip install -e '.[bench]')")
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([spy, "record", "--pid", str(env.server.pid), "--rate", str(rate), "--format", "raw",
                             "--output", str(path), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attached before the block starts
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            err = "timed out"
        if path.exists():
            path.with_suffix(".top.txt").write_text(summarize_stacks(path))
        else:
            log(f"py-spy wrote no profile: {err.strip()[-300:]}")


def summarize_stacks(path: Path, top: int = 30) -> str:
    """The functions with the most samples under them (inclusive), from py-spy's collapsed stacks.

    Each line of ``path`` is ``frame;frame;...;leaf count`` with frames ``function (file:line)``;
    a function is counted once per stack even if it recurses. Idle samples (a thread waiting in
    ``select``, ``accept``, ``sleep``, ``wait``) are left out of the total, and so are the frames of
    the server's plumbing (threads, WSGI, Django middleware), which sit above every request.
    """
    idle = ("select", "poll", "accept", "sleep", "wait", "_wait", "get_request", "serve_forever", "readinto")
    plumbing = {"threading.py", "socketserver.py", "basehttp.py", "handlers.py", "wsgi.py", "middleware.py",
                "exception.py", "deprecation.py", "csrf.py", "base.py", "utils.py", "decorators.py", "views.py"}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].split(" (")[0] in idle:
            continue
        total += int(count)
        names = set()
        for frame in frames:
            function, _, where = frame.partition(" (")
            file = where.split(":")[0].rstrip(")").rsplit("/", 1)[-1]
            if where and file not in plumbing and "sentry" not in function:
                names.add(f"{function} ({file})")
        for name in names:
            inclusive[name] = inclusive.get(name, 0) + int(count)
    lines = [f"busy samples: {total} (idle waits left out)", f"{'share':>6}  function (file)"]
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{n / max(total, 1):6.1%}  {name}")
    return "\n".join(lines) + "\n"


# --- the workload --------------------------------------------------------------------------------

def _regions(rng: random.Random, kind: str) -> list[dict[str, Any]]:
    regions: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 3)):
        x, y = rng.uniform(0, 70), rng.uniform(0, 70)
        regions.append({
            "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "original_width": 600, "original_height": 403, "image_rotation": 0,
            "value": {"x": round(x, 2), "y": round(y, 2), "width": round(rng.uniform(5, 30), 2),
                      "height": round(rng.uniform(5, 30), 2), "rotation": 0,
                      "rectanglelabels": [rng.choice(["Car", "Person", "Tree"])]},
        })
    regions.append({"from_name": "sentiment", "to_name": "text", "type": "choices",
                    "value": {"choices": [rng.choice(["Positive", "Negative", "Neutral"])]}})
    if kind == "prediction":
        for r in regions:
            r["score"] = round(rng.uniform(0.3, 0.99), 3)
    return regions


def import_tasks(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Build ``n`` tasks for bulk import: every task has a prediction, two in three an annotation.

    Each task shows an image (one of the server's own samples) and a ~30-word text; annotations and
    predictions carry 1-3 image boxes and a text choice.
    """
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        text = " ".join(rng.choice(_WORDS) for _ in range(30))
        task: dict[str, Any] = {
            "data": {"image": _IMAGES[i % len(_IMAGES)], "text": f"#{i}: {text}"},
            "meta": {"source": "bench", "n": i},
            "predictions": [{"result": _regions(rng, "prediction"), "score": round(rng.uniform(0.3, 0.99), 3),
                             "model_version": MODEL_VERSION}],
        }
        if i % 3 != 2:
            task["annotations"] = [{"result": _regions(rng, "annotation"), "lead_time": round(rng.uniform(2, 60), 1)}]
        tasks.append(task)
    return tasks


def server_shaped_tasks(ids: range | list[int], *, project: int = 1, when: datetime | None = None,
                        seed: int = 0) -> list[dict[str, Any]]:
    """Build tasks as ``GET /api/tasks?fields=all`` returns them (for benchmarks without a server).

    Same data, annotations and predictions as :func:`import_tasks`, plus the keys and counters the
    server adds; ``updated_at`` is ``when`` (default now, UTC).
    """
    rng = random.Random(seed)
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out = []
    for task_id in ids:
        text = " ".join(rng.choice(_WORDS) for _ in range(30))
        annotations = []
        if task_id % 3 != 2:
            annotations.append({
                "id": task_id, "completed_by": 1, "result": _regions(rng, "annotation"), "was_cancelled": False,
                "ground_truth": False, "created_at": stamp, "updated_at": stamp, "draft_created_at": None,
                "lead_time": round(rng.uniform(2, 60), 1), "import_id": None, "last_action": None,
                "bulk_created": True, "task": task_id, "project": project, "updated_by": 1, "parent_prediction": None,
                "parent_annotation": None, "last_created_by": None,
            })
        predictions = [{
            "id": task_id, "result": _regions(rng, "prediction"), "model_version": MODEL_VERSION,
            "created_ago": "0 minutes", "score": round(rng.uniform(0.3, 0.99), 3), "cluster": None,
            "neighbors": None, "mislabeling": 0.0, "created_at": stamp, "updated_at": stamp, "model": None,
            "model_run": None, "task": task_id, "project": project,
        }]
        out.append({
            "id": task_id, "predictions": predictions, "annotations": annotations, "drafts": [],
            "annotators": [1] if annotations else [], "inner_id": task_id, "cancelled_annotations": 0,
            "total_annotations": len(annotations), "total_predictions": 1, "completed_at": stamp if annotations else None,
            "annotations_results": "", "predictions_results": "", "predictions_score": predictions[0]["score"],
            "file_upload": None, "storage_filename": None, "annotations_ids": "", "predictions_model_versions": "",
            "avg_lead_time": None, "draft_exists": False, "updated_by": [], "data": {
                "image": _IMAGES[task_id % len(_IMAGES)], "text": f"#{task_id}: {text}"},
            "meta": {"source": "bench", "n": task_id}, "created_at": stamp, "updated_at": stamp,
            "is_labeled": bool(annotations), "overlap": 1, "comment_count": 0, "unresolved_comment_count": 0,
            "last_comment_updated_at": None, "project": project, "comment_authors": [],
        })
    return out


# --- the server ----------------------------------------------------------------------------------

@dataclass
class BenchEnv:
    """One benchmark session: arguments, output folder, and (once started) the server and project."""

    args: argparse.Namespace
    out: Path
    work: Path
    server: LocalLabelStudio | None = None
    project_id: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    temporary: bool = False  # work is a fresh temporary folder, removed by finish()

    def finish(self, ok: bool) -> None:
        """Remove a temporary work folder after a good run; keep it (and say where) after a failure."""
        if self.temporary and ok:
            shutil.rmtree(self.work, ignore_errors=True)
        elif self.temporary:
            log(f"kept {self.work} (server log and stores) to look into the failure")

    @property
    def tasks(self) -> int:
        return self.args.tasks

    def http(self, timeout: float = 600) -> httpx.Client:
        """A raw httpx client for the anchors: the server's base URL and token, no proxy, keep-alive."""
        assert self.server is not None
        return httpx.Client(base_url=self.server.url, timeout=timeout, trust_env=False,
                            headers={"Authorization": f"Token {self.server.api_key}"})

    def client(self) -> LabelStudioClient:
        """Our own Label Studio client (the one the sync uses); close it when done."""
        assert self.server is not None
        return LabelStudioClient(self.server.url, self.server.api_key, timeout=600)

    def settings(self, data_dir: Path, **sync: Any) -> Settings:
        """Sync settings for the session server and project, state and store under ``data_dir``."""
        assert self.server is not None and self.project_id is not None
        overrides: dict[str, Any] = {"data_dir": str(data_dir), "projects": [self.project_id]}
        if sync:
            overrides["sync"] = sync
        # os.devnull: an empty config file, so a stray ./config.yaml cannot change what is measured.
        return load_settings(config_path=os.devnull,
                             env={"LABEL_STUDIO_URL": self.server.url, "LABEL_STUDIO_API_KEY": self.server.api_key},
                             overrides=overrides)

    def child_env(self) -> dict[str, str]:
        """Environment for a sync subprocess: the server's URL and token as Label Studio names them."""
        assert self.server is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LS_SPACE_SYNC__"))}
        env.update(LABEL_STUDIO_URL=self.server.url, LABEL_STUDIO_API_KEY=self.server.api_key)
        return env

    def sync_dir(self) -> Path:
        """The state and store shared by the poll and incremental benchmarks."""
        return self.work / f"sync-{self.project_id}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes."""
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                        help=f"tasks in the benchmark project (default {DEFAULT_TASKS:,}; 100000 on request)")
    parser.add_argument("--ls-venv", type=Path, default=None,
                        help=f"Label Studio virtual environment (default ${VENV_ENV_VAR}, "
                             "else .ci-cache/label-studio-venv; installed if missing)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results JSON and profiles (default /tmp/ls-space-sync-bench/results)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the server's data and the synced stores; reusing one skips the "
                             "import of a project that is already loaded (default: a fresh temporary folder, "
                             "removed after a good run)")


def ls_venv(args: argparse.Namespace) -> Path:
    """The Label Studio venv: ``--ls-venv``, else ``$LS_SPACE_SYNC_TEST_LS_VENV``, else the CI cache."""
    return Path(args.ls_venv or os.environ.get(VENV_ENV_VAR) or REPO_ROOT / ".ci-cache" / "label-studio-venv")


def make_env(args: argparse.Namespace) -> BenchEnv:
    """Create the output and work folders of a session (nothing is started yet)."""
    out = (args.out or Path(tempfile.gettempdir()) / "ls-space-sync-bench" / "results").absolute()
    work = (args.work or Path(tempfile.mkdtemp(prefix="ls-space-sync-bench-"))).absolute()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    return BenchEnv(args=args, out=out, work=work, temporary=args.work is None)


@contextlib.contextmanager
def label_studio(env: BenchEnv) -> Iterator[LocalLabelStudio]:
    """Start a real Label Studio on 127.0.0.1 with its data under ``env.work`` (stopped on exit)."""
    venv = ls_venv(env.args)
    ensure_venv(venv, log=lambda m: log(m))
    log(f"starting Label Studio from {venv} (data {env.work / 'label-studio'})")
    server = LocalLabelStudio(env.work / "label-studio", venv=venv)
    with timer() as t:
        server.start(timeout=900)  # 15 minutes: a machine shared by several test runs starts it slowly
    log(f"Label Studio up at {server.url} in {t['s']:.0f} s")
    env.server = server
    try:
        yield server
    finally:
        server.stop()
        env.server = None


def load_project(env: BenchEnv, n: int, title: str | None = None) -> int:
    """Return a project of ``n`` bench tasks, importing them (in chunks) unless already loaded.

    Tasks are imported with ``import_tasks`` ``IMPORT_CHUNK`` at a time, annotations and predictions
    attached, as a Label Studio user would bulk-import them.
    """
    title = title or f"bench {n} tasks"
    with env.http() as http:
        projects = http.get("/api/projects/", params={"page_size": 1000}).raise_for_status().json()
        for p in projects.get("results", projects) if isinstance(projects, dict) else projects:
            if p["title"] == title and p.get("task_number") == n:
                log(f"reusing project {p['id']} ({title})")
                return int(p["id"])
            if p["title"] == title:  # a half-loaded project from an interrupted run
                http.delete(f"/api/projects/{p['id']}/")
        pid = http.post("/api/projects/", json={"title": title, "label_config": LABEL_CONFIG}).raise_for_status().json()["id"]
        tasks = import_tasks(n)
        with timer() as t:
            for start in range(0, n, IMPORT_CHUNK):
                http.post(f"/api/projects/{pid}/import", params={"return_task_ids": "false"},
                          json=tasks[start:start + IMPORT_CHUNK]).raise_for_status()
                if start and start % (IMPORT_CHUNK * 10) == 0:
                    log(f"  imported {start:,} of {n:,} tasks")
        env.info.setdefault("import_seconds", {})[str(n)] = t["s"]
        log(f"project {pid}: imported {n:,} tasks in {t['s']:.0f} s")
    return int(pid)


def ensure_synced(env: BenchEnv) -> Syncer:
    """A syncer on :meth:`BenchEnv.sync_dir`, caught up with the server (first sync if needed)."""
    syncer = Syncer(env.settings(env.sync_dir()))
    store = syncer.store(env.project_id)
    if not store.exists():
        log(f"first sync of project {env.project_id} into {env.sync_dir()} (not timed here)")
    result = syncer.run_once(env.project_id)
    log(f"  caught up: {result.summary()}")
    return syncer


def wait_past_lag(settings: Settings) -> None:
    """Sleep until changes made before now are older than the sync's lag (so the next run's cursor passes them)."""
    time.sleep(settings.sync.lag_seconds + 1.5)


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def server_time_now(http: httpx.Client) -> datetime:
    """The server's clock (the Date header of a cheap request), UTC."""
    from email.utils import parsedate_to_datetime

    return parsedate_to_datetime(http.get("/api/version").headers["date"]).astimezone(timezone.utc)


def fmt_ts(dt: datetime) -> str:
    """A cursor as the Data Manager filter takes it: ``2026-11-21T23:18:32.888580Z``."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def updated_after_query(cursor: datetime) -> str:
    """The Data Manager query the sync sends for ``updated_at > cursor``, ordered by id."""
    return json.dumps({
        "filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": fmt_ts(cursor)}]},
        "ordering": ["tasks:id"],
    })


def page_through(http: httpx.Client, params: dict[str, Any], page_size: int) -> tuple[int, int]:
    """Page ``GET /api/tasks`` by page number until a short page or a 404; return ``(tasks, requests)``.

    The naive client: OFFSET paging, every page parsed as JSON.
    """
    tasks = requests = 0
    page = 1
    while True:
        resp = http.get("/api/tasks", params={**params, "page": page, "page_size": page_size})
        requests += 1
        if resp.status_code == 404:
            break
        resp.raise_for_status()
        body = resp.json()
        got = body.get("tasks", []) if isinstance(body, dict) else body
        tasks += len(got)
        if len(got) < page_size:
            break
        page += 1
    return tasks, requests


def main_for(name: str, run: Callable[[BenchEnv], list[Row]], needs_server: bool = True,
             extra_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Run one benchmark alone: parse the common options, start the server, load, run, print, save."""
    parser = argparse.ArgumentParser(prog=f"python bench/{name}.py", description=sys.modules["__main__"].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    if extra_args:
        extra_args(parser)
    env = make_env(parser.parse_args())
    ok = False
    try:
        if needs_server:
            with label_studio(env):
                env.project_id = load_project(env, env.tasks)
                rows = run(env)
        else:
            rows = run(env)
        ok = True
    finally:
        env.finish(ok)
    print(format_table(rows))
    print(f"\nraw numbers: {write_results(env.out, name, rows, {'info': env.info})}")


def run_script(script: Path, args: list[str], timeout: float | None = None,
               capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run another bench script with this interpreter (output passed through unless ``capture``)."""
    return subprocess.run([sys.executable, str(script), *args], text=True, timeout=timeout, check=False,
                          capture_output=capture)


__all__ = [
    "BenchEnv", "Row", "add_arguments", "ensure_synced", "format_table", "import_tasks", "label_studio",
    "load_project", "log", "machine_info", "main_for", "make_env", "median", "page_through", "profiled",
    "server_profiled", "server_shaped_tasks", "summarize_stacks", "server_time_now", "timer", "updated_after_query", "wait_past_lag", "write_results",
]
