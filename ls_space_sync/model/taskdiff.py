"""Task content and the diff between stored rows and Label Studio tasks. Pure: no HTTP, SQL or files.

What a push, a mirror and a restore compare and send:

- the *content* of a task (:func:`content_of`, :func:`content_hash`): data, meta without this
  tool's origin mark, annotation and prediction contents as multisets; never ids, authors, times
  or counters, so a task and its copy in another project compare equal;
- the import JSON of a stored task (:func:`import_payload`), with its origin in
  ``meta["ls_space_sync"]`` and authors kept only when the server knows them;
- the ops that make a server task hold a stored one in place (:func:`plan_task_ops`): a ``PATCH``
  of data and meta, then annotations and predictions matched by content, the rest updated
  pairwise, deleted or created; with the content the server holds afterwards, as Label Studio's
  one-ground-truth-per-task rule leaves it (:func:`annotation_ops`);
- which tasks of a version to create, update in place or delete (:func:`plan_task_changes`);
- the checks before any write: results stored without ``result`` (:func:`require_results`), and
  control tags the rows use that the target's label config lacks (:func:`check_label_config`).
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ls_space_sync.errors import Terminal
from ls_space_sync.model.records import STAMP_COLUMNS, row_to_task

ORIGIN_KEY = "ls_space_sync"


class PushError(Terminal):
    """A push that cannot proceed; the message names the fix."""


class LabelConfigMismatch(PushError):
    """The target project's label config lacks control tags that the rows' results use."""


# --- content ---------------------------------------------------------------------------------

def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def annotation_author(annotation: dict[str, Any]) -> int | None:
    """The user id in an annotation's ``completed_by`` (an id, or a nested user object), else ``None``."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # GET /api/tasks/{id} nests the user
        who = who.get("id")
    return who if isinstance(who, int) else None


def annotation_key(a: dict[str, Any]) -> dict[str, Any]:
    """What an annotation's content is, for comparisons: result and flags (not author or times)."""
    return {"result": a.get("result") or [], "was_cancelled": bool(a.get("was_cancelled")),
            "ground_truth": bool(a.get("ground_truth"))}


def prediction_key(p: dict[str, Any]) -> dict[str, Any]:
    """What a prediction's content is: result, score and model_version (``""`` = none)."""
    return {"result": p.get("result") or [], "score": p.get("score"), "model_version": p.get("model_version") or None}


def strip_origin(meta: Any) -> dict[str, Any]:
    """A task's meta without this tool's origin mark."""
    return {k: v for k, v in meta.items() if k != ORIGIN_KEY} if isinstance(meta, dict) else {}


def content_of(task: dict[str, Any]) -> dict[str, Any]:
    """The part of a task a push carries and compares: data, meta (without origin), annotation
    and prediction contents as sorted multisets. Ids, authors, times and counters are left out."""
    return {
        "data": task.get("data") or {},
        "meta": strip_origin(task.get("meta")),
        "annotations": sorted(_canon(annotation_key(a)) for a in task.get("annotations") or []),
        "predictions": sorted(_canon(prediction_key(p)) for p in task.get("predictions") or []),
    }


def content_hash(task: dict[str, Any]) -> str:
    """SHA-256 (hex) of :func:`content_of`: equal hashes = nothing to push."""
    return hashlib.sha256(_canon(content_of(task)).encode()).hexdigest()


def annotation_body(a: dict[str, Any], users: set[int] | None) -> dict[str, Any]:
    """An annotation as Label Studio takes it on import or create.

    ``completed_by`` is kept only if that user exists on the target server (``users``): the server
    refuses an import naming an unknown user (HTTP 400) and otherwise records the pushing user.
    """
    body = annotation_key(a)
    if a.get("lead_time") is not None:
        body["lead_time"] = a["lead_time"]
    who = annotation_author(a)
    if users is not None and who in users:
        body["completed_by"] = who
    return body


def prediction_body(p: dict[str, Any]) -> dict[str, Any]:
    """A prediction as Label Studio takes it on import or create."""
    body: dict[str, Any] = {"result": p.get("result") or []}
    if p.get("score") is not None:
        body["score"] = p["score"]
    if p.get("model_version"):
        body["model_version"] = p["model_version"]
    return body


def import_payload(task: dict[str, Any], origin: dict[str, Any] | None, users: set[int] | None) -> dict[str, Any]:
    """The import JSON of a stored task; ``origin`` (if given) goes into ``meta["ls_space_sync"]``."""
    meta = strip_origin(task.get("meta")) if origin is not None else dict(task.get("meta") or {})
    if origin is not None:
        meta[ORIGIN_KEY] = origin
    out: dict[str, Any] = {"data": task.get("data") or {}, "meta": meta}
    out["annotations"] = [annotation_body(a, users) for a in task.get("annotations") or []]
    out["predictions"] = [prediction_body(p) for p in task.get("predictions") or []]
    return out


Op = tuple[Any, ...]  # ("patch_task", body) | ("create_annotation", body) | ("update_annotation", id, body) | ...


def _match(desired: list[dict[str, Any]], current: list[dict[str, Any]], key: Any, kind: str) -> list[Op]:
    """Ops that make ``current`` (server objects with ids) hold ``desired`` (bodies), fewest first:
    equal contents are kept, the rest are updated pairwise, then deleted or created. An update
    leaves the author of the existing object as it is."""
    left = list(desired)
    rest = []
    for cur in sorted(current, key=lambda c: c.get("id") or 0):
        k = _canon(key(cur))
        hit = next((i for i, d in enumerate(left) if _canon(key(d)) == k), None)
        if hit is None:
            rest.append(cur)
        else:
            left.pop(hit)
    ops: list[Op] = [(f"update_{kind}", cur["id"], {k: v for k, v in d.items() if k != "completed_by"})
                     for cur, d in zip(rest, left)]
    ops += [(f"delete_{kind}", cur["id"]) for cur in rest[len(left):]]
    ops += [(f"create_{kind}", dict(d)) for d in left[len(rest):]]
    return ops


def _same(a: dict[str, Any], b: dict[str, Any], *keys: str) -> bool:
    return all(_canon(annotation_key(a)[k]) == _canon(annotation_key(b)[k]) for k in keys)


def annotation_ops(desired: list[dict[str, Any]], current: list[dict[str, Any]], *,
                   authors: bool = False) -> tuple[list[Op], list[dict[str, Any]]]:
    """Ops that make a task's ``current`` annotations (server objects with ids) hold ``desired``
    (:func:`annotation_body` bodies), and the annotations the task holds after them.

    Label Studio 1.23.2 keeps one ground truth per task when annotations are written one at a
    time: a create or ``PATCH`` whose body has ``ground_truth: true`` clears the flag on the task's
    other annotations; a body without the key leaves them alone (an import, on the other hand, sets
    the flag on every annotation that does not carry the key, so several can hold it). Hence:

    - annotations are paired fewest-changes first: equal content (and, with ``authors``, author) is
      kept; then equal content with another author; then equal result with other flags; the rest
      pairwise by id, then deleted or created;
    - an update sends only the fields that differ (``result``, ``was_cancelled``, ``ground_truth``,
      with ``authors`` ``completed_by``; ``lead_time`` along with them), so it never names a flag
      that is already right;
    - ``ground_truth: true`` is sent only when ``desired`` has at most one ground truth, where
      clearing the others is what ``desired`` wants anyway. With several, a flag an annotation
      lacks cannot be set in place without clearing one that must stay: it is left as the server
      has it (a create sends ``false``), and the returned annotations say so.

    Args:
        desired: the annotations the task should hold (``completed_by`` only where that user exists).
        current: the server task's annotations (``id``, ``result``, flags, ``completed_by``).
        authors: also match and set ``completed_by`` (a restore: same server, same users). Without
            it an update leaves the author of the existing annotation as it is.

    Returns:
        ``(ops, held)``: ``update_annotation``/``delete_annotation``/``create_annotation`` ops, and
        the annotations (``result``, ``was_cancelled``, ``ground_truth``) the task holds once the
        server applied them, for :func:`content_hash`.
    """
    can_set = sum(bool(d.get("ground_truth")) for d in desired) <= 1
    rest = sorted(current, key=lambda c: c.get("id") or 0)
    left = list(range(len(desired)))

    def pair(match: Any, order: list[int]) -> None:
        for i in order:
            hit = next((c for c in rest if match(desired[i], c)), None)
            if hit is not None:
                pairs.append((i, hit))
                left.remove(i)
                rest.remove(hit)

    def author_ok(d: dict[str, Any], c: dict[str, Any]) -> bool:
        return not authors or "completed_by" not in d or annotation_author(c) == d["completed_by"]

    pairs: list[tuple[int, dict[str, Any]]] = []
    # Annotations that name their author go first, so one that does not cannot take their match.
    pair(lambda d, c: _same(d, c, "result", "was_cancelled", "ground_truth") and author_ok(d, c),
         sorted(left, key=lambda i: "completed_by" not in desired[i]))
    pair(lambda d, c: _same(d, c, "result", "was_cancelled", "ground_truth"), list(left))
    pair(lambda d, c: _same(d, c, "result", "was_cancelled"), list(left))
    pair(lambda d, c: True, list(left))
    ops: list[Op] = []
    held: list[dict[str, Any]] = []
    for i, cur in sorted(pairs, key=lambda p: p[1].get("id") or 0):
        d, want, have = desired[i], annotation_key(desired[i]), annotation_key(cur)
        body: dict[str, Any] = {k: want[k] for k in ("result", "was_cancelled") if _canon(want[k]) != _canon(have[k])}
        flag = have["ground_truth"]
        if want["ground_truth"] != flag and (can_set or not want["ground_truth"]):
            body["ground_truth"] = flag = want["ground_truth"]
        if authors and "completed_by" in d and annotation_author(cur) != d["completed_by"]:
            body["completed_by"] = d["completed_by"]
        if body and d.get("lead_time") is not None and d["lead_time"] != cur.get("lead_time"):
            body["lead_time"] = d["lead_time"]
        if body:
            ops.append(("update_annotation", cur["id"], body))
        held.append({**want, "ground_truth": flag})
    ops += [("delete_annotation", cur["id"]) for cur in rest]
    for i in left:
        body = {**desired[i], "ground_truth": bool(desired[i].get("ground_truth")) and can_set}
        ops.append(("create_annotation", body))
        held.append(annotation_key(body))
    # A ``ground_truth: true`` is sent only when desired has no other ground truth: the flags the
    # server clears are false in ``held`` already, so ``held`` is what the server holds.
    return ops, held


def sets_ground_truth(ops: Sequence[Op]) -> bool:
    """Whether an op sends ``ground_truth: true``: the server then clears it on the task's other annotations."""
    return any(op[0] in ("create_annotation", "update_annotation") and bool(op[-1].get("ground_truth"))
               for op in ops)


def plan_task_ops(desired: dict[str, Any], current: dict[str, Any], *,
                  authors: bool = False) -> tuple[list[Op], dict[str, Any]]:
    """Ops that make the server task ``current`` hold ``desired`` (an :func:`import_payload`), and
    the content it holds after them.

    Args:
        authors: match and set annotation authors too (see :func:`annotation_ops`).

    Returns:
        ``(ops, held)``: ``[]`` when nothing a write can change differs; else
        ``("patch_task", {"data", "meta"})`` if data or meta (without origin) differ, then annotation
        ops (:func:`annotation_ops`) and prediction ops (matched by content, the rest updated
        pairwise, deleted or created). ``held`` is the task (``data``, ``meta``, ``annotations``,
        ``predictions``) as the server holds it afterwards: :func:`content_hash` of it is what the
        id map records. It differs from ``desired`` only in ground truth flags that cannot be set
        in place.
    """
    ops: list[Op] = []
    if (desired["data"] != (current.get("data") or {})
            or strip_origin(desired["meta"]) != strip_origin(current.get("meta"))):
        ops.append(("patch_task", {"data": desired["data"], "meta": desired["meta"]}))
    annotation_part, annotations = annotation_ops(desired["annotations"], current.get("annotations") or [],
                                                  authors=authors)
    ops += annotation_part
    ops += _match(desired["predictions"], current.get("predictions") or [], prediction_key, "prediction")
    held = {"data": desired["data"], "meta": desired["meta"], "annotations": annotations,
            "predictions": desired["predictions"]}
    return ops, held


def task_ops(desired: dict[str, Any], current: dict[str, Any], *, authors: bool = False) -> list[Op]:
    """The ops of :func:`plan_task_ops` alone."""
    return plan_task_ops(desired, current, authors=authors)[0]


def authors_differ(want: dict[str, Any], have: dict[str, Any], users: set[int]) -> bool:
    """Whether ``have`` lacks an author that ``want`` gives an annotation of equal content.

    Only authors in ``users`` (the server's users) count: an author the server no longer has
    cannot be set, so a restore does not try. Within annotations of equal content any pairing
    is as good as another, so it is enough that the known authors of ``want``'s annotations of
    each content are among ``have``'s.
    """
    wanted: dict[str, list[int]] = {}
    for a in want.get("annotations") or []:
        who = annotation_author(a)
        if who in users:
            wanted.setdefault(_canon(annotation_key(a)), []).append(who)
    for key, authors in wanted.items():
        there = [annotation_author(a) for a in have.get("annotations") or [] if _canon(annotation_key(a)) == key]
        for user in authors:
            if user not in there:
                return True
            there.remove(user)
    return False


def control_names(label_config: str) -> set[str]:
    """Names of a label config's control tags (elements with ``name`` and ``toName``)."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise PushError(f"the target project's label config is not valid XML: {exc}") from None
    return {el.attrib["name"] for el in root.iter() if "name" in el.attrib and "toName" in el.attrib}


def result_names(task: dict[str, Any]) -> set[str]:
    """The ``from_name`` of every annotation and prediction result region of a task."""
    return {r["from_name"] for key in ("annotations", "predictions") for item in task.get(key) or []
            for r in item.get("result") or [] if isinstance(r, dict) and r.get("from_name")}


def batch_stamps(batch: pa.RecordBatch) -> list[tuple[int, int, int, int, int]]:
    """:func:`ls_space_sync.changes.stamp_of` of every row of a stored batch, computed in Arrow."""
    cols = [batch.column(c).cast(pa.int64()) for c in ("created_at", "updated_at")]
    cols += [pc.fill_null(batch.column(c), 0) for c in STAMP_COLUMNS[3:]]
    return list(zip(*(c.to_pylist() for c in cols)))


def batch_result_names(batch: pa.RecordBatch, rows: Sequence[int]) -> set[str]:
    """:func:`result_names` of some rows of a stored batch, read from the Arrow columns (no task
    JSON is built); raises :class:`PushError` as :func:`require_results` does."""
    names: set[str] = set()
    take = pa.array(rows, pa.int64())
    for key in ("annotations", "predictions"):
        items = batch.column(key).take(take)
        flat = items.flatten()
        if len(flat) == 0:
            continue
        results = flat.field("result").to_pylist()
        if key == "annotations" and None in results:
            extras = flat.field("extra").to_pylist()
            parents = pc.list_parent_indices(items).to_pylist()
            for pos, (result, extra) in enumerate(zip(results, extras)):
                if result is None and extra and "result" in json.loads(extra).get("__absent__", []):
                    task_id = batch.column("id")[rows[parents[pos]]].as_py()
                    require_results({"id": task_id, "annotations": [{}]})
        for text in {r for r in results if r}:
            regions = json.loads(text)
            if isinstance(regions, list):
                names |= {r["from_name"] for r in regions if isinstance(r, dict) and r.get("from_name")}
    return names


def require_results(task: dict[str, Any]) -> None:
    """Raise :class:`PushError` if a stored task's annotations lack their ``result`` key.

    Such rows come from a listing that trimmed the annotation objects (on Label Studio 1.23.2,
    ``include=`` applies to the nested annotations too); pushing them would write empty annotations.
    """
    if any("result" not in a for a in task.get("annotations") or []):
        raise PushError(
            f"stored task {task.get('id')} has annotations without a result: this version was pulled with a "
            "task listing that trimmed the annotation objects (sync.task_fields: core on Label Studio 1.23), "
            "so pushing it would write empty annotations; pull the project into a new data_dir with "
            "sync.task_fields: all and push from there"
        )


def check_label_config(label_config: str, names: set[str], project_id: int) -> None:
    """Raise :class:`LabelConfigMismatch` naming the control tags the rows use and the config lacks."""
    missing = sorted(names - control_names(label_config))
    if missing:
        raise LabelConfigMismatch(
            f"project {project_id}'s label config has no control tag named {', '.join(missing)}, which the rows' "
            "annotation/prediction results use (from_name); add them to its label config, push to a project "
            "with a fitting one, or use --new-project (created with the source's label config)"
        )



# --- a version against the project ------------------------------------------------------------

TaskKey = tuple[int, Any]  # (task id, created_at): a task's identity, as ids are reused


def plan_task_changes(
    wanted: Mapping[TaskKey, tuple[Any, dict[str, Any]]],
    current: Mapping[TaskKey, tuple[Any, dict[str, Any]]],
    users: set[int] | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], dict[str, Any]]], list[int]]:
    """Plan what makes a project holding the ``current`` rows hold the ``wanted`` ones.

    Args:
        wanted, current: ``{(id, created_at): (stamp, stored row)}``; rows whose stamps are equal
            are not read further.
        users: the server's user ids; when given, a task whose content is equal but whose
            annotations lack authors ``wanted`` gives them (:func:`authors_differ`) is an update too.

    Returns:
        ``(create, update, delete)``: tasks of ``wanted`` the project lacks (in key order),
        ``(wanted task, current task)`` pairs whose content (or, with ``users``, authors) differs,
        and the ids of current tasks ``wanted`` does not have (sorted). A current task that holds
        the content of a missing one (restored earlier under a new id) is neither deleted nor
        created again, so applying a plan twice changes nothing the second time.
    """
    create: list[dict[str, Any]] = []
    update: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for key, (stamp, row) in sorted(wanted.items()):
        if key not in current:
            create.append(row_to_task(row))
            continue
        cur_stamp, cur_row = current[key]
        if cur_stamp == stamp:
            continue
        want, have = row_to_task(row), row_to_task(cur_row)
        if content_hash(want) != content_hash(have) or (users is not None and authors_differ(want, have, users)):
            update.append((want, have))
    spare: dict[str, list[int]] = {}
    for key, (_, row) in current.items():
        if key not in wanted:
            spare.setdefault(content_hash(row_to_task(row)), []).append(key[0])
    keep = []
    for task in create:
        twins = spare.get(content_hash(task))
        if twins:
            twins.pop()
        else:
            keep.append(task)
    return keep, update, sorted(i for ids in spare.values() for i in ids)
