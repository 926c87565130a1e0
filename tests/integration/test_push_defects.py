"""Push-side defects of issue 10, reproduced against a real Label Studio server.

- #2: an in-place write with ``ground_truth: true`` clears the flag on the task's other
  annotations (Label Studio 1.23.2, ``Task.ensure_unique_groundtruth``), while an import of
  annotations without the key sets it on all of them. A push, a mirror and a restore must not
  flip flags nobody edited, and the id map must record what the server holds.
- #3: SQLite Label Studio gives a new task ``max(id)+1``, so a target task id can come back for
  someone else's task; a push never overwrites or deletes that task. On PostgreSQL the id never
  comes back (a sequence): the same steps find the target task gone, and the push re-creates it.
- #6: a restore gives annotations the authors of the version back.

Projects are read through the server's own view (``GET /api/tasks?project=P&fields=all``).
"""

from __future__ import annotations

import contextlib

import httpx
import pytest
from sqlalchemy import select, update

from ls_space_sync.push.mirror import mirror_once
from ls_space_sync.push.engine import PushLink, push
from ls_space_sync.push.restore import apply_restore, plan_restore
from ls_space_sync.settings import MirrorSettings, load_settings
from ls_space_sync.pull.run import Syncer
from ls_space_sync.model.taskdiff import content_hash
from tests.lsserver import reuses_task_ids

pytestmark = [pytest.mark.integration, pytest.mark.label_studio_servers("sqlite", "postgresql")]

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/><Choice value="neutral"/></Choices>
</View>"""


def choice(value: str) -> list[dict]:
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]


def label(annotation: dict) -> str:
    return annotation["result"][0]["value"]["choices"][0]


def author(annotation: dict) -> int:
    who = annotation["completed_by"]
    return who["id"] if isinstance(who, dict) else who


def server_tasks(label_studio, project_id: int) -> dict[int, dict]:
    """The server's own view of a project's tasks, by id."""
    resp = httpx.get(f"{label_studio.url}/api/tasks/", headers={"Authorization": f"Token {label_studio.api_key}"},
                     params={"project": project_id, "fields": "all", "page_size": 1000}, timeout=60, trust_env=False)
    resp.raise_for_status()
    return {t["id"]: t for t in resp.json()["tasks"]}


def flags(label_studio, project_id: int) -> dict[str, list[tuple[str, bool]]]:
    """``{data.text: sorted [(choice, ground_truth)]}`` of a project."""
    return {t["data"]["text"]: sorted((label(a), a["ground_truth"]) for a in t["annotations"])
            for t in server_tasks(label_studio, project_id).values()}


def links_of(syncer, target: int) -> list[PushLink]:
    with syncer.state.Session() as s:
        return list(s.scalars(select(PushLink).where(PushLink.target_project == target)))


@pytest.fixture
def syncer(label_studio, tmp_path):
    settings = load_settings(
        env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
        overrides={"data_dir": str(tmp_path / "data"), "sync": {"lag_seconds": 0, "task_fields": "core"},
                   "push": {"chunk_size": 5}},
    )
    with Syncer(settings) as s:
        yield s


@pytest.fixture
def created(ls_client):
    """Ids of projects a push created (``--new-project``); deleted after the test."""
    ids: list[int] = []
    yield ids
    for project_id in ids:
        with contextlib.suppress(Exception):
            ls_client.projects.delete(id=project_id)


# --- #2: ground truth ------------------------------------------------------------------------

def imported_with_two_flags(label_studio, syncer, new_project, title: str) -> int:
    """A project with one task whose two annotations were imported without ``ground_truth``."""
    pid = new_project(CONFIG, title=title)
    syncer.client.import_tasks(pid, [{"data": {"text": "one"},
                                      "annotations": [{"result": choice("pos")}, {"result": choice("neg")}]}])
    # The server's own default on import: every annotation of the task is a ground truth.
    assert flags(label_studio, pid) == {"one": [("neg", True), ("pos", True)]}
    return pid


def edit_neg(label_studio, syncer, pid: int) -> None:
    [task] = server_tasks(label_studio, pid).values()
    neg = next(a for a in task["annotations"] if label(a) == "neg")
    syncer.client.update_annotation(neg["id"], {"result": choice("neutral")})  # no ground_truth key


def pushed_then_edited(label_studio, syncer, new_project, created) -> tuple[int, int]:
    """Steps 1-3 of issue 10 #2: import, sync, push to a new project, edit one annotation in the
    source, sync, push in place. Returns ``(source, target)``."""
    src = imported_with_two_flags(label_studio, syncer, new_project, "ground truth source")
    syncer.run_once(src)
    first = push(syncer, src, title="ground truth target")
    dst = first.target_project
    created.append(dst)
    assert flags(label_studio, dst) == {"one": [("neg", True), ("pos", True)]}
    [link] = links_of(syncer, dst)
    [target_task] = server_tasks(label_studio, dst).values()
    assert link.content_hash == content_hash(target_task)  # an import keeps the flags it is sent
    edit_neg(label_studio, syncer, src)
    syncer.run_once(src)
    result = push(syncer, src, target_project=dst)
    assert (result.created, result.updated, result.deleted) == (0, 1, 0)
    return src, dst


def test_an_in_place_push_keeps_ground_truth_on_the_task_s_other_annotations(label_studio, syncer, new_project,
                                                                             created):
    src, dst = pushed_then_edited(label_studio, syncer, new_project, created)
    # the annotation nobody edited keeps its flag
    assert flags(label_studio, dst) == flags(label_studio, src) == {"one": [("neutral", True), ("pos", True)]}
    # the id map records what the target holds
    [link] = links_of(syncer, dst)
    [target_task] = server_tasks(label_studio, dst).values()
    assert link.content_hash == content_hash(target_task)
    again = push(syncer, src, target_project=dst)
    assert (again.unchanged, again.moved, again.requests) == (1, 0, 0)


def test_a_mirror_both_ways_does_not_copy_a_flag_nobody_edited_back_into_the_source(label_studio, syncer,
                                                                                    new_project, created):
    src, dst = pushed_then_edited(label_studio, syncer, new_project, created)
    [before] = server_tasks(label_studio, src).values()
    pair = MirrorSettings(source=src, target=dst, both_ways=True)
    passes = [mirror_once(syncer, pair) for _ in range(2)]
    assert flags(label_studio, src) == flags(label_studio, dst) == {"one": [("neutral", True), ("pos", True)]}
    [after] = server_tasks(label_studio, src).values()
    assert after["annotations"] == before["annotations"]  # nothing written to the source's annotations
    assert [p.moved for p in passes] == [0, 0] and passes[1].quiet


def test_a_restore_keeps_ground_truth_on_the_annotations_it_does_not_edit(label_studio, syncer, new_project):
    pid = imported_with_two_flags(label_studio, syncer, new_project, "ground truth restore")
    assert syncer.run_once(pid).tag == "run-000001"
    edit_neg(label_studio, syncer, pid)
    plan = plan_restore(syncer, pid, "run-000001")
    assert (len(plan.create), len(plan.update), len(plan.delete)) == (0, 1, 0)
    apply_restore(syncer, plan)
    assert flags(label_studio, pid) == {"one": [("neg", True), ("pos", True)]}
    assert not plan_restore(syncer, pid, "run-000001")


def test_a_push_that_re_creates_a_lost_annotation_leaves_the_other_flags_alone(label_studio, syncer, new_project,
                                                                               created):
    """A create with ``ground_truth: true`` would clear the flag of the annotation that is still there."""
    src = imported_with_two_flags(label_studio, syncer, new_project, "ground truth create source")
    syncer.run_once(src)
    dst = push(syncer, src, title="ground truth create target").target_project
    created.append(dst)
    [target_task] = server_tasks(label_studio, dst).values()
    syncer.client.delete_annotation(next(a["id"] for a in target_task["annotations"] if label(a) == "neg"))
    result = push(syncer, src, target_project=dst, full=True)  # --full compares with the server: repairs it
    assert result.updated == 1
    kept = dict(flags(label_studio, dst)["one"])
    assert set(kept) == {"pos", "neg"} and kept["pos"] is True  # the untouched annotation keeps its flag
    [link] = links_of(syncer, dst)
    [target_task] = server_tasks(label_studio, dst).values()
    assert link.content_hash == content_hash(target_task)
    assert push(syncer, src, target_project=dst, full=True).moved == 0  # nothing more a write can change


# --- #3: reused target ids -------------------------------------------------------------------

def two_tasks_pushed(label_studio, syncer, new_project, created) -> tuple[int, int, dict[str, int]]:
    """Source with tasks a and b, synced and pushed to a new project; then the target's task b is
    deleted and a task of the target's own imported: Label Studio on SQLite gives it b's id, on
    PostgreSQL a new one."""
    src = new_project(CONFIG, title="reuse source")
    syncer.client.import_tasks(src, [{"data": {"text": "a"}}, {"data": {"text": "b"}}])
    syncer.run_once(src)
    dst = push(syncer, src, title="reuse target").target_project
    created.append(dst)
    by_text = {t["data"]["text"]: t["id"] for t in server_tasks(label_studio, dst).values()}
    syncer.client.delete_tasks(dst, [by_text["b"]])
    [own] = syncer.client.import_tasks(dst, [{"data": {"text": "the target's own task"},
                                              "annotations": [{"result": choice("pos"), "ground_truth": False}]}])
    if reuses_task_ids(label_studio):
        assert own == by_text["b"], "SQLite Label Studio did not reuse the id"
    else:
        assert own > by_text["b"], "PostgreSQL Label Studio reused a task id"
    return src, dst, by_text


def source_id(label_studio, project_id: int, text: str) -> int:
    return next(t["id"] for t in server_tasks(label_studio, project_id).values() if t["data"]["text"] == text)


def test_a_push_never_overwrites_a_target_task_whose_id_was_reused(label_studio, syncer, new_project, created):
    src, dst, by_text = two_tasks_pushed(label_studio, syncer, new_project, created)
    reused = int(reuses_task_ids(label_studio))
    [own_before] = [t for t in server_tasks(label_studio, dst).values() if t["data"]["text"] == "the target's own task"]
    syncer.client.update_task(source_id(label_studio, src, "b"), {"data": {"text": "b edited"}})
    syncer.run_once(src)
    result = push(syncer, src, target_project=dst, delete=True)
    tasks = server_tasks(label_studio, dst)
    assert tasks[own_before["id"]]["data"] == own_before["data"]  # the target's own task is untouched
    assert tasks[own_before["id"]]["annotations"] == own_before["annotations"]
    assert sorted(t["data"]["text"] for t in tasks.values()) == ["a", "b edited", "the target's own task"]
    # b's target task is gone either way: re-created; on SQLite its id holds another task (reused)
    assert (result.created, result.updated, result.deleted, result.unchanged, result.conflicts,
            result.reused) == (1, 0, 0, 1, 0, reused)
    assert ("1 target ids reused by another task (left alone)" in result.summary()) == bool(reused)
    # the link now points at the re-imported task, with its created_at
    b_link = next(link for link in links_of(syncer, dst) if link.source_id == source_id(label_studio, src, "b edited"))
    new_b = next(t for t in tasks.values() if t["data"]["text"] == "b edited")
    assert b_link.target_id == new_b["id"] != by_text["b"]
    assert b_link.target_created is not None
    assert push(syncer, src, target_project=dst, delete=True).moved == 0


def test_a_push_never_deletes_a_target_task_whose_id_was_reused(label_studio, syncer, new_project, created):
    src, dst, by_text = two_tasks_pushed(label_studio, syncer, new_project, created)
    syncer.client.delete_tasks(src, [source_id(label_studio, src, "b")])
    syncer.run_once(src, full_scan=True)
    result = push(syncer, src, target_project=dst, delete=True)
    texts = sorted(t["data"]["text"] for t in server_tasks(label_studio, dst).values())
    assert texts == ["a", "the target's own task"]
    assert (result.deleted, result.reused) == (0, int(reuses_task_ids(label_studio)))
    assert [link.target_id for link in links_of(syncer, dst)] == [by_text["a"]]  # b's link is gone with b


def test_links_from_before_the_fix_are_checked_by_the_origin_mark(label_studio, syncer, new_project, created):
    """Links an older push wrote carry no target ``created_at``: the task's origin meta decides."""
    src, dst, by_text = two_tasks_pushed(label_studio, syncer, new_project, created)
    with syncer.state.Session.begin() as s:
        s.execute(update(PushLink).where(PushLink.target_project == dst).values(target_created=None))
    for text in ("a", "b"):
        syncer.client.update_task(source_id(label_studio, src, text), {"data": {"text": f"{text} edited"}})
    syncer.run_once(src)
    result = push(syncer, src, target_project=dst)
    tasks = server_tasks(label_studio, dst)
    assert tasks[by_text["a"]]["data"] == {"text": "a edited"}  # ours (origin mark): updated in place
    assert sorted(t["data"]["text"] for t in tasks.values()) == ["a edited", "b edited", "the target's own task"]
    if reuses_task_ids(label_studio):
        assert tasks[by_text["b"]]["data"] == {"text": "the target's own task"}  # not ours: untouched
    else:
        assert by_text["b"] not in tasks
    assert (result.updated, result.created, result.reused) == (1, 1, int(reuses_task_ids(label_studio)))
    assert all(link.target_created is not None for link in links_of(syncer, dst))  # recorded now


# --- #6: authors after restore -----------------------------------------------------------------

def second_user(syncer) -> tuple[int, int]:
    users = syncer.client.user_ids()
    if len(users) < 2:
        syncer.client._raw("a second user", "api/users/", method="POST",
                           json_body={"email": "annotator@example.com", "username": "annotator"})
        users = syncer.client.user_ids()
    return min(users), max(users)


def test_a_restore_gives_annotations_the_version_s_authors_back(label_studio, syncer, new_project):
    me, other = second_user(syncer)
    assert me != other
    pid = new_project(CONFIG, title="authors restore")
    syncer.client.import_tasks(pid, [
        {"data": {"text": "relabelled"}, "annotations": [{"result": choice("pos"), "completed_by": other,
                                                          "ground_truth": False}]},
        {"data": {"text": "same labels"}, "annotations": [{"result": choice("neg"), "completed_by": other,
                                                           "ground_truth": False}]},
    ])
    assert syncer.run_once(pid).tag == "run-000001"
    tasks = {t["data"]["text"]: t for t in server_tasks(label_studio, pid).values()}
    for text, value in (("relabelled", "neutral"), ("same labels", "neg")):
        # the annotation is replaced by one of the API user's (completed_by = me)
        syncer.client.delete_annotation(tasks[text]["annotations"][0]["id"])
        syncer.client.create_annotation(tasks[text]["id"], {"result": choice(value), "ground_truth": False})
    plan = plan_restore(syncer, pid, "run-000001")
    assert sorted(c["data"]["text"] for _, c in plan.update) == ["relabelled", "same labels"]
    apply_restore(syncer, plan)
    got = {t["data"]["text"]: [(label(a), author(a)) for a in t["annotations"]]
           for t in server_tasks(label_studio, pid).values()}
    assert got == {"relabelled": [("pos", other)], "same labels": [("neg", other)]}
    assert not plan_restore(syncer, pid, "run-000001")
