"""Label Studio task JSON <-> Arrow rows, with an explicit schema. Pure: no I/O.

The row format (one row per task, primary key ``id``):

==========================  ===========================  ==========================================
column                      Arrow type                   from the task JSON (Label Studio 1.23 API)
==========================  ===========================  ==========================================
id, project, inner_id       int64                        same keys
created_at, updated_at      timestamp[us, UTC]           ISO 8601 strings, e.g. ``...T23:18:32.888580Z``
updated_by                  int64                        user id
data_json                   string (JSON)                ``data``, lossless
data                        struct<key: string, ...>     ``data[key]`` for each ``$key`` in the label
                                                         config (non-strings JSON-encoded), so SQL
                                                         reads ``data.text`` as the seed's
                                                         ``json_normalize`` names it (Lance forbids
                                                         dots in top-level column names)
meta                        string (JSON)                ``meta``
is_labeled                  bool
overlap, total_annotations, int64                        task counters
cancelled_annotations,
total_predictions,
comment_count,
unresolved_comment_count
annotations                 list<struct ANNOTATION>      ``annotations`` (``fields=all``)
predictions                 list<struct PREDICTION>      ``predictions`` (``fields=all``)
extra                       string (JSON)                every other key, so nothing is dropped
run_id                      string                       the sync run that wrote this row
==========================  ===========================  ==========================================

Volatile keys are not stored: ``created_ago`` (a humanized "5 minutes" that Label Studio
computes at request time) on annotations and predictions, and ``created_username`` (a display
string, "<email>, <user id>", derived from the user). Everything else is.

A typed field whose value would not convert back to the identical JSON (an unexpected type, a
timestamp in another zone or precision) keeps its original value in ``extra`` too; on the way back
``extra`` wins. So :func:`row_to_task` returns exactly the task that :func:`tasks_to_table` was given.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import pyarrow as pa

from ls_space_sync.errors import Terminal

TS = pa.timestamp("us", tz="UTC")

ANNOTATION = pa.struct(
    [
        ("id", pa.int64()),
        ("completed_by", pa.int64()),
        ("created_at", TS),
        ("updated_at", TS),
        ("lead_time", pa.float64()),
        ("was_cancelled", pa.bool_()),
        ("ground_truth", pa.bool_()),
        ("result", pa.string()),
        ("extra", pa.string()),
    ]
)
PREDICTION = pa.struct(
    [
        ("id", pa.int64()),
        ("model_version", pa.string()),
        ("score", pa.float64()),
        ("created_at", TS),
        ("updated_at", TS),
        ("result", pa.string()),
        ("extra", pa.string()),
    ]
)

_INT, _TS, _JSON, _BOOL, _FLOAT, _STR = "int", "ts", "json", "bool", "float", "str"

# Typed top-level task keys, in column order.
TASK_FIELDS: list[tuple[str, str]] = [
    ("id", _INT),
    ("project", _INT),
    ("inner_id", _INT),
    ("created_at", _TS),
    ("updated_at", _TS),
    ("updated_by", _INT),
    ("data", _JSON),
    ("meta", _JSON),
    ("is_labeled", _BOOL),
    ("overlap", _INT),
    ("total_annotations", _INT),
    ("cancelled_annotations", _INT),
    ("total_predictions", _INT),
    ("comment_count", _INT),
    ("unresolved_comment_count", _INT),
]
_ANNOTATION_FIELDS = [
    ("id", _INT),
    ("completed_by", _INT),
    ("created_at", _TS),
    ("updated_at", _TS),
    ("lead_time", _FLOAT),
    ("was_cancelled", _BOOL),
    ("ground_truth", _BOOL),
    ("result", _JSON),
]
_PREDICTION_FIELDS = [
    ("id", _INT),
    ("model_version", _STR),
    ("score", _FLOAT),
    ("created_at", _TS),
    ("updated_at", _TS),
    ("result", _JSON),
]
_ARROW = {_INT: pa.int64(), _TS: TS, _JSON: pa.string(), _BOOL: pa.bool_(), _FLOAT: pa.float64(), _STR: pa.string()}

# Keys of annotation/prediction objects that are derived at request time and never stored.
VOLATILE_KEYS = frozenset({"created_ago", "created_username"})

# Stamps: the columns that say whether a stored task is still current (see changes.py).
STAMP_COLUMNS = ["id", "created_at", "updated_at", "total_annotations", "cancelled_annotations", "total_predictions"]


class MalformedTask(Terminal, ValueError):
    """A task JSON object lacks what every Label Studio task has (an integer ``id``, timestamps)."""


def data_keys(label_config: str | None) -> list[str]:
    """Return the task data keys a label config reads (``$text`` -> ``text``), in order of first use.

    Looks at every attribute value starting with ``$`` (``value="$image"``, ``valueList``, ...).
    A config that is not well-formed XML falls back to a regex over the text.
    """
    if not label_config:
        return []
    keys: list[str] = []
    try:
        values = [v for el in ET.fromstring(label_config).iter() for v in el.attrib.values()]
    except ET.ParseError:
        values = [a or b for a, b in re.findall(r"""=\s*(?:"([^"]*)"|'([^']*)')""", label_config)]
    for value in values:
        m = re.fullmatch(r"\$([A-Za-z_][\w.\-]*)", value.strip())
        if m and m.group(1) not in keys:
            keys.append(m.group(1))
    return keys


def schema_for(keys: Sequence[str]) -> pa.Schema:
    """Return the Arrow schema of a project's rows, given its label config data keys."""
    fields = [pa.field(name, _ARROW[kind], nullable=(name != "id")) for name, kind in TASK_FIELDS]
    fields = [pa.field("data_json", f.type) if f.name == "data" else f for f in fields]
    if keys:  # an empty struct is not a valid Lance column
        fields.insert(7, pa.field("data", pa.struct([(k, pa.string()) for k in keys])))
    fields += [
        pa.field("annotations", pa.list_(ANNOTATION)),
        pa.field("predictions", pa.list_(PREDICTION)),
        pa.field("extra", pa.string()),
        pa.field("run_id", pa.string()),
    ]
    return pa.schema(fields)


def data_columns(schema: pa.Schema) -> list[str]:
    """Return the data keys that have a typed field in the ``data`` struct of a schema."""
    if "data" not in schema.names:
        return []
    return [f.name for f in schema.field("data").type]


# --- scalar codecs -------------------------------------------------------------------------

def parse_ts(value: str) -> datetime:
    """Parse a Label Studio timestamp (ISO 8601, ``Z`` or offset) into an aware UTC datetime."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def format_ts(dt: datetime) -> str:
    """Format a UTC datetime as Django REST framework does (``isoformat`` with ``Z``)."""
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _encode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == _INT:
        return value if type(value) is int else _BAD
    if kind == _BOOL:
        return value if type(value) is bool else _BAD
    if kind == _FLOAT:
        return float(value) if type(value) in (int, float) else _BAD
    if kind == _STR:
        return value if isinstance(value, str) else _BAD
    if kind == _TS:
        try:
            return parse_ts(value) if isinstance(value, str) else _BAD
        except ValueError:
            return _BAD
    return _dumps(value)  # _JSON


def _decode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == _TS:
        return format_ts(value)
    if kind == _JSON:
        return json.loads(value)
    return value


_BAD = object()


def _encode_obj(obj: dict[str, Any], fields: list[tuple[str, str]]) -> dict[str, Any]:
    """Typed columns for ``fields`` plus ``extra``: every other key and every lossy value."""
    row: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    typed = {name for name, _ in fields}
    for name, kind in fields:
        if name not in obj:
            row[name] = None
            continue
        raw = obj[name]
        value = _encode(kind, raw)
        if value is _BAD:
            row[name] = None
            extra[name] = raw
            continue
        row[name] = value
        # JSON, int, bool and str values come back as they went in; a timestamp may not (another
        # zone or precision) and a float may have been an int: keep those originals in extra.
        if kind in (_TS, _FLOAT):
            back = _decode(kind, value)
            if back != raw or type(back) is not type(raw):
                extra[name] = raw
    for key, value in obj.items():
        if key not in typed:
            extra[key] = value
    # Keys that are absent from the object but typed are marked so they stay absent.
    missing = [name for name, _ in fields if name not in obj]
    if missing:
        extra["__absent__"] = missing
    row["extra"] = _dumps(extra) if extra else None
    return row


def _decode_obj(row: dict[str, Any], fields: list[tuple[str, str]]) -> dict[str, Any]:
    extra = json.loads(row["extra"]) if row.get("extra") else {}
    absent = set(extra.pop("__absent__", []))
    obj = {name: _decode(kind, row.get(name)) for name, kind in fields if name not in absent}
    obj.update(extra)
    return obj


# --- tasks <-> rows ------------------------------------------------------------------------

def _data_value(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else _dumps(value)


def task_to_row(task: dict[str, Any], keys: Sequence[str], run_id: str | None) -> dict[str, Any]:
    """Convert one task JSON object (``GET /api/tasks?fields=all``) into a row dict for :func:`schema_for`.

    Raises:
        MalformedTask: ``id`` is missing or not an integer, or ``created_at``/``updated_at`` is not a timestamp.
    """
    if not isinstance(task, dict) or type(task.get("id")) is not int:
        raise MalformedTask(f"task without an integer id: {str(task)[:200]}")
    for key in ("created_at", "updated_at"):
        if _encode(_TS, task.get(key)) in (_BAD, None):
            raise MalformedTask(f"task {task['id']}: {key} is not an ISO 8601 timestamp: {task.get(key)!r}")
    body = {k: v for k, v in task.items() if k not in ("annotations", "predictions")}
    row = _encode_obj(body, TASK_FIELDS)
    row["data_json"] = row.pop("data")
    raw_data = task.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    if keys:
        row["data"] = {key: _data_value(data.get(key)) for key in keys}
    for key, fields in (("annotations", _ANNOTATION_FIELDS), ("predictions", _PREDICTION_FIELDS)):
        items = task.get(key)
        if items is None or not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            # Not the list of objects fields=all gives (absent, or ids only as in the JSON export):
            # keep the value itself in extra and store no structs.
            row[key] = None
            extra = json.loads(row["extra"]) if row["extra"] else {}
            extra[key] = items if key in task else None
            if key not in task:
                extra.setdefault("__absent__", []).append(key)
            row["extra"] = _dumps(extra)
        else:
            row[key] = [_encode_obj({k: v for k, v in item.items() if k not in VOLATILE_KEYS}, fields)
                        for item in items]
    row["run_id"] = run_id
    return row


def row_to_task(row: dict[str, Any]) -> dict[str, Any]:
    """Convert a stored row (as from ``Table.to_pylist()``) back into the task JSON it came from."""
    top = {k: row.get(k) for k in [n for n, _ in TASK_FIELDS] + ["extra"]}
    top["data"] = row.get("data_json")
    task = _decode_obj(top, TASK_FIELDS)
    absent_top = set(json.loads(row["extra"]).get("__absent__", [])) if row.get("extra") else set()
    for key, fields in (("annotations", _ANNOTATION_FIELDS), ("predictions", _PREDICTION_FIELDS)):
        if row.get(key) is not None:
            task[key] = [_decode_obj(item, fields) for item in row[key]]
        elif key in absent_top:
            task.pop(key, None)
    return task


def tasks_to_table(tasks: Iterable[dict[str, Any]], schema: pa.Schema, run_id: str | None) -> pa.Table:
    """Convert task JSON objects into an Arrow table of ``schema`` (see :func:`schema_for`).

    Raises:
        MalformedTask: as :func:`task_to_row`.
    """
    keys = data_columns(schema)
    rows = [task_to_row(t, keys, run_id) for t in tasks]
    return pa.Table.from_pylist(rows, schema=schema)


def table_to_tasks(table: pa.Table) -> list[dict[str, Any]]:
    """Convert stored rows back into task JSON objects, in row order."""
    return [row_to_task(r) for r in table.to_pylist()]


def region_rows(task: dict[str, Any], source: str = "annotations") -> list[dict[str, Any]]:
    """Flatten a task's annotation (or prediction) results into one dict per region.

    Each dict: ``task_id``, ``<source>_id``, ``author`` (``completed_by``; ``None`` for predictions),
    ``model_version``, ``from_name``, ``to_name``, ``type``, ``label`` (first of the labels/choices
    list, or the rating/number/text value), ``value`` (the full ``value`` dict) and, for boxes,
    ``x, y, width, height`` in percent of the image, for spans ``start, end``.
    """
    out: list[dict[str, Any]] = []
    for item in task.get(source) or []:
        for region in item.get("result") or []:
            value = region.get("value") or {}
            kind = region.get("type")
            label = None
            for k in (kind, "labels", "choices", "rectanglelabels", "taxonomy", "textarea", "rating", "number"):
                v = value.get(k) if k else None
                if v is not None:
                    label = v[0] if isinstance(v, list) and v else v
                    break
            out.append(
                {
                    "task_id": task.get("id"),
                    f"{source[:-1]}_id": item.get("id"),
                    "author": item.get("completed_by"),
                    "model_version": item.get("model_version"),
                    "from_name": region.get("from_name"),
                    "to_name": region.get("to_name"),
                    "type": kind,
                    "label": label if not isinstance(label, (dict, list)) else _dumps(label),
                    "value": _dumps(value),
                    **{k: value.get(k) for k in ("x", "y", "width", "height", "start", "end")},
                }
            )
    return out

