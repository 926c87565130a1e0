"""The daemon's HTTP endpoints (FastAPI, served by uvicorn in a thread of the daemon's process),
and ``ls-space-sync run``, which serves them together with the daemon (:func:`serve`).

| endpoint | what |
|---|---|
| ``GET /`` | the status page (``status.py``) when ``Accept`` prefers ``text/html``, else what ``/health`` answers |
| ``GET /health`` | 200, ``{"status": "UP", "projects": {id: last run, lag, failures, next poll}}`` |
| ``GET /metrics`` | Prometheus metrics (see ``metrics.py``) |
| ``POST /webhook`` | Label Studio webhook events; the secret in header ``server.webhook_header`` |
| ``POST /setup``, ``POST /predict``, ``GET /versions`` | ML-backend protocol: a model that predicts nothing |
| ``/ml/<secret>/{health,setup,predict,versions,webhook}`` | the same, for a project's Model settings |
| ``/ml/<secret>/tag/<tag>/...`` | the same; predicts each task's annotations at a stored tag |
| ``/ml/<secret>/source/<id>/tag/<tag>/...`` | the same, the tag of project ``id`` (see ``read/predictions.py``) |

Webhooks are hints: an accepted event schedules a sync of its project ``server.debounce_seconds``
later, or the pass of the mirror pair that pulls it (debounced, see :meth:`Daemon.request_sync`);
scheduled polls still run and catch what a lost webhook missed (Label Studio sends each once,
with a 1 s timeout).

Authentication: with ``server.auth`` set, ``GET /``, ``/health`` and ``/metrics`` need it as a
Bearer token (or a Basic password, for browsers; ``auth.py``). ``POST /webhook`` needs
``server.webhook_secret`` in the ``server.webhook_header`` header (``ls-space-sync webhooks
install`` sets it), compared in constant time; a wrong or missing
one gets 401. Label Studio cannot add headers to the webhook it creates for an ML backend, so the
ML-backend URL carries the secret as its path instead: ``<public url>/ml/<secret>``. With no
secret configured the webhook endpoints answer 404 and only polls run: an open endpoint would let
anyone on the network make the daemon hammer Label Studio.

Several daemons (``cluster``, see ``daemon.py``): a webhook for a project another daemon holds
is forwarded to that daemon's advertised URL (``POST <url>/webhook``, the shared secret in the
header, the sender in ``X-LS-Space-Sync-Forwarded-By``); a forwarded event is never forwarded
again. If the holder does not answer 2xx within :data:`FORWARD_TIMEOUT_SECONDS`, the event is
scheduled here instead: the run then waits for the project's lease, so nothing is lost and no two
runs overlap.

Bad requests change nothing: a body over ``server.max_body_bytes`` gets 413, a body that is not a
JSON object with an ``action`` and a project id 400/422, a project this daemon does not sync 404.
"""

from __future__ import annotations

import hmac
import json
import logging
import signal
import socket
import threading
import time
from typing import Any, Callable

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ls_space_sync.errors import Terminal
from ls_space_sync.service.auth import token_guard
from ls_space_sync.service.daemon import Daemon
from ls_space_sync.service.status import ProjectTitles, build_status, prefers_html, render_status
from ls_space_sync.settings import Settings

log = logging.getLogger(__name__)

# The page shows errors and titles from outside: no script may run, nothing may frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "Vary": "Accept",
}

# Events that can change what a project's dataset holds. Label Studio sends no event for
# predictions, drafts or task data edits: the polls catch those.
SYNC_ACTIONS = frozenset({
    "PROJECT_UPDATED", "TASKS_CREATED", "TASKS_DELETED", "ANNOTATION_CREATED", "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
})


def model_version() -> str:
    """What ``/setup`` and ``/predict`` answer as ``model_version``: ``ls-space-sync-<version>``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ls-space-sync-{version('ls-space-sync')}"
    except PackageNotFoundError:
        return "ls-space-sync"


FORWARDED_HEADER = "X-LS-Space-Sync-Forwarded-By"
# Label Studio waits 1 s for a webhook; a holder on the same network answers in milliseconds.
FORWARD_TIMEOUT_SECONDS = 2.0


async def forward_event(url: str, payload: Any, header: str, secret: str, sender: str) -> dict[str, Any] | None:
    """POST a webhook event to the daemon at ``url`` (``<url>/webhook``); its JSON answer if 2xx, else ``None``.

    Never raises: a holder that is down, slow or refusing means "schedule it here".
    """
    try:
        async with httpx.AsyncClient(timeout=FORWARD_TIMEOUT_SECONDS) as client:
            answer = await client.post(f"{url.rstrip('/')}/webhook", json=payload,
                                       headers={header: secret, FORWARDED_HEADER: sender})
        if answer.is_success:
            body = answer.json()
            return body if isinstance(body, dict) else {}
        log.warning("forwarding a webhook to %s: %s answered %d; scheduling it here", url, url, answer.status_code)
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("forwarding a webhook to %s failed (%s); scheduling it here", url, type(exc).__name__)
    return None


class ServiceError(Terminal):
    """The HTTP server could not start (port taken, address not available)."""


class _Rejected(Exception):
    def __init__(self, status: int, reason: str, metric: str):
        super().__init__(reason)
        self.status, self.reason, self.metric = status, reason, metric


def create_app(daemon: Daemon) -> FastAPI:
    """Build the ASGI app around a daemon (its settings, scheduler, state and metrics)."""
    cfg = daemon.settings.server
    secret = cfg.webhook_secret.get_secret_value() if cfg.webhook_secret is not None else None
    version = model_version()
    app = FastAPI(title="ls-space-sync", docs_url=None, redoc_url=None, openapi_url=None)

    def check_secret(given: str | None) -> None:
        if secret is None:
            raise _Rejected(404, "webhooks are off: set server.webhook_secret (LS_SPACE_SYNC__SERVER__WEBHOOK_SECRET) "
                                 "and run ls-space-sync webhooks install", "disabled")
        if given is None or not hmac.compare_digest(given.encode(), secret.encode()):
            raise _Rejected(401, f"missing or wrong secret (header {cfg.webhook_header})", "auth")

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            raise _Rejected(413, f"body larger than server.max_body_bytes ({cfg.max_body_bytes} bytes)", "too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_body_bytes:
                raise _Rejected(413, f"body larger than server.max_body_bytes ({cfg.max_body_bytes} bytes)",
                                "too_large")
        try:
            return json.loads(body)
        except ValueError:
            raise _Rejected(400, "body is not JSON", "malformed") from None

    async def handle_event(request: Request) -> JSONResponse:
        payload = await read_json(request)
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            raise _Rejected(422, "body must be a JSON object with an action, as Label Studio sends", "malformed")
        action = payload["action"]
        project = payload.get("project")
        pid = project.get("id") if isinstance(project, dict) else project
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise _Rejected(422, f"{action}: no project id in the body (project.id)", "malformed")
        if pid not in daemon.projects:
            raise _Rejected(404, f"project {pid} is not synced by this service", "unknown_project")
        daemon.metrics.webhook_event(action)
        if action not in SYNC_ACTIONS:
            return JSONResponse({"status": "ignored", "project": pid, "action": action}, status_code=200)
        holder = daemon.holder_of(pid)
        if holder is not None and holder.daemon_id != daemon.daemon_id and holder.url and secret is not None \
                and request.headers.get(FORWARDED_HEADER) is None:
            answer = await forward_event(holder.url, payload, cfg.webhook_header, secret, daemon.daemon_id)
            daemon.metrics.webhook_forwarded(answer is not None)
            if answer is not None:
                return JSONResponse({**answer, "daemon": holder.daemon_id}, status_code=202)
        when = await run_in_threadpool(daemon.request_sync, pid, "webhook")
        if when is None:
            return JSONResponse({"detail": "the service is stopping"}, status_code=503)
        log.debug("project %s: %s: sync at %s", pid, action, when.isoformat())
        return JSONResponse({"status": "scheduled", "project": pid, "run_at": when.isoformat()}, status_code=202)

    @app.exception_handler(_Rejected)
    async def rejected(request: Request, exc: _Rejected) -> JSONResponse:
        daemon.metrics.webhook_rejected(exc.metric)
        log.info("webhook request rejected: %d %s", exc.status, exc.reason)  # never the path: it may hold the secret
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

    # server.auth guards what reads the daemon's state; webhooks and /ml/ keep their secrets.
    guarded = [Depends(token_guard(app, cfg.auth.get_secret_value() if cfg.auth is not None else None))]
    titles = ProjectTitles(daemon.settings)

    @app.get("/", dependencies=guarded)
    def root(request: Request) -> Response:
        # Label Studio's ML-backend check and curl get the health JSON; a browser gets the page.
        if prefers_html(request.headers.get("accept")):
            return HTMLResponse(render_status(build_status(daemon, titles), version), headers=PAGE_HEADERS)
        return JSONResponse(daemon.health(), headers={"Vary": "Accept"})

    @app.get("/health", dependencies=guarded)
    def health() -> dict[str, Any]:
        return daemon.health()

    @app.get("/metrics", dependencies=guarded)
    def metrics() -> Response:
        body, content_type = daemon.metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        check_secret(request.headers.get(cfg.webhook_header))
        return await handle_event(request)

    # --- ML backend -------------------------------------------------------------------------
    # Label Studio calls <ml url>/health, /setup, /predict, /versions and creates a webhook to
    # <ml url>/webhook (label_studio/ml/api_connector.py). Nothing is predicted: the point is the
    # webhook, which Label Studio then creates without any setup by hand.

    async def setup(request: Request) -> dict[str, str]:
        await read_json(request)  # carries the project's access token: read, never logged or kept
        return {"model_version": version}

    async def predict(request: Request) -> dict[str, Any]:
        await read_json(request)
        return {"results": [], "model_version": version}

    def versions() -> dict[str, Any]:
        return {"versions": [version], "model_version": version}

    app.post("/setup")(setup)
    app.post("/predict")(predict)
    app.get("/versions")(versions)

    @app.api_route("/ml/{token}/", methods=["GET"])
    @app.api_route("/ml/{token}/health", methods=["GET"])
    def ml_health(token: str) -> dict[str, Any]:
        check_secret(token)
        return daemon.health()

    @app.post("/ml/{token}/setup")
    async def ml_setup(token: str, request: Request) -> dict[str, str]:
        check_secret(token)
        return await setup(request)

    @app.post("/ml/{token}/predict")
    async def ml_predict(token: str, request: Request) -> dict[str, Any]:
        check_secret(token)
        return await predict(request)

    @app.get("/ml/{token}/versions")
    def ml_versions(token: str) -> dict[str, Any]:
        check_secret(token)
        return versions()

    @app.post("/ml/{token}/webhook")
    async def ml_webhook(token: str, request: Request) -> JSONResponse:
        check_secret(token)
        return await handle_event(request)

    add_tag_routes(app, daemon, check_secret, read_json, handle_event)
    return app


def project_of(payload: Any) -> int | None:
    """The project id of an ML-backend request: ``"project": "<id>.<created timestamp>"`` as Label
    Studio sends it, else the first task's ``project``."""
    if not isinstance(payload, dict):
        return None
    value = payload.get("project")
    if isinstance(value, str) and value.split(".")[0].isdigit():
        return int(value.split(".")[0])
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    tasks = payload.get("tasks")
    if isinstance(tasks, list) and tasks and isinstance(tasks[0], dict) and isinstance(tasks[0].get("project"), int):
        return int(tasks[0]["project"])
    return None


def add_tag_routes(app: FastAPI, daemon: Daemon, check_secret: Callable[[str | None], None],
                   read_json: Callable[[Request], Any], handle_event: Callable[[Request], Any]) -> None:
    """``/ml/<secret>/tag/<tag>`` and ``/ml/<secret>/source/<project>/tag/<tag>``: an ML backend
    whose predictions are the stored annotations at the tag (:mod:`ls_space_sync.read.predictions`),
    ``model_version`` the tag. Health and webhook are those of ``/ml/<secret>``."""
    from ls_space_sync.read.predictions import AmbiguousTag, TagNotFound, resolve_tag, tag_predictions

    root = daemon.settings.resolved_store_root

    def refused(exc: Exception, status: int) -> JSONResponse:
        log.info("tag predictions refused: %s", exc)  # never the path: it holds the secret
        return JSONResponse({"detail": str(exc)}, status_code=status)

    async def resolve(payload: Any, tag: str, source: int | None) -> Any:
        pid = project_of(payload)
        if pid is None:
            raise _Rejected(422, "no project in the body (\"project\": \"<id>.<time>\"), as Label Studio sends",
                            "malformed")
        return await run_in_threadpool(resolve_tag, root, daemon.state, pid, tag, source)

    async def tag_setup(token: str, tag: str, request: Request, source: int | None = None) -> Any:
        check_secret(token)
        payload = await read_json(request)  # carries the project's access token: never logged or kept
        try:
            found = await resolve(payload, tag, source)
        except (TagNotFound, AmbiguousTag) as exc:
            return refused(exc, 404 if isinstance(exc, TagNotFound) else 409)
        return {"model_version": found.tag}

    async def tag_predict(token: str, tag: str, request: Request, source: int | None = None) -> Any:
        check_secret(token)
        payload = await read_json(request)
        tasks = payload.get("tasks") if isinstance(payload, dict) else None
        if not isinstance(tasks, list):
            raise _Rejected(422, "body must be a JSON object with a list of tasks, as Label Studio sends", "malformed")
        try:
            found = await resolve(payload, tag, source)
        except (TagNotFound, AmbiguousTag) as exc:
            return refused(exc, 404 if isinstance(exc, TagNotFound) else 409)
        results = await run_in_threadpool(tag_predictions, root, daemon.state, found, tasks)
        return {"results": results, "model_version": found.tag}

    def tag_health(token: str, tag: str, source: int | None = None) -> dict[str, Any]:
        check_secret(token)
        return daemon.health()

    def tag_versions(token: str, tag: str, source: int | None = None) -> dict[str, Any]:
        check_secret(token)
        return {"versions": [tag], "model_version": tag}

    async def tag_webhook(token: str, tag: str, request: Request, source: int | None = None) -> JSONResponse:
        check_secret(token)
        result: JSONResponse = await handle_event(request)
        return result

    for prefix in ("/ml/{token}/tag/{tag}", "/ml/{token}/source/{source}/tag/{tag}"):
        app.api_route(f"{prefix}/", methods=["GET"])(tag_health)
        app.api_route(f"{prefix}/health", methods=["GET"])(tag_health)
        app.post(f"{prefix}/setup")(tag_setup)
        app.post(f"{prefix}/predict")(tag_predict)
        app.get(f"{prefix}/versions")(tag_versions)
        app.post(f"{prefix}/webhook")(tag_webhook)


class HTTPServer:
    """uvicorn serving :func:`create_app` in a background thread of this process.

    Args:
        daemon: the daemon the endpoints read and schedule on.
        host: bind address (``server.host``; 127.0.0.1 by default).
        port: TCP port (``server.port``); 0 picks a free one.
    """

    def __init__(self, daemon: Daemon, host: str, port: int):
        self.host, self.port = host, port
        config = uvicorn.Config(create_app(daemon), host=host, port=port, log_config=None, access_log=False,
                                lifespan="off", ws="none", server_header=False, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    @property
    def url(self) -> str:
        """``http://<host>:<port>`` as bound."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; return once the socket listens.

        Raises:
            ServiceError: the server could not listen within ``timeout`` seconds (port taken?).
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"the HTTP server could not listen on {self.host}:{self.port} (see the log above); "
                                   "set server.port to a free port or stop what uses it")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def is_alive(self) -> bool:
        """Whether the server thread still runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open connections get ``timeout_graceful_shutdown`` seconds)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)


def serve(settings: Settings, *, stop_event: threading.Event | None = None,
          on_ready: Callable[[str], None] | None = None) -> bool:
    """Run the daemon and its HTTP server until SIGTERM/SIGINT (or ``stop_event``), then stop gracefully.

    Signal handlers are installed only when called from the main thread.

    Args:
        settings: the loaded settings.
        stop_event: set it to stop (tests); created if ``None``.
        on_ready: called with the server's base URL once it listens.

    Returns:
        ``True`` if every run finished within ``scheduler.shutdown_timeout_seconds``.

    Raises:
        ConfigError: bad settings (job store, cron, Label Studio URL or key).
        ServiceError: the HTTP server could not listen.
    """
    stop = stop_event or threading.Event()

    def handle(signum: int, frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon = Daemon(settings)
        http = HTTPServer(daemon, settings.server.host, settings.server.port)
        http.start()
        if daemon.url is None:  # where the other daemons forward webhooks: this host, the bound port
            daemon.url = http.url if http.host not in ("0.0.0.0", "", "::") \
                else f"http://{socket.getfqdn()}:{http.port}"
        try:
            daemon.start()
        except BaseException:
            http.stop()
            raise
        if settings.server.webhook_secret is None:
            log.warning("server.webhook_secret is not set: POST /webhook and the ML-backend webhook are off "
                        "(polls still run); set LS_SPACE_SYNC__SERVER__WEBHOOK_SECRET to turn them on")
        log.info("listening on %s", http.url)
        if on_ready:
            on_ready(http.url)
        try:
            while not stop.wait(1.0):
                if not http.is_alive():
                    log.error("the HTTP server stopped unexpectedly; stopping the daemon")
                    break
        finally:
            drained = daemon.stop()
            http.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return drained

