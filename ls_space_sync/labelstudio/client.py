"""The only module that talks to Label Studio: SDK calls, paging, retries, error mapping.

Built on label-studio-sdk 2.x (httpx). Task listings are read as the server's raw JSON through
the SDK's own HTTP client rather than as SDK models: the models add default keys the server never
sent and cost most of a listing's time (label-studio-facts.md). Everything else goes through the
SDK's typed methods.

Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
jitter (``retries`` times, waits capped at ``max_wait`` seconds); 401/403 raise
:class:`AuthError` and 404 :class:`NotFound` at once. Messages never contain the API key.

Every answer is checked against the shape its endpoint documents before anyone reads it: a body
that is not JSON (truncated, not UTF-8) or not of that shape (``null`` or ``[]`` where a page of
tasks belongs) is an error of the server, retried like a 5xx and then raised as
:class:`MalformedResponse`; it is never read as "no more tasks".
"""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import httpx
import pydantic
from label_studio_sdk.core.api_error import ApiError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from ls_space_sync.errors import LsSpaceSyncError, Retriable
from ls_space_sync.logs import register_secret
from ls_space_sync.settings import Settings

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)
T = TypeVar("T")

# The task keys a sync asks for by default (``include=``): the task's own fields, annotations and
# predictions. Left out are the Data Manager's derived columns (annotations_results,
# predictions_results, annotators, annotations_ids, predictions_model_versions, predictions_score,
# avg_lead_time, completed_at, draft_exists, comment_authors, last_comment_updated_at) and drafts
# and file references, which cost the server more than the rest together (measured on 1.23.2,
# 5,000 tasks: 48 s for these keys, 115 s for fields=all) and, but for drafts, follow from the
# stored annotations. ``sync.task_fields: all`` asks for everything.
CORE_TASK_FIELDS = (
    "id,project,inner_id,data,meta,created_at,updated_at,updated_by,is_labeled,overlap,total_annotations,"
    "cancelled_annotations,total_predictions,comment_count,unresolved_comment_count,annotations,predictions,"
    # ``include`` also trims the objects inside ``annotations`` (1.23.2 keeps only id, created_at,
    # updated_at, project, updated_by of them): name their keys too, so they come back whole.
    "result,completed_by,was_cancelled,ground_truth,lead_time,draft_created_at,import_id,last_action,"
    "bulk_created,parent_prediction,parent_annotation,last_created_by,task,model_version,score"
)

# Keys a full scan asks for: enough for a stamp (see changes.py), nothing more.
STAMP_FIELDS = "id,created_at,updated_at,total_annotations,cancelled_annotations,total_predictions"


class LabelStudioError(LsSpaceSyncError):
    """A Label Studio request failed; the message says what to do about it."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AuthError(LabelStudioError):
    """The server rejected the API key (401) or its user may not do this (403)."""


class NotFound(LabelStudioError):
    """The project or task does not exist on the server (404)."""


class ServerUnavailable(LabelStudioError, Retriable):
    """The server could not be reached, timed out, or kept answering 429/5xx after all retries."""


class MalformedResponse(LabelStudioError, Retriable):
    """The server answered 2xx with a body that is not JSON or not the shape its endpoint documents."""


class _BadBody(Exception):
    """Inside a retried call: the answer's body is unreadable or of the wrong shape (``reason``)."""

    def __init__(self, reason: str, method: str, path: str):
        super().__init__(reason)
        self.reason, self.method, self.path = reason, method, path


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (httpx.TransportError, _BadBody, pydantic.ValidationError)):
        return True  # the SDK's typed calls raise ValidationError on a body of the wrong shape
    if isinstance(exc, ApiError):
        # The SDK raises ApiError with the 2xx status for a body that is not JSON.
        return exc.status_code == 429 or (exc.status_code or 0) >= 500 or (exc.status_code or 0) < 400
    return False


# --- the shapes of answers (Label Studio 1.23.2; checked before anything reads them) ----------

def _kind(body: Any) -> str:
    return "null" if body is None else type(body).__name__


def task_page_problem(body: Any) -> str | None:
    """Why ``body`` is not a page of ``GET /api/tasks`` (``{"tasks": [{...}, ...], ...}``), or ``None``."""
    if not isinstance(body, dict):
        return f"expected an object with a 'tasks' list, got {_kind(body)}"
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        return f"expected a 'tasks' list, got {'no tasks key' if 'tasks' not in body else _kind(tasks)}"
    if any(not isinstance(t, dict) for t in tasks):
        return "expected every item of 'tasks' to be an object"
    return None


def project_problem(body: Any, project_id: int) -> str | None:
    """Why ``body`` is not ``GET /api/projects/{id}`` of ``project_id``, or ``None``."""
    if not isinstance(body, dict):
        return f"expected a project object, got {_kind(body)}"
    if body.get("id") != project_id:
        return f"expected the project with id {project_id}, got id {str(body.get('id'))[:40]}"
    if type(body.get("task_number")) is not int:
        return "expected an integer task_number"
    if not isinstance(body.get("label_config"), str):
        return "expected a label_config string"
    return None


def _list_problem(key: str) -> Callable[[Any], str | None]:
    """A check for list endpoints answered as a list or as ``{key: [...]}`` (paginated)."""

    def problem(body: Any) -> str | None:
        items = body.get(key) if isinstance(body, dict) else body
        if not isinstance(items, list) or any(not isinstance(i, dict) for i in items):
            return f"expected a list of objects (or {{{key!r}: [...]}}), got {_kind(body)}"
        return None

    return problem


def _object_with_id(body: Any) -> str | None:
    if not isinstance(body, dict) or type(body.get("id")) is not int:
        return f"expected an object with an integer id, got {_kind(body)}"
    return None


def _body_text(body: Any, limit: int = 300) -> str:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text[:limit]


@dataclass(frozen=True)
class ProjectInfo:
    """What a sync needs to know of a project (``GET /api/projects/{id}``)."""

    id: int
    title: str
    task_number: int
    label_config: str
    server_time: datetime  # the response's Date header, UTC (1 s resolution)


class RequestCount:
    """The requests made inside one :meth:`LabelStudioClient.counting` block: ``n``.

    Counted in the block's context (a :mod:`contextvars` context), so threads that run in a copy of
    it (the read-ahead of pages, the project read, media downloads) count for it, and the runs of
    other projects sharing the client (the daemon's worker threads) do not.
    """

    def __init__(self) -> None:
        self.n = 0


_counters: contextvars.ContextVar[tuple[RequestCount, ...]] = contextvars.ContextVar("ls_space_sync_request_counts",
                                                                                    default=())


class LabelStudioClient:
    """A Label Studio server, through the official SDK.

    Args:
        url: the server's base URL (``LABEL_STUDIO_URL``).
        api_key: a legacy token or personal access token (``LABEL_STUDIO_API_KEY``).
        timeout: seconds per request.
        retries: retries of a transient failure (so ``retries + 1`` attempts).
        max_wait: cap, in seconds, of one backoff wait.
        httpx_client: transport to use (tests); the default counts requests in :attr:`requests`.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        max_wait: float = 30.0,
        httpx_client: httpx.Client | None = None,
    ):
        self.url = url.rstrip("/")
        self.requests = 0
        self._count_lock = threading.Lock()
        self._retries = retries
        self._max_wait = max_wait
        self._api_key = api_key
        register_secret(api_key)  # never in a message, even where the server's answer echoes it
        self._timeout = timeout
        self._http = httpx_client or httpx.Client(timeout=timeout, follow_redirects=True)
        self._http.event_hooks.setdefault("request", []).append(self._count)
        self._sdk: LabelStudio | None = None
        # A legacy token is one header on a plain httpx request, so the reads of a sync never load
        # the SDK (1.5-2 s of imports: it pulls pandas). A personal access token (a JWT refresh
        # token) goes through the SDK's own client, which exchanges it for access tokens
        # (POST /api/token/refresh/) and renews them when they expire.
        self._legacy_token = not _looks_like_jwt(api_key)

    @property
    def sdk(self) -> LabelStudio:
        """The official SDK client on the same connections (built on first use, for its typed calls)."""
        if self._sdk is None:
            from label_studio_sdk import LabelStudio

            # max_retries=0: one retry policy, ours, for SDK and raw calls alike.
            self._sdk = LabelStudio(base_url=self.url, api_key=self._api_key, timeout=self._timeout, max_retries=0,
                                    httpx_client=self._http)
        return self._sdk

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelStudioClient:
        """The client of ``settings.label_studio`` (URL, API key, timeout, retries); the key is
        registered with the log masking before any request is made.

        Raises:
            ConfigError: no URL or no API key configured.
        """
        url, key = settings.require_label_studio()
        register_secret(key)
        ls = settings.label_studio
        return cls(url, key, timeout=ls.timeout_seconds, retries=ls.retries, max_wait=ls.retry_max_wait_seconds)

    def _count(self, request: httpx.Request) -> None:
        with self._count_lock:
            self.requests += 1
            for counter in _counters.get():
                counter.n += 1

    @contextmanager
    def counting(self) -> Iterator[RequestCount]:
        """Count the requests made in this block (and in threads running a copy of its context).

        :attr:`requests` counts every request of the client since it was made; a run's own count,
        recorded in ``sync_runs.requests``, comes from this block, so runs of several projects at
        once on one client (the daemon) each count only their own.
        """
        counter = RequestCount()
        token = _counters.set((*_counters.get(), counter))
        try:
            yield counter
        finally:
            _counters.reset(token)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    # --- plumbing ----------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an SDK call with retries; map failures to :class:`LabelStudioError` subclasses.

        Args:
            what: the object asked for, for messages (``"project 3"``).
        """
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self._retries + 1),
            wait=wait_exponential_jitter(multiplier=min(0.5, self._max_wait), max=self._max_wait,
                                         jitter=min(1.0, self._max_wait)),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "Label Studio request for %s failed (%s); retry %d of %d",
                what, type(rs.outcome.exception()).__name__ if rs.outcome else "?", rs.attempt_number, self._retries,
            ),
        )
        try:
            return retrying(fn, *args, **kwargs)
        except ApiError as exc:
            raise self._map(exc, what) from None
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"cannot reach Label Studio at {self.url} for {what} after {self._retries + 1} attempts "
                f"({type(exc).__name__}); check that the server is running and label_studio.url is right"
            ) from None
        except _BadBody as exc:
            raise self._malformed(exc, what, f"after {self._retries + 1} attempts") from None
        except pydantic.ValidationError as exc:
            bad = _BadBody(f"{exc.error_count()} fields of the wrong shape", "", "")
            raise self._malformed(bad, what, f"after {self._retries + 1} attempts") from None

    def _malformed(self, exc: _BadBody, what: str, when: str) -> MalformedResponse:
        to = f" to {exc.method} /{exc.path.lstrip('/')}" if exc.method else ""
        return MalformedResponse(
            f"Label Studio at {self.url} sent a malformed answer{to} for {what} "
            f"{when} ({exc.reason}); nothing was written: check the server's log, or a proxy between it and "
            "this host, and run again"
        )

    def _map(self, exc: ApiError, what: str) -> LabelStudioError:
        status = exc.status_code
        if status is not None and status < 400:
            return MalformedResponse(
                f"Label Studio at {self.url} answered {what} (HTTP {status}) with a body that is not JSON; "
                "check the server's log, or a proxy between it and this host, and run again", status)
        if status == 401:
            return AuthError(
                f"Label Studio at {self.url} rejected the API key (401); set LABEL_STUDIO_API_KEY or "
                "label_studio.api_key to a valid token (Account & Settings; legacy tokens need "
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server)",
                status,
            )
        if status == 403:
            return AuthError(f"Label Studio at {self.url} does not allow this user to read {what} (403)", status)
        if status == 404:
            return NotFound(f"{what} does not exist on Label Studio at {self.url} (404); check the id", status)
        if status == 429 or (status or 0) >= 500:
            return ServerUnavailable(
                f"Label Studio at {self.url} kept failing for {what} (HTTP {status}) after "
                f"{self._retries + 1} attempts: {_body_text(exc.body)}",
                status,
            )
        return LabelStudioError(
            f"Label Studio refused the request for {what} (HTTP {status}): {_body_text(exc.body)}", status)

    def auth_headers(self) -> dict[str, str]:
        """The ``Authorization`` header this client sends: ``Token <key>`` for a legacy token, else
        the SDK's bearer access token (a personal access token exchanged at ``/api/token/refresh/``).
        For requests made outside the API calls (media files, uploads); never log it."""
        if self._legacy_token:
            return {"Authorization": f"Token {self._api_key}"}
        return {k: v for k, v in self.sdk._client_wrapper.get_headers().items() if k.lower() == "authorization"}

    def _send(self, path: str, *, method: str = "GET", params: dict[str, Any] | None = None, json_body: Any = None,
              content: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        """One request through the SDK's HTTP client (its auth, base URL); an HTTP error raises ApiError."""
        if self._legacy_token:
            resp = self._http.request(method, f"{self.url}/{path.lstrip('/')}", params=params, json=json_body,
                                      content=content,
                                      headers={"Authorization": f"Token {self._api_key}", **(headers or {})})
        else:
            resp = self.sdk._client_wrapper.httpx_client.request(
                path, method=method, params=params, json=json_body, content=content, headers=headers,
                request_options={"max_retries": 0})
        if resp.status_code >= 400:
            try:
                body: Any = resp.json()
            except ValueError:
                body = resp.text
            raise ApiError(status_code=resp.status_code, body=body)
        return resp

    def _raw(self, what: str, path: str, *, method: str = "GET", params: dict[str, Any] | None = None,
             json_body: Any = None) -> httpx.Response:
        return self.call(what, self._send, path, method=method, params=params, json_body=json_body)

    def _send_json(self, path: str, shape: Callable[[Any], str | None] | None, *, method: str = "GET",
                   params: dict[str, Any] | None = None, json_body: Any = None, content: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[Any, httpx.Response]:
        """One request whose body is decoded and checked here, inside the retry: a truncated or
        non-UTF-8 body, or one that ``shape`` finds wrong (it returns the reason), raises
        :class:`_BadBody`, which is retried like a 5xx."""
        resp = self._send(path, method=method, params=params, json_body=json_body, content=content, headers=headers)
        try:
            body = json.loads(resp.content)
        except (ValueError, UnicodeDecodeError) as exc:
            kind = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not valid JSON"
            raise _BadBody(f"{len(resp.content)} bytes, {kind}", method, path) from None
        problem = shape(body) if shape is not None else None
        if problem:
            raise _BadBody(problem, method, path)
        return body, resp

    def _json(self, what: str, path: str, shape: Callable[[Any], str | None] | None, *, method: str = "GET",
              params: dict[str, Any] | None = None, json_body: Any = None) -> tuple[Any, httpx.Response]:
        """A read (idempotent) request with retries whose JSON body has passed ``shape``."""
        return self.call(what, self._send_json, path, shape, method=method, params=params, json_body=json_body)

    # --- projects ----------------------------------------------------------------------------

    def project(self, project_id: int) -> ProjectInfo:
        """Read a project: title, task count, label config, and the server's clock.

        Raises:
            NotFound: no such project. AuthError: bad token. ServerUnavailable: server down.
            MalformedResponse: the answer was not a project object (after retries).
        """
        # include=: without it the server computes project statistics a sync never reads
        # (0.58 s vs 0.15 s at 20,000 tasks, bench/poll.py); the four keys come back the same.
        project_id = int(project_id)
        body, resp = self._json(f"project {project_id}", f"api/projects/{project_id}/",
                                lambda b: project_problem(b, project_id),
                                params={"include": "id,title,task_number,label_config"})
        try:
            server_time = parsedate_to_datetime(resp.headers["date"]).astimezone(timezone.utc)
        except (KeyError, TypeError, ValueError):
            server_time = datetime.now(timezone.utc)
        return ProjectInfo(
            id=int(body["id"]),
            title=body.get("title") or "",
            task_number=int(body.get("task_number") or 0),
            label_config=body.get("label_config") or "",
            server_time=server_time,
        )

    def project_ids(self) -> list[int]:
        """Ids of every project the token can see, ascending."""
        return sorted(int(p["id"]) for p in self.projects())

    def projects(self) -> list[dict[str, Any]]:
        """Every project the token can see, as the server's JSON objects (``id``, ``title``, ...)."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            try:
                body, _ = self._json("the project list", "api/projects/", _projects_problem,
                                     params={"page": page, "page_size": 100})
            except NotFound:
                if page == 1:
                    raise
                break  # a page past the end
            found += body["results"]
            if not body.get("next"):
                break
            page += 1
        return found

    # --- tasks -------------------------------------------------------------------------------

    def iter_task_pages(
        self,
        project_id: int,
        *,
        updated_after: datetime | None = None,
        ids: Sequence[int] | None = None,
        fields: str = "all",
        include: str | None = None,
        page_size: int = 500,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield a project's tasks as raw JSON objects, one list per page, in ascending id order.

        Paging is by key (``id > last id seen``, always page 1), not by page number: an OFFSET page
        shifts when a task enters the filter mid-scan and would skip a task (label-studio-facts.md).

        Args:
            updated_after: only tasks with ``updated_at`` strictly after this UTC time (the
                Data Manager filter ``filter:tasks:updated_at``, exact to the microsecond).
            ids: only these task ids (Data Manager ``selectedItems``, in chunks of ``page_size``).
            fields: ``"all"`` (annotations and predictions as full objects) or ``"task_only"``.
            include: comma-separated keys to return (``fields`` still applies).
            page_size: tasks per request.
        """
        if ids is not None:
            wanted = sorted(set(int(i) for i in ids))
            for start in range(0, len(wanted), page_size):
                chunk = wanted[start:start + page_size]
                selected = {"all": False, "included": chunk}  # Data Manager selection: exactly these ids
                yield from self._keyset(project_id, [], fields, include, page_size, selected)
            return
        items = []
        if updated_after is not None:
            value = updated_after.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            items.append({"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": value})
        yield from self._keyset(project_id, items, fields, include, page_size)

    def _keyset(self, project_id: int, items: list[dict[str, Any]], fields: str, include: str | None,
                page_size: int, selected: dict[str, Any] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of ``id > last id``; the next page is requested while the caller works on
        this one (one request in flight ahead, so the server and our staging overlap)."""

        def fetch(last_id: int | None) -> list[dict[str, Any]]:
            page_items = list(items)
            if last_id is not None:
                page_items.append({"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": last_id})
            query: dict[str, Any] = {"filters": {"conjunction": "and", "items": page_items}, "ordering": ["tasks:id"]}
            if selected is not None:
                query["selectedItems"] = selected
            params: dict[str, Any] = {"project": int(project_id), "page": 1, "page_size": page_size,
                                      "fields": fields, "query": json.dumps(query)}
            if include:
                params["include"] = include
            def page_problem(body: Any) -> str | None:
                problem = task_page_problem(body)
                if problem is None:
                    ids = [t.get("id") for t in body["tasks"]]
                    if any(type(i) is not int for i in ids):
                        return None  # a task without an integer id: MalformedTask, named by the caller
                    if len(ids) > page_size:
                        return f"{len(ids)} tasks on a page of {page_size}"
                    if ids != sorted(set(ids)) or (last_id is not None and ids and ids[0] <= last_id):
                        return "task ids not ascending past the last page's (the listing is ordered by id)"
                return problem

            try:
                body, _ = self._json(f"tasks of project {project_id}", "api/tasks/", page_problem, params=params)
            except NotFound:
                return []  # an empty result answers 404 on some versions
            tasks: list[dict[str, Any]] = body["tasks"]
            return tasks

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-page") as pool:
            ahead: Future[list[dict[str, Any]]] | None = pool.submit(contextvars.copy_context().run, fetch, None)
            while ahead is not None:
                tasks = ahead.result()
                ahead = None
                if not tasks:
                    return
                if len(tasks) == page_size and all(type(t.get("id")) is int for t in tasks):
                    ahead = pool.submit(contextvars.copy_context().run, fetch, max(t["id"] for t in tasks))
                try:
                    yield tasks
                except GeneratorExit:
                    if ahead is not None:
                        ahead.cancel()
                    raise

    def iter_stamp_pages(self, project_id: int, page_size: int = 5000) -> Iterator[list[dict[str, Any]]]:
        """Yield every task's stamp fields (:data:`STAMP_FIELDS`), a page at a time: the full scan."""
        yield from self.iter_task_pages(project_id, fields="task_only", include=STAMP_FIELDS, page_size=page_size)

    def task(self, task_id: int) -> dict[str, Any]:
        """One task as the server's raw JSON (``GET /api/tasks/{id}``), with annotations and predictions."""
        body, _ = self._json(f"task {task_id}", f"api/tasks/{int(task_id)}/", _object_with_id)
        return dict(body)

    # --- webhooks ----------------------------------------------------------------------------

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's webhooks as dicts (``id``, ``url``, ``headers``, ``project``, ...)."""
        hooks = self.call(f"the webhooks of project {project_id}", self.sdk.webhooks.list, project=str(int(project_id)))
        return [h.model_dump(exclude_unset=True) for h in hooks if h.project == int(project_id)]

    def create_webhook(self, project_id: int, url: str, headers: dict[str, str]) -> dict[str, Any]:
        """Add a webhook to a project that sends every event with its payload and ``headers``."""
        hook = self.call(f"a webhook of project {project_id}", self.sdk.webhooks.create, url=url, project=int(project_id),
                         send_payload=True, send_for_all_actions=True, headers=headers, is_active=True)
        return hook.model_dump(exclude_unset=True)

    def update_webhook(self, webhook_id: int, url: str, headers: dict[str, str]) -> None:
        """Set a webhook's URL and headers, and make it send every event with its payload."""
        self.call(f"webhook {webhook_id}", self.sdk.webhooks.update, id=int(webhook_id), url=url, headers=headers,
                  send_payload=True, send_for_all_actions=True, is_active=True)

    def delete_webhook(self, webhook_id: int) -> None:
        """Delete a webhook."""
        self.call(f"webhook {webhook_id}", self.sdk.webhooks.delete, id=int(webhook_id))

    # --- writes: push, restore, mirror (push.py) --------------------------------------------
    # Creating requests (import, new annotations, predictions, projects) are not idempotent: a
    # retry after the server got the request could create a duplicate. They go through
    # :meth:`_once`, which retries only what the server cannot have acted on.

    def _once(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a non-idempotent SDK call; retry only refused connections and 429, never a timeout or 5xx."""
        retrying = Retrying(
            retry=retry_if_exception(_not_sent),
            stop=stop_after_attempt(self._retries + 1),
            wait=wait_exponential_jitter(multiplier=min(0.5, self._max_wait), max=self._max_wait,
                                         jitter=min(1.0, self._max_wait)),
            reraise=True,
        )
        try:
            return retrying(fn, *args, **kwargs)
        except _BadBody as exc:
            raise self._malformed(exc, what, "(it may or may not have applied it)") from None
        except ApiError as exc:
            if exc.status_code == 400:
                raise LabelStudioError(f"Label Studio refused {what} (HTTP 400): {_refusal(exc.body)}", 400) from None
            raise self._map(exc, what) from None
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"Label Studio at {self.url} did not answer {what} ({type(exc).__name__}); the server may "
                "or may not have applied it"
            ) from None

    def create_project(self, title: str, label_config: str) -> int:
        """Create a project with ``label_config``; return its id."""
        project = self._once(f"creating project {title!r}", self.sdk.projects.create, title=title,
                             label_config=label_config)
        return int(project.id)  # type: ignore[arg-type]  # the SDK's model types id Optional; a created one has it

    def templates(self) -> dict[str, str]:
        """The server's annotation templates as ``{title: label_config}`` (``GET /api/templates/``:
        the ``annotation_templates/*/config.yml`` files of the installed Label Studio, 69 in 1.23.2)."""
        body, _ = self._json("the template gallery", "api/templates/", _templates_problem)
        return {str(t["title"]): str(t["config"]) for t in body["templates"]}

    def user_ids(self) -> set[int]:
        """Ids of the users the token's organization has (who may be ``completed_by`` of an annotation)."""
        body, _ = self._json("the user list", "api/users/", _users_problem)
        users = body.get("results", []) if isinstance(body, dict) else body
        return {int(u["id"]) for u in users}

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Bulk-import tasks (with ``annotations`` and ``predictions``) into a project, synchronously.

        Returns:
            The new task ids, in the order of ``tasks`` (verified on Label Studio 1.23.2).

        Raises:
            LabelStudioError: the server refused the import; the message carries its validation errors.
            ServerUnavailable: no answer; the tasks may or may not have been created.
        """
        # The SDK's import_tasks runs its jsonable_encoder over every task (~0.25 ms a task, 5-10%
        # of the server's own import time); the body is plain JSON already, so it goes encoded.
        body = json.dumps(tasks, ensure_ascii=False).encode()

        def once() -> Any:
            return self._send_json(f"api/projects/{int(project_id)}/import", _import_problem, method="POST",
                                   params={"return_task_ids": "true"}, content=body,
                                   headers={"Content-Type": "application/json"})[0]

        result = self._once(f"the import of {len(tasks)} tasks into project {project_id}", once)
        ids = list(result.get("task_ids") or [])
        if len(ids) != len(tasks):
            raise LabelStudioError(f"project {project_id}: the import returned {len(ids)} task ids for {len(tasks)} tasks")
        return ids

    def upload_file(self, project_id: int, name: str, data: bytes, mime: str) -> str:
        """Store a file on the server without creating a task; return its ``/data/upload/...`` URL.

        Label Studio 1.23.2 (``data_import/api.py``): ``POST /api/projects/{id}/import`` with a
        multipart file and ``commit_to_project=false`` stores the file (a ``FileUpload`` of the
        project, served at ``/data/upload/<project>/<8 hex>-<name>``) and creates no task; its
        answer names the upload's id, read back with ``GET /api/import/file-upload/{id}``.
        Retried like a read: a retry after the server stored the file leaves one more unused file,
        never a task.

        Raises:
            LabelStudioError: the server refused the file (e.g. an extension it does not accept).
        """
        def once() -> str:
            headers = self.auth_headers()
            resp = self._http.post(f"{self.url}/api/projects/{int(project_id)}/import",
                                   params={"commit_to_project": "false"}, files={"file": (name, data, mime)},
                                   headers=headers)
            if resp.status_code >= 400:
                raise ApiError(status_code=resp.status_code, body=resp.text[:300])
            try:
                upload_ids = json.loads(resp.content).get("file_upload_ids") or []
            except (ValueError, AttributeError):
                raise _BadBody(f"{len(resp.content)} bytes, not an import answer", "POST", "api/projects/import") from None
            if len(upload_ids) != 1:
                raise _BadBody(f"{len(upload_ids)} file_upload_ids for one file", "POST", "api/projects/import")
            body, _ = self._send_json(f"api/import/file-upload/{int(upload_ids[0])}", _object_with_id)
            if not isinstance(body.get("file"), str):
                raise _BadBody("no file name in the file upload", "GET", "api/import/file-upload")
            return "/data/" + body["file"].lstrip("/")

        return self.call(f"the upload of {name} into project {project_id}", once)

    def update_task(self, task_id: int, body: dict[str, Any]) -> None:
        """PATCH a task (``data``, ``meta``)."""
        self._raw(f"task {task_id}", f"api/tasks/{int(task_id)}/", method="PATCH", json_body=body)

    def create_annotation(self, task_id: int, body: dict[str, Any]) -> int:
        """Add an annotation (``result``, ``was_cancelled``, ``ground_truth``, ``lead_time``, ``completed_by``)."""
        resp = self._once(f"a new annotation of task {task_id}", self._raw_once,
                          f"api/tasks/{int(task_id)}/annotations/", body)
        return int(resp["id"])

    def _patch(self, kind: str, object_id: int, body: dict[str, Any]) -> None:
        self._raw(f"{kind} {object_id}", f"api/{kind}s/{int(object_id)}/", method="PATCH", json_body=body)

    def _delete(self, kind: str, object_id: int) -> None:
        try:
            self._raw(f"{kind} {object_id}", f"api/{kind}s/{int(object_id)}/", method="DELETE")
        except NotFound:
            pass  # already gone: the outcome asked for

    def update_annotation(self, annotation_id: int, body: dict[str, Any]) -> None:
        """PATCH an annotation."""
        self._patch("annotation", annotation_id, body)

    def delete_annotation(self, annotation_id: int) -> None:
        """Delete an annotation; one that is already gone counts as deleted."""
        self._delete("annotation", annotation_id)

    def create_prediction(self, task_id: int, body: dict[str, Any]) -> int:
        """Add a prediction (``result``, ``score``, ``model_version``) to a task."""
        resp = self._once(f"a new prediction of task {task_id}", self._raw_once, "api/predictions/",
                          {**body, "task": int(task_id)})
        return int(resp["id"])

    def update_prediction(self, prediction_id: int, body: dict[str, Any]) -> None:
        """PATCH a prediction."""
        self._patch("prediction", prediction_id, body)

    def delete_prediction(self, prediction_id: int) -> None:
        """Delete a prediction; one that is already gone counts as deleted."""
        self._delete("prediction", prediction_id)

    def delete_tasks(self, project_id: int, task_ids: Sequence[int]) -> None:
        """Delete tasks of a project in one request (the Data Manager's ``delete_tasks`` action)."""
        if task_ids:
            self.call(f"deleting {len(task_ids)} tasks of project {project_id}", self.sdk.actions.create,
                      id="delete_tasks", project=int(project_id),
                      selected_items={"all": False, "included": [int(i) for i in task_ids]})

    def _raw_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        created, _ = self._send_json(path, _object_with_id, method="POST", json_body=body)
        return dict(created)


def _projects_problem(body: Any) -> str | None:
    """``GET /api/projects/`` on 1.23.2 is DRF-paginated: ``{"count", "next", "results": [{...}]}``;
    a bare list (even ``[]``) is not that answer, so it cannot be read as "no projects"."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or any(not isinstance(p, dict) or type(p.get("id")) is not int for p in results):
        return f"expected the paginated project list {{'results': [{{'id': ...}}, ...]}}, got {_kind(body)}"
    return None


def _users_problem(body: Any) -> str | None:
    """``GET /api/users/``: the organization's users, never empty (the token's own user is one)."""
    problem = _list_problem("results")(body)
    if problem is None and not (body.get("results") if isinstance(body, dict) else body):
        return "expected at least the token's own user, got an empty list"
    return problem


def _templates_problem(body: Any) -> str | None:
    templates = body.get("templates") if isinstance(body, dict) else None
    if not isinstance(templates, list) or any(not isinstance(t, dict) or "title" not in t or "config" not in t
                                              for t in templates):
        return f"expected {{'templates': [{{'title', 'config'}}, ...]}}, got {_kind(body)}"
    return None


def _import_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("task_ids"), list):
        return f"expected an object with a 'task_ids' list, got {_kind(body)}"
    return None


def _looks_like_jwt(key: str) -> bool:
    """Whether an API key is a JWT (a personal access token) rather than a legacy token: three
    base64url parts whose first is a JSON header with ``alg`` (how label-studio-sdk 2.x tells them
    apart, without verifying the signature)."""
    parts = key.split(".")
    if len(parts) != 3:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def _not_sent(exc: BaseException) -> bool:
    """Whether a failed request surely had no effect: connection refused/not made, or 429."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    return isinstance(exc, ApiError) and exc.status_code == 429


def _refusal(body: Any) -> str:
    """The server's reason for a 400, from its ``validation_errors`` or ``detail``."""
    if isinstance(body, dict):
        errors = body.get("validation_errors") or body.get("detail") or body
        if isinstance(errors, dict):
            parts = []
            for key, value in errors.items():
                items = value if isinstance(value, list) else [value]
                parts.append(("" if key == "non_field_errors" else f"{key}: ") + "; ".join(str(v) for v in items))
            return _body_text(" | ".join(parts), 2000)
        return _body_text(errors, 2000)
    return _body_text(body, 2000)
