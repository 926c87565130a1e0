"""A fault-injecting HTTP proxy on loopback, between ls-space-sync and Label Studio (chaos tests).

:class:`FaultProxy` forwards every request to the upstream server (a threaded HTTP/1.1 server on
127.0.0.1 and one ``httpx.Client``) unless its schedule picks a fault for it. Each request is named
by its *endpoint* (:func:`endpoint_of`: ``"task list"``, ``"project"``, ``"import"``, ...) and its
index among the requests to that endpoint in the current *pass* (:meth:`FaultProxy.set_pass`), and
a :class:`RandomSchedule` draws its fault from ``random.Random(f"{seed}|{pass}|{endpoint}|{index}")``:
the same seed gives the same faults at the same requests, whatever order concurrent requests (the
sync's parallel project read, its one-page-ahead fetch) arrive in. :class:`Script` injects exactly
the faults a test names (``Script(("task list", 1, "body_null"))``: the second task listing request
answers ``null``).

Fault kinds (:data:`KINDS`), and when they strike:

| kind | phase | what the client sees |
|---|---|---|
| ``http_500``, ``http_502``, ``http_503`` | before or after forwarding | that status, a short JSON or HTML body |
| ``http_429`` | before forwarding only | 429 with ``Retry-After: 0`` (a 429 means "not done") |
| ``hang`` | before or after | nothing for ``hang_seconds`` (past the client's timeout), then the connection closes |
| ``close_mid_body`` | after | the real status and headers, half the body, then the connection closes |
| ``truncated_json`` | after | 200, a well-framed body that is the real JSON cut short |
| ``non_json`` | after | 200 ``application/json`` whose bytes are not UTF-8 nor JSON |
| ``body_null``, ``body_list``, ``body_empty_dict`` | after | 200 with ``null``, ``[]``, ``{}`` |
| ``body_no_key`` | after | 200, the real answer less the key the client reads (``tasks``, ``id``, ``task_ids``) |

"After forwarding" means the server did the request (an import created its tasks) and only the
answer was lost or mangled, as behind a failing gateway. Every request and fault is recorded
(:attr:`FaultProxy.events`). Bounded: a hang waits at most ``hang_seconds`` and ends at once when
the proxy stops.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

STATUS_KINDS = ("http_500", "http_502", "http_503", "http_429")
SHAPE_KINDS = ("body_null", "body_list", "body_empty_dict", "body_no_key")
BODY_KINDS = ("close_mid_body", "truncated_json", "non_json") + SHAPE_KINDS
KINDS = STATUS_KINDS + ("hang",) + BODY_KINDS

# Bytes that are neither UTF-8 nor JSON: a PNG signature and an HTML error page in Latin-1.
NON_JSON = b"\x89PNG\r\n\x1a\n\xff\xfe\x00<html>Passerelle d\xe9faillante</html>\xc3("

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", "content-encoding", "host", "accept-encoding"}

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/api/projects/?"), "project list"),
    ("POST", re.compile(r"/api/projects/?"), "project create"),
    ("GET", re.compile(r"/api/projects/\d+/?"), "project"),
    ("POST", re.compile(r"/api/projects/\d+/import/?"), "import"),
    ("GET", re.compile(r"/api/tasks/\d+/?"), "task"),
    ("PATCH", re.compile(r"/api/tasks/\d+/?"), "task patch"),
    ("POST", re.compile(r"/api/tasks/\d+/annotations/?"), "annotation create"),
    ("PATCH", re.compile(r"/api/annotations/\d+/?"), "annotation patch"),
    ("DELETE", re.compile(r"/api/annotations/\d+/?"), "annotation delete"),
    ("POST", re.compile(r"/api/predictions/?"), "prediction create"),
    ("PATCH", re.compile(r"/api/predictions/\d+/?"), "prediction patch"),
    ("DELETE", re.compile(r"/api/predictions/\d+/?"), "prediction delete"),
    ("POST", re.compile(r"/api/dm/actions/?"), "delete tasks"),
    ("GET", re.compile(r"/api/users/?"), "users"),
    ("GET", re.compile(r"/api/webhooks/?"), "webhook list"),
    ("POST", re.compile(r"/api/webhooks/?"), "webhook create"),
    ("PATCH", re.compile(r"/api/webhooks/\d+/?"), "webhook patch"),
    ("DELETE", re.compile(r"/api/webhooks/\d+/?"), "webhook delete"),
]

# The key a client reads from each endpoint's JSON answer (``body_no_key`` drops it).
READ_KEY = {"task list": "tasks", "task stamps": "tasks", "tasks by id": "tasks", "task origins": "tasks",
            "project": "id", "project list": "results", "project create": "id", "import": "task_ids",
            "annotation create": "id", "prediction create": "id", "task": "id", "users": "results"}

READS = ("project list", "project", "task list", "task stamps", "tasks by id", "task origins", "task", "users")


def endpoint_of(method: str, target: str) -> str:
    """Name the Label Studio endpoint of a request line (``GET /api/tasks/?...`` -> ``"task list"``).

    The task listing is split by what the query asks: ``"task stamps"`` (a full scan's
    ``fields=task_only`` listing of stamp keys), ``"task origins"`` (a push's scan of target
    meta), ``"tasks by id"`` (a Data Manager selection of ids), else ``"task list"``.
    """
    parts = urlsplit(target)
    path = parts.path
    if method == "GET" and re.fullmatch(r"/api/tasks/?", path):
        query = parse_qs(parts.query)
        include = ",".join(query.get("include", []))
        fields = ",".join(query.get("fields", []))
        q = ",".join(query.get("query", []))
        if "selectedItems" in q:
            return "tasks by id"
        if fields == "task_only" and "meta" in include.split(","):
            return "task origins"
        if fields == "task_only":
            return "task stamps"
        return "task list"
    for m, pattern, name in _ROUTES:
        if m == method and pattern.fullmatch(path):
            return name
    return f"{method} {path}"


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind and whether it struck before or after the server saw the request."""

    kind: str
    phase: str  # "pre" (not forwarded) or "post" (forwarded, the answer replaced)

    def __str__(self) -> str:
        return f"{self.kind} ({'not forwarded' if self.phase == 'pre' else 'after the server did it'})"


def allowed_phases(kind: str) -> tuple[str, ...]:
    """Where a fault kind may strike: a 429 only before (it means "not done"); body faults only after."""
    if kind == "http_429":
        return ("pre",)
    if kind in BODY_KINDS:
        return ("post",)
    return ("pre", "post")


@dataclass
class Event:
    """One request through the proxy."""

    seq: int
    label: str  # the pass it belongs to
    method: str
    target: str
    endpoint: str
    index: int  # its index among this pass's requests to this endpoint
    fault: Fault | None
    started: float
    status: int | None = None  # what the client was sent (None: nothing, the connection closed)
    upstream_status: int | None = None
    finished: float | None = None
    body: bytes = b""  # the request's body (its first 4 kB)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "pass": self.label, "method": self.method, "target": self.target,
                "endpoint": self.endpoint, "index": self.index, "fault": str(self.fault) if self.fault else None,
                "status": self.status, "upstream_status": self.upstream_status,
                "body": self.body.decode("utf-8", "replace")}

    def describe(self) -> str:
        path = urlsplit(self.target).path
        what = f"fault {self.fault}" if self.fault else f"answered {self.status}"
        return f"request #{self.seq} {self.method} {path} ({self.endpoint} #{self.index} of {self.label!r}): {what}"


class Schedule:
    """Decides the fault (or ``None``) for each request; see :class:`RandomSchedule`, :class:`Script`."""

    def decide(self, label: str, endpoint: str, index: int, method: str) -> Fault | None:
        raise NotImplementedError


class NoFaults(Schedule):
    def decide(self, label: str, endpoint: str, index: int, method: str) -> Fault | None:
        return None


class RandomSchedule(Schedule):
    """Seeded faults: each request gets one with probability ``rate``, of a kind drawn by ``weights``.

    A fault repeats for the next ``burst - 1`` requests to the same endpoint in the pass (its
    retries, usually), ``burst`` drawn from ``bursts`` (``{length: weight}``): so some faults outlast
    the client's retries and some do not.

    Args:
        seed: the seed; decisions depend only on (seed, pass label, endpoint, index).
        rate: probability that a request starts a fault.
        weights: ``{kind: weight}``; kinds not allowed for a request are skipped.
        endpoints: only these endpoints get faults (default: every one).
        cover: the first request to each endpoint always gets a fault (burst 1), so every
            endpoint the passes use is hit at least once, however rarely it is called.
    """

    def __init__(self, seed: int | str, rate: float, weights: dict[str, float] | None = None,
                 bursts: dict[int, float] | None = None, endpoints: Iterable[str] | None = None,
                 cover: bool = False):
        self.seed, self.rate, self.cover = seed, rate, cover
        self._covered: set[str] = set()
        self.weights = weights or {k: 1.0 for k in KINDS}
        self.bursts = bursts or {1: 0.6, 2: 0.3, 3: 0.1}
        self.endpoints = set(endpoints) if endpoints is not None else None
        self._decided: dict[tuple[str, str, int], Fault | None] = {}
        self._lock = threading.Lock()

    def _draw(self, label: str, endpoint: str, index: int) -> tuple[Fault | None, int]:
        rng = random.Random(f"{self.seed}|{label}|{endpoint}|{index}")
        first = self.cover and endpoint not in self._covered
        self._covered.add(endpoint)
        if rng.random() >= self.rate and not first:
            return None, 0
        kinds = sorted(self.weights)
        kind = rng.choices(kinds, [self.weights[k] for k in kinds])[0]
        phase = rng.choice(allowed_phases(kind))
        lengths = sorted(self.bursts)
        burst = 1 if first else rng.choices(lengths, [self.bursts[b] for b in lengths])[0]
        return Fault(kind, phase), burst

    def decide(self, label: str, endpoint: str, index: int, method: str) -> Fault | None:
        if self.endpoints is not None and endpoint not in self.endpoints:
            return None
        with self._lock:
            key = (label, endpoint, index)
            if key in self._decided:
                return self._decided[key]
            fault, burst = self._draw(label, endpoint, index)
            if fault is not None:
                for i in range(index, index + burst):
                    self._decided.setdefault((label, endpoint, i), fault)
            return self._decided.setdefault(key, fault)


class Script(Schedule):
    """Exactly these faults: ``Script((endpoint, index, kind[, phase]), ...)``; ``index`` counts from 0
    within the pass; ``"*"`` as index means every request to the endpoint."""

    def __init__(self, *rules: Sequence[Any]):
        self.rules = [tuple(r) for r in rules]

    def decide(self, label: str, endpoint: str, index: int, method: str) -> Fault | None:
        for rule in self.rules:
            ep, idx, kind = rule[0], rule[1], rule[2]
            phase = rule[3] if len(rule) > 3 else allowed_phases(kind)[-1]
            if ep in ("*", endpoint) and (idx == "*" or idx == index):
                return Fault(kind, phase)
        return None


@dataclass
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _wrong_body(kind: str, endpoint: str, upstream: _Answer | None) -> bytes:
    if kind == "body_null":
        return b"null"
    if kind == "body_list":
        return b"[]"
    if kind == "body_empty_dict":
        return b"{}"
    # body_no_key: the real answer less the key the client reads
    try:
        real = json.loads(upstream.body) if upstream is not None and upstream.body else None
    except ValueError:
        real = None
    key = READ_KEY.get(endpoint, "id")
    if isinstance(real, dict):
        real.pop(key, None)
        return json.dumps(real or {"detail": "ok"}).encode()
    if isinstance(real, list):  # a bare list (users): a dict that is not the page it should be
        return json.dumps({"count": len(real)}).encode()
    return json.dumps({"detail": "ok"}).encode()


class FaultProxy:
    """The proxy. Use as a context manager; ``.url`` is its base URL (``http://127.0.0.1:<port>``).

    Args:
        upstream: the Label Studio base URL.
        schedule: who decides the faults (default none); change it any time with :attr:`schedule`.
        hang_seconds: how long a ``hang`` holds the request (make it longer than the client's timeout).
        delays: ``{endpoint: seconds}`` added before forwarding such requests (slow server); and
            :attr:`holds` ``{endpoint: threading.Event}`` holds such requests until the event is set.
        echo_token: put the request's ``Authorization`` header in the body of injected 5xx answers
            (a gateway that echoes the request: tests that secrets are masked).
    """

    def __init__(self, upstream: str, schedule: Schedule | None = None, *, hang_seconds: float = 3.0,
                 delays: dict[str, float] | None = None, echo_token: bool = False):
        self.upstream = upstream.rstrip("/")
        self.schedule: Schedule = schedule or NoFaults()
        self.hang_seconds = hang_seconds
        self.delays = dict(delays or {})
        self.echo_token = echo_token
        self.blocked = False  # answer every request 503 without forwarding (a maintenance window)
        # {endpoint: event}: such requests wait (at most 120 s) until the event is set, then go on
        self.holds: dict[str, threading.Event] = {}
        self.events: list[Event] = []
        self.label = self.key = "-"
        self._counts: dict[tuple[str, str], int] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._client = httpx.Client(base_url=self.upstream, timeout=120, trust_env=False)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away (killed, timed out): nothing to report

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for gate in self.holds.values():
            gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._client.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what happened ----------------------------------------------------------------------

    def set_pass(self, label: str, key: str | None = None) -> None:
        """Name the pass the next requests belong to (records use ``label``; fault decisions use
        ``key``, default ``label``: keep it free of ids that differ between runs)."""
        with self._cond:
            self.label = label
            self.key = label if key is None else key

    def faults(self, label: str | None = None) -> list[Event]:
        """The requests that got a fault (of one pass, or all)."""
        with self._cond:
            return [e for e in self.events if e.fault and (label is None or e.label == label)]

    def requests(self, label: str | None = None) -> list[Event]:
        with self._cond:
            return [e for e in self.events if label is None or e.label == label]

    def fault_counts(self) -> dict[str, int]:
        """``{kind: how many injected}`` over the proxy's life."""
        out: dict[str, int] = {}
        for e in self.faults():
            out[e.fault.kind] = out.get(e.fault.kind, 0) + 1  # type: ignore[union-attr]
        return dict(sorted(out.items()))

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float) -> bool:
        """Wait until ``predicate(events)`` holds (checked on every request start and finish)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def describe(self, label: str) -> str:
        """The faults of a pass, one per line, for assertion messages."""
        faults = self.faults(label)
        if not faults:
            return "  (no fault injected in this pass)"
        return "\n".join("  " + e.describe() for e in faults)

    # --- the request path -----------------------------------------------------------------

    def dump(self, path: Any) -> None:
        """Write every request (pass, endpoint, fault, status, body) as JSON lines, for a replay."""
        with open(path, "w") as f:
            f.writelines(json.dumps(e.as_dict()) + "\n" for e in self.requests())

    def _record(self, method: str, target: str, body: bytes) -> Event:
        endpoint = endpoint_of(method, target)
        with self._cond:
            label = self.label
            index = self._counts.get((label, endpoint), 0)
            self._counts[(label, endpoint)] = index + 1
            fault = None if self.blocked else self.schedule.decide(self.key, endpoint, index, method)
            if self.blocked:
                fault = Fault("blocked_503", "pre")
            event = Event(len(self.events) + 1, label, method, target, endpoint, index, fault, time.monotonic(),
                          body=body[:4096])
            self.events.append(event)
            self._cond.notify_all()
        return event

    def _done(self, event: Event, status: int | None) -> None:
        with self._cond:
            event.status, event.finished = status, time.monotonic()
            self._cond.notify_all()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        event = self._record(h.command, h.path, body)
        fault = event.fault
        status: int | None = None
        try:
            if fault is not None and fault.phase == "pre":
                status = self._inject(h, event, fault, None)
                return
            delay = self.delays.get(event.endpoint)
            if delay:
                self._stop.wait(delay)
            gate = self.holds.get(event.endpoint)
            if gate is not None:
                gate.wait(120)
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Accept-Encoding"] = "identity"
            resp = self._client.request(h.command, h.path, headers=headers, content=body)
            answer = _Answer(resp.status_code, [(k, v) for k, v in resp.headers.items()
                                                if k.lower() not in HOP_BY_HOP], resp.content)
            event.upstream_status = resp.status_code
            if fault is not None:
                status = self._inject(h, event, fault, answer)
            else:
                self._send(h, answer)
                status = answer.status
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        except httpx.HTTPError as exc:  # upstream down: what a gateway says
            self._send(h, _Answer(502, [("Content-Type", "text/plain")], f"upstream: {exc}".encode()))
            status = 502
        finally:
            self._done(event, status)

    def _send(self, h: BaseHTTPRequestHandler, answer: _Answer, *, body_limit: int | None = None) -> None:
        h.send_response_only(answer.status)
        for k, v in answer.headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(answer.body)))
        h.end_headers()
        h.wfile.write(answer.body if body_limit is None else answer.body[:body_limit])
        h.wfile.flush()

    def _inject(self, h: BaseHTTPRequestHandler, event: Event, fault: Fault, upstream: _Answer | None) -> int | None:
        kind = fault.kind
        date = [(k, v) for k, v in (upstream.headers if upstream else []) if k.lower() == "date"]
        if kind == "hang":
            self._stop.wait(self.hang_seconds)
            h.close_connection = True
            return None
        if kind == "close_mid_body":
            answer = upstream or _Answer(200, [], b"{}")
            body = answer.body if len(answer.body) >= 2 else b'{"tasks": [], "total": 0}'
            answer = _Answer(answer.status, answer.headers, body)
            self._send(h, answer, body_limit=len(body) // 2)
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return None
        if kind.startswith("http_") or kind == "blocked_503":
            code = 503 if kind == "blocked_503" else int(kind[5:])
            token = h.headers.get("Authorization", "") if self.echo_token else ""
            if code == 502:
                text = f"<html><body><h1>502 Bad Gateway</h1>{token}</body></html>".encode()
                ctype = "text/html"
            else:
                text = json.dumps({"detail": f"injected {code}", "request": token} if token
                                  else {"detail": f"injected {code}"}).encode()
                ctype = "application/json"
            extra = [("Retry-After", "0")] if code in (429, 503) else []
            self._send(h, _Answer(code, [("Content-Type", ctype), *extra, *date], text))
            return code
        if kind == "truncated_json":
            real = upstream.body if upstream is not None and len(upstream.body) >= 2 else b'{"tasks": [{"id": 1'
            # where it is cut depends on the request's name, not on arrival order (reproducible)
            name = f"{event.label}|{event.endpoint}|{event.index}".encode()
            cut = 1 + int(hashlib.sha256(name).digest()[0] / 256 * (len(real) - 1))
            self._send(h, _Answer(200, [("Content-Type", "application/json"), *date], real[:cut]))
            return 200
        if kind == "non_json":
            self._send(h, _Answer(200, [("Content-Type", "application/json"), *date], NON_JSON))
            return 200
        if kind in SHAPE_KINDS:
            body = _wrong_body(kind, event.endpoint, upstream)
            self._send(h, _Answer(200, [("Content-Type", "application/json"), *date], body))
            return 200
        raise ValueError(f"unknown fault kind {kind}")
