"""An in-memory Label Studio API, mounted with respx, for unit tests.

It implements only what the pull sync calls, with the server's semantics as verified on 1.23.2:
``GET /api/projects/{id}/`` (task_number, label_config, a ``Date`` header) and ``GET /api/tasks/``
with Data Manager filters on ``tasks:id`` and ``tasks:updated_at``, ``fields`` and ``include``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import respx

from ls_space_sync.model.records import format_ts, parse_ts

URL = "http://ls.test"
KEY = "unit-test-token"
CONFIG = '<View><Text name="text" value="$text"/><Choices name="label" toName="text"><Choice value="a"/></Choices></View>'


def _after(updated_at: str, value: str) -> bool:
    try:
        return parse_ts(updated_at) > parse_ts(value)
    except ValueError:
        return True  # a malformed stamp: let the client see it


class FakeLabelStudio:
    """A Label Studio project store with a controllable clock."""

    def __init__(self, project_id: int = 1, label_config: str = CONFIG):
        self.project_id = project_id
        self.label_config = label_config
        self.now = datetime(2026, 11, 1, 12, 0, 0, tzinfo=timezone.utc)
        self.tasks: dict[int, dict[str, Any]] = {}
        self.next_id = 1
        self.calls: list[httpx.Request] = []
        self.fail_next: list[int] = []  # status codes to answer before serving normally
        # Faults of a 200 answer: the n-th request (1-based, per endpoint "tasks"/"project") gets
        # these raw bytes as its body instead of the real one.
        self.body_faults: dict[tuple[str, int], bytes] = {}
        self.hidden: set[int] = set()  # task ids left out of every listing (still counted in task_number)
        self._served = {"tasks": 0, "project": 0}
        self.after_tasks: Any = None  # called with the request count after each task listing is answered

    def tick(self, seconds: float = 60) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def add(self, text: str, annotations: int = 0, predictions: int = 0) -> dict[str, Any]:
        ts = format_ts(self.tick(1))
        task = {
            "id": self.next_id, "project": self.project_id, "inner_id": self.next_id, "data": {"text": text},
            "meta": {}, "created_at": ts, "updated_at": ts, "updated_by": None, "is_labeled": annotations > 0,
            "overlap": 1, "total_annotations": annotations, "cancelled_annotations": 0,
            "total_predictions": predictions, "comment_count": 0, "unresolved_comment_count": 0,
            "annotations": [
                {"id": self.next_id * 100 + i, "completed_by": 1, "created_at": ts, "updated_at": ts, "lead_time": 1.5,
                 "was_cancelled": False, "ground_truth": False,
                 "result": [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["a"]}}]}
                for i in range(annotations)
            ],
            "predictions": [
                {"id": self.next_id * 100 + i, "model_version": "m1", "score": 0.5, "created_at": ts, "updated_at": ts,
                 "result": []}
                for i in range(predictions)
            ],
        }
        self.tasks[task["id"]] = task
        self.next_id += 1
        return task

    def touch(self, task_id: int, **data: Any) -> None:
        task = self.tasks[task_id]
        task["data"].update(data)
        task["updated_at"] = format_ts(self.tick(1))

    def delete(self, task_id: int) -> None:
        del self.tasks[task_id]

    # --- HTTP ---------------------------------------------------------------------------------

    def _fault(self, endpoint: str) -> httpx.Response | None:
        self._served[endpoint] += 1
        raw = self.body_faults.get((endpoint, self._served[endpoint]))
        if raw is None:
            return None
        return httpx.Response(200, content=raw, headers={"Content-Type": "application/json",
                                                         "Date": format_datetime(self.now, usegmt=True)})

    def _project(self, request: httpx.Request, project_id: str) -> httpx.Response:
        self.calls.append(request)
        fault = self._fault("project")
        if fault is not None:
            return fault
        if self.fail_next:
            return httpx.Response(self.fail_next.pop(0), json={"detail": "failure"})
        if request.headers.get("authorization") != f"Token {KEY}":
            return httpx.Response(401, json={"detail": "Invalid token."})
        if int(project_id) != self.project_id:
            return httpx.Response(404, json={"detail": "Not found."})
        body = {"id": self.project_id, "title": "fake", "task_number": len(self.tasks), "label_config": self.label_config}
        return httpx.Response(200, json=body, headers={"Date": format_datetime(self.now, usegmt=True)})

    def _tasks(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        fault = self._fault("tasks")
        if fault is not None:
            return fault
        if self.fail_next:
            return httpx.Response(self.fail_next.pop(0), json={"detail": "failure"})
        q = request.url.params
        query = json.loads(q.get("query") or "{}")
        items = query.get("filters", {}).get("items", [])
        tasks = sorted((t for t in self.tasks.values() if t["id"] not in self.hidden), key=lambda t: t["id"])
        for f in items:
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
        size = int(q.get("page_size", 100))
        page = int(q.get("page", 1))
        chunk = tasks[(page - 1) * size: page * size]
        if page > 1 and not chunk:
            return httpx.Response(404, json={"detail": "Invalid page."})
        if q.get("fields") != "all":
            chunk = [{k: v for k, v in t.items() if k not in ("annotations", "predictions")} for t in chunk]
        if q.get("include"):
            keep = q["include"].split(",")
            chunk = [{k: t[k] for k in keep if k in t} for t in chunk]
        response = httpx.Response(200, json={"tasks": json.loads(json.dumps(chunk)), "total": len(tasks)})
        if self.after_tasks is not None:
            self.after_tasks(self._served["tasks"])
        return response

    def mount(self, router: respx.MockRouter) -> "FakeLabelStudio":
        router.get(url__regex=rf"{URL}/api/projects/(?P<project_id>\d+)/").mock(side_effect=self._project)
        router.get(url__startswith=f"{URL}/api/tasks/").mock(side_effect=self._tasks)
        return self
