"""One in-memory Label Studio for the unit tests, mounted with respx.

It answers what the sync, push, mirror, restore and webhook commands send, as Label Studio 1.23.2
answers it (docs/label-studio-facts.md): projects, tasks, annotations, predictions, users and
webhooks, read and written over HTTP. Each handler's docstring names the endpoint and the
server behaviour it reproduces.

Two call styles, one object:

- many projects: ``project(title, label_config) -> id``, ``import_task(pid, {"data": ...,
  "annotations": [...], "predictions": [...]})``, ``of(pid)``, ``reuse(tid, task)``;
- project 1, which exists from the start: ``add(text, annotations=, predictions=)``,
  ``touch(tid, **data)``, ``delete(tid)``; ``tasks`` holds every project's tasks by id.

Faults a test can set: ``fail_next`` (statuses answered before serving normally),
``body_faults`` (raw 200 bodies for the n-th request of an endpoint), ``hidden`` (task ids left
out of listings), ``after_tasks`` (a hook after each listing), ``fail_import`` (answers to the
next imports). The clock (``now``, ``tick``) stamps every change and every ``Date`` header;
``calls`` records every request.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, Callable, Iterator

import httpx
import respx

from ls_space_sync.model.records import format_ts, parse_ts

URL = "http://ls.test"
KEY = "unit-test-token"
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          '<Choice value="a"/><Choice value="b"/></Choices></View>')

Handler = Callable[..., httpx.Response]


def choice(value: str) -> list[dict[str, Any]]:
    """The result of choosing ``value`` in :data:`CONFIG`'s ``label`` control."""
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]


def _after(updated_at: str, value: str) -> bool:
    try:
        return parse_ts(updated_at) > parse_ts(value)
    except ValueError:
        return True  # a malformed stamp: let the client see it


class FakeLabelStudio:
    """Label Studio's projects, tasks, annotations, predictions, users and webhooks, in memory."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
        self.projects: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}  # every project's, by task id
        self.webhooks: dict[int, dict[str, Any]] = {}
        self.users = {1, 2}
        # One id sequence per table, as the server's database keeps them; reuse() gives one back.
        self._ids: defaultdict[str, Iterator[int]] = defaultdict(lambda: itertools.count(1))
        self.calls: list[httpx.Request] = []
        self.served: Counter[str] = Counter()  # requests per endpoint name (see _routes), faults included
        self.fail_next: list[int] = []  # status codes to answer, one a request, before serving normally
        # Faults of a 200 answer: the n-th request (1-based) of an endpoint ("tasks", "project", ...)
        # gets these raw bytes as its body instead of the real one.
        self.body_faults: dict[tuple[str, int], bytes] = {}
        self.hidden: set[int] = set()  # task ids left out of every listing (still counted in task_number)
        self.after_tasks: Callable[[int], None] | None = None  # called with served["tasks"] after each listing
        self.fail_import: list[httpx.Response | str | None] = []  # next imports: an answer, "timeout after import", or None
        self.project("fake")

    # --- the server's state, as a test sets it up ----------------------------------------------

    def tick(self, seconds: float = 60) -> datetime:
        """Move the server's clock on."""
        self.now += timedelta(seconds=seconds)
        return self.now

    def _stamp(self) -> str:
        return format_ts(self.tick(1))

    def project(self, title: str = "p", label_config: str = CONFIG) -> int:
        """Create a project; return its id."""
        pid = next(self._ids["project"])
        self.projects[pid] = {"id": pid, "title": title, "label_config": label_config}
        return pid

    def import_task(self, pid: int, task: dict[str, Any], task_id: int | None = None) -> dict[str, Any]:
        """Create a task in project ``pid`` as a bulk import does, with its annotations and predictions.

        ``task`` is an item of the import JSON (``data``, ``meta``, ``annotations``, ``predictions``).
        """
        ts = self._stamp()
        tid = next(self._ids["task"]) if task_id is None else task_id
        inner_id = 1 + max((t["inner_id"] for t in self.of(pid)), default=0)
        self.tasks[tid] = self._recount({
            "id": tid, "project": pid, "inner_id": inner_id, "data": task["data"], "meta": task.get("meta", {}),
            "created_at": ts, "updated_at": ts, "updated_by": None, "overlap": 1, "comment_count": 0,
            "unresolved_comment_count": 0,
            "annotations": [self._annotation(a, ts) for a in task.get("annotations", [])],
            "predictions": [self._prediction(p, ts) for p in task.get("predictions", [])],
        })
        return self.tasks[tid]

    def _annotation(self, a: dict[str, Any], ts: str, default_gt: bool = True) -> dict[str, Any]:
        # An import sets ground_truth on annotations without the key; the API's create does not.
        return {"id": next(self._ids["annotation"]), "result": a.get("result", []), "completed_by": a.get("completed_by", 1),
                "was_cancelled": a.get("was_cancelled", False), "ground_truth": a.get("ground_truth", default_gt),
                "lead_time": a.get("lead_time"), "created_at": ts, "updated_at": ts}

    def _prediction(self, p: dict[str, Any], ts: str) -> dict[str, Any]:
        return {"id": next(self._ids["prediction"]), "result": p.get("result", []), "score": p.get("score"),
                "model_version": p.get("model_version", ""), "created_at": ts, "updated_at": ts}

    def add(self, text: str, annotations: int = 0, predictions: int = 0, project: int = 1) -> dict[str, Any]:
        """Import ``{"text": text}`` into project 1, with ``annotations`` choices of "a" by user 1 and
        ``predictions`` empty predictions of model m1; return the task."""
        return self.import_task(project, {
            "data": {"text": text},
            "annotations": [{"result": choice("a"), "completed_by": 1, "lead_time": 1.5, "ground_truth": False}
                            for _ in range(annotations)],
            "predictions": [{"result": [], "score": 0.5, "model_version": "m1"} for _ in range(predictions)],
        })

    def touch(self, task_id: int, **data: Any) -> None:
        """Change a task as an edit in Label Studio does: ``data`` updated, ``updated_at`` moved."""
        self.tasks[task_id]["data"].update(data)
        self.tasks[task_id]["updated_at"] = self._stamp()

    def delete(self, task_id: int) -> None:
        """Delete a task (its id stays used unless :meth:`reuse` gives it back)."""
        del self.tasks[task_id]

    def reuse(self, task_id: int, task: dict[str, Any]) -> dict[str, Any]:
        """Delete a task and give its id to another task of the same project, as Label Studio on
        SQLite does (a bulk import assigns ``max(id) + 1``)."""
        return self.import_task(self.tasks.pop(task_id)["project"], task, task_id=task_id)

    def add_webhook(self, **hook: Any) -> dict[str, Any]:
        """Add a webhook (``project``, ``url``, ``headers``, ...) with the server's defaults."""
        hook = {"id": next(self._ids["webhook"]), "send_payload": True, "send_for_all_actions": True,
                "is_active": True, "headers": {}, "actions": [], **hook}
        self.webhooks[hook["id"]] = hook
        return hook

    def of(self, pid: int) -> list[dict[str, Any]]:
        """Project ``pid``'s tasks in id order."""
        return sorted((t for t in self.tasks.values() if t["project"] == pid), key=lambda t: t["id"])

    def writes(self) -> list[str]:
        """``"METHOD /path"`` of every request that was not a GET, in order."""
        return [f"{r.method} {r.url.path}" for r in self.calls if r.method != "GET"]

    @staticmethod
    def _recount(task: dict[str, Any]) -> dict[str, Any]:
        """Set the counters Label Studio keeps on a task row from its annotations and predictions
        (done whenever a task is served, so a test may edit ``annotations`` directly)."""
        annotations = task["annotations"]
        task["total_annotations"] = sum(not a.get("was_cancelled") for a in annotations)
        task["cancelled_annotations"] = sum(bool(a.get("was_cancelled")) for a in annotations)
        task["total_predictions"] = len(task["predictions"])
        task["is_labeled"] = bool(annotations)
        return task

    @staticmethod
    def unique_ground_truth(task: dict[str, Any], body: dict[str, Any], annotation: dict[str, Any]) -> None:
        """Label Studio's rule: a write naming ground_truth=true clears it on the other annotations."""
        if body.get("ground_truth"):
            for other in task["annotations"]:
                if other is not annotation:
                    other["ground_truth"] = False

    def _find(self, kind: str, oid: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
        for t in self.tasks.values():
            for o in t[kind]:
                if o["id"] == oid:
                    return t, o
        return None

    # --- HTTP ----------------------------------------------------------------------------------

    def mount(self, router: respx.MockRouter) -> FakeLabelStudio:
        """Answer every request to :data:`URL` that no earlier route of ``router`` takes (respx
        tries routes in the order they were added)."""
        router.route(url__startswith=URL).mock(side_effect=self.handle)
        return self

    def _routes(self) -> list[tuple[str, str, str, Handler]]:
        """(method, path pattern, endpoint name, handler): the endpoint name counts in ``served``
        and keys ``body_faults``."""
        return [
            ("GET", r"/api/projects/(\d+)/", "project", self._get_project),
            ("POST", r"/api/projects/", "create_project", self._create_project),
            ("POST", r"/api/projects/(\d+)/import", "import", self._import),
            ("GET", r"/api/tasks/", "tasks", self._list_tasks),
            ("GET", r"/api/tasks/(\d+)/", "task", self._get_task),
            ("PATCH", r"/api/tasks/(\d+)/", "update_task", self._update_task),
            ("POST", r"/api/tasks/(\d+)/annotations/", "create_annotation", self._create_annotation),
            ("POST", r"/api/predictions/", "create_prediction", self._create_prediction),
            ("PATCH", r"/api/(annotations|predictions)/(\d+)/", "update", self._update_object),
            ("DELETE", r"/api/(annotations|predictions)/(\d+)/", "delete", self._delete_object),
            ("POST", r"/api/dm/actions/", "action", self._action),
            ("GET", r"/api/users/", "users", self._users),
            ("GET", r"/api/webhooks/", "webhooks", self._list_webhooks),
            ("POST", r"/api/webhooks/", "create_webhook", self._create_webhook),
            ("PATCH", r"/api/webhooks/(\d+)/", "update_webhook", self._update_webhook),
            ("DELETE", r"/api/webhooks/(\d+)/", "delete_webhook", self._delete_webhook),
        ]

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request: a body fault, else a ``fail_next`` status, else 401 for a token other
        than :data:`KEY` (``Authorization: Token <key>``), else the endpoint's own answer."""
        self.calls.append(request)
        for method, pattern, endpoint, handler in self._routes():
            match = re.fullmatch(pattern, request.url.path)
            if match and request.method == method:
                break
        else:
            raise AssertionError(f"unexpected {request.method} {request.url.path}")
        self.served[endpoint] += 1
        raw = self.body_faults.get((endpoint, self.served[endpoint]))
        if raw is not None:
            return self._answer(200, content=raw)
        if self.fail_next:
            return self._answer(self.fail_next.pop(0), {"detail": "failure"})
        if request.headers.get("authorization") != f"Token {KEY}":
            return self._answer(401, {"detail": "Invalid token."})
        return handler(request, *match.groups())

    def _answer(self, status: int, body: Any = None, content: bytes | None = None) -> httpx.Response:
        """A response with the server's ``Date`` header (the clock :attr:`now`)."""
        headers = {"Date": format_datetime(self.now, usegmt=True)}
        if content is not None:
            return httpx.Response(status, content=content, headers={"Content-Type": "application/json", **headers})
        return httpx.Response(status, json=body, headers=headers)

    def _not_found(self) -> httpx.Response:
        return self._answer(404, {"detail": "Not found."})

    @staticmethod
    def _body(request: httpx.Request) -> Any:
        return json.loads(request.content) if request.content else None

    def _get_project(self, request: httpx.Request, pid: str) -> httpx.Response:
        """``GET /api/projects/{id}/``: the project with ``task_number`` (its task count, hidden
        tasks included) and ``label_config``; 404 for a project that does not exist."""
        project = self.projects.get(int(pid))
        if project is None:
            return self._not_found()
        return self._answer(200, {**project, "task_number": len(self.of(project["id"]))})

    def _create_project(self, request: httpx.Request) -> httpx.Response:
        """``POST /api/projects/`` (``title``, ``label_config``): 201 with the new project."""
        body = self._body(request)
        return self._answer(201, self.projects[self.project(body["title"], body["label_config"])])

    def _import(self, request: httpx.Request, pid: str) -> httpx.Response:
        """``POST /api/projects/{id}/import``: synchronous bulk import, 201 with ``task_ids`` in the
        order sent. An annotation naming an unknown ``completed_by`` refuses the whole import (400,
        nothing created). ``fail_import`` answers instead, or imports and then times out."""
        fail = self.fail_import.pop(0) if self.fail_import else None
        if isinstance(fail, httpx.Response):
            return fail
        body = self._body(request)
        for t in body:
            for a in t.get("annotations", []):
                if "completed_by" in a and a["completed_by"] not in self.users:
                    return self._answer(400, {"detail": "Validation error", "validation_errors": {
                        "non_field_errors": [f"Import data contains completed_by={a['completed_by']} which is "
                                             "not a valid annotator's email or ID"]}})
        ids = [self.import_task(int(pid), t)["id"] for t in body]
        if fail == "timeout after import":
            raise httpx.ReadTimeout("timed out", request=request)
        return self._answer(201, {"task_count": len(ids), "task_ids": ids})

    def _list_tasks(self, request: httpx.Request) -> httpx.Response:
        """``GET /api/tasks/?project=P``: the Data Manager listing. Filters ``filter:tasks:id``
        (greater, greater_or_equal, less_or_equal) and ``filter:tasks:updated_at`` (greater, exact
        to the microsecond), ``selectedItems``, id order, page-number paging (a page past the end is
        404), ``fields=all`` for annotations and predictions, ``include`` to keep only some keys.
        A project that does not exist is 404, as its project read."""
        q = request.url.params
        pid = int(q["project"])
        if pid not in self.projects:
            return self._not_found()
        tasks = [self._recount(t) for t in self.of(pid) if t["id"] not in self.hidden]
        query = json.loads(q.get("query") or "{}")
        for f in query.get("filters", {}).get("items", []):
            key, op, value = f["filter"], f["operator"], f["value"]
            if key == "filter:tasks:id":
                test = {"greater": lambda t: t["id"] > value, "greater_or_equal": lambda t: t["id"] >= value,
                        "less_or_equal": lambda t: t["id"] <= value}[op]
            elif key == "filter:tasks:updated_at":
                test = lambda t: _after(t["updated_at"], value)  # noqa: E731
            else:
                raise AssertionError(f"unexpected filter {key}")
            tasks = [t for t in tasks if test(t)]
        selected = query.get("selectedItems")
        if selected and not selected.get("all"):
            tasks = [t for t in tasks if t["id"] in set(selected["included"])]
        size, page = int(q.get("page_size", 100)), int(q.get("page", 1))
        chunk = tasks[(page - 1) * size: page * size]
        if page > 1 and not chunk:
            return self._answer(404, {"detail": "Invalid page."})
        if q.get("fields") != "all":
            chunk = [{k: v for k, v in t.items() if k not in ("annotations", "predictions")} for t in chunk]
        if q.get("include"):
            chunk = [{k: t[k] for k in q["include"].split(",") if k in t} for t in chunk]
        response = self._answer(200, {"tasks": json.loads(json.dumps(chunk)), "total": len(tasks)})
        if self.after_tasks is not None:
            self.after_tasks(self.served["tasks"])
        return response

    def _get_task(self, request: httpx.Request, tid: str) -> httpx.Response:
        """``GET /api/tasks/{id}/``: one task with its annotations and predictions."""
        task = self.tasks.get(int(tid))
        return self._not_found() if task is None else self._answer(200, self._recount(task))

    def _update_task(self, request: httpx.Request, tid: str) -> httpx.Response:
        """``PATCH /api/tasks/{id}/`` (``data``, ``meta``): moves the task's ``updated_at``."""
        task = self.tasks.get(int(tid))
        if task is None:
            return self._not_found()
        task.update(self._body(request))
        task["updated_at"] = self._stamp()
        return self._answer(200, self._recount(task))

    def _create_annotation(self, request: httpx.Request, tid: str) -> httpx.Response:
        """``POST /api/tasks/{id}/annotations/``: ground_truth only if named (and then unique on the
        task); moves the task's ``updated_at``."""
        task, body, ts = self.tasks[int(tid)], self._body(request), self._stamp()
        task["annotations"].append(self._annotation(body, ts, default_gt=False))
        self.unique_ground_truth(task, body, task["annotations"][-1])
        task["updated_at"] = ts
        return self._answer(201, task["annotations"][-1])

    def _create_prediction(self, request: httpx.Request) -> httpx.Response:
        """``POST /api/predictions/`` (``task``, ``result``, ``score``, ``model_version``): one at a
        time, so it moves the task's ``updated_at``."""
        body, ts = self._body(request), self._stamp()
        task = self.tasks[body.pop("task")]
        task["predictions"].append(self._prediction(body, ts))
        task["updated_at"] = ts
        return self._answer(201, task["predictions"][-1])

    def _update_object(self, request: httpx.Request, kind: str, oid: str) -> httpx.Response:
        """``PATCH /api/annotations/{id}/`` or ``/api/predictions/{id}/``: moves its and its task's
        ``updated_at``; an annotation's ground_truth=true clears the others' (404 if gone)."""
        found = self._find(kind, int(oid))
        if found is None:
            return self._not_found()
        (task, obj), body, ts = found, self._body(request), self._stamp()
        obj.update(body, updated_at=ts)
        if kind == "annotations":
            self.unique_ground_truth(task, body, obj)
        task["updated_at"] = ts
        return self._answer(200, obj)

    def _delete_object(self, request: httpx.Request, kind: str, oid: str) -> httpx.Response:
        """``DELETE /api/annotations/{id}/`` or ``/api/predictions/{id}/``: 204, moves the task's
        ``updated_at``; 404 if already gone."""
        found = self._find(kind, int(oid))
        if found is None:
            return self._not_found()
        task, obj = found
        task[kind].remove(obj)
        task["updated_at"] = self._stamp()
        return self._answer(204)

    def _action(self, request: httpx.Request) -> httpx.Response:
        """``POST /api/dm/actions/?id=delete_tasks&project=P`` with ``selectedItems``: deletes those
        tasks of the project."""
        q, body = request.url.params, self._body(request)
        assert q["id"] == "delete_tasks", f"unexpected action {q['id']}"
        for tid in body["selectedItems"]["included"]:
            if self.tasks.get(tid, {}).get("project") == int(q["project"]):
                del self.tasks[tid]
        return self._answer(200, {})

    def _users(self, request: httpx.Request) -> httpx.Response:
        """``GET /api/users/``: the organization's users, a plain list."""
        return self._answer(200, [{"id": u} for u in sorted(self.users)])

    def _list_webhooks(self, request: httpx.Request) -> httpx.Response:
        """``GET /api/webhooks/?project=P``: that project's webhooks, a plain list."""
        pid = int(request.url.params["project"])
        return self._answer(200, [h for h in self.webhooks.values() if h["project"] == pid])

    def _create_webhook(self, request: httpx.Request) -> httpx.Response:
        """``POST /api/webhooks/``: 201 with the webhook and the server's defaults."""
        return self._answer(201, self.add_webhook(**self._body(request)))

    def _update_webhook(self, request: httpx.Request, hook_id: str) -> httpx.Response:
        """``PATCH /api/webhooks/{id}/``: 200 with the webhook."""
        self.webhooks[int(hook_id)].update(self._body(request))
        return self._answer(200, self.webhooks[int(hook_id)])

    def _delete_webhook(self, request: httpx.Request, hook_id: str) -> httpx.Response:
        """``DELETE /api/webhooks/{id}/``: 204."""
        del self.webhooks[int(hook_id)]
        return self._answer(204)
