"""Push, mirror and restore against an in-memory Label Studio with write endpoints (respx).
The pure content/diff functions are in test_taskdiff.py; the real server in tests/integration/test_push.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from ls_space_sync.labelstudio.client import LabelStudioError, ServerUnavailable
from ls_space_sync.push.mirror import mirror_once, summary_lines
from ls_space_sync.push.engine import ORIGIN_KEY, LabelConfigMismatch, PushError, PushLink, _micros, _Push, content_hash, push
from ls_space_sync.push.restore import apply_restore, plan_restore
from ls_space_sync.settings import MirrorSettings, load_settings
from ls_space_sync.store.state import FAILED, SKIPPED, SUCCEEDED
from ls_space_sync.pull.run import Syncer
from tests.fakes import CONFIG, KEY, URL, FakeLabelStudio, choice


def make_syncer(tmp_path, **overrides):
    settings = load_settings(
        env={"LABEL_STUDIO_URL": URL, "LABEL_STUDIO_API_KEY": KEY},
        overrides={"data_dir": str(tmp_path), "sync": {"lag_seconds": 0, "page_size": 50},
                   "push": {"chunk_size": 4}, "label_studio": {"retries": 2, "retry_max_wait_seconds": 0.01},
                   **overrides},
    )
    return Syncer(settings)


def seed(fake: FakeLabelStudio, n: int = 6) -> int:
    pid = fake.project("source")
    for i in range(n):
        fake.import_task(pid, {"data": {"text": f"t{i}"}, "meta": {"batch": i // 3},
                               "annotations": [{"result": choice("a"), "completed_by": 2, "ground_truth": False,
                                                "lead_time": 1.5}] if i % 2 == 0 else
                               [{"result": [], "was_cancelled": True, "completed_by": 7}],
                               "predictions": [{"result": choice("b"), "score": 0.25, "model_version": "m1"}]})
    return pid


def contents(fake: FakeLabelStudio, pid: int) -> list[str]:
    return sorted(content_hash(t) for t in fake.of(pid))


# --- push ----------------------------------------------------------------------------------

def test_push_to_new_project_carries_data_annotations_predictions_and_origin(tmp_path, fake):
    src = seed(fake)
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    result = push(syncer, src, version="run-000001")
    dst = result.target_project
    assert (result.created, result.new_project, result.status) == (6, True, SUCCEEDED)
    assert fake.projects[dst]["label_config"] == CONFIG
    assert contents(fake, dst) == contents(fake, src)
    imports = [w for w in fake.writes() if w.endswith("/import")]
    assert len(imports) == 2  # 6 tasks in chunks of 4
    pushed = fake.of(dst)
    assert pushed[0]["meta"][ORIGIN_KEY] == {"dataset": f"project-{src}", "version": 1, "source_project": src,
                                             "source_id": fake.of(src)[0]["id"],
                                             "source_created_at": fake.of(src)[0]["created_at"]}
    assert pushed[0]["annotations"][0]["completed_by"] == 2  # a known user keeps authorship
    assert pushed[1]["annotations"][0]["completed_by"] == 1  # user 7 is unknown: the pushing user
    assert result.authors_dropped == 3
    run = syncer.state.runs(src, kind="push")[0]
    assert (run.status, run.inserted, run.version, run.tag) == (SUCCEEDED, 6, 1, "run-000001")


def test_second_push_sends_only_changed_rows_in_place_and_follows_deletes(tmp_path, fake):
    src = seed(fake)
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    push(syncer, src, target_project=dst)
    fake.calls.clear()
    again = push(syncer, src, target_project=dst)
    assert (again.status, again.unchanged, again.requests, len(fake.calls)) == (SKIPPED, 6, 0, 0)

    ids = [t["id"] for t in fake.of(src)]
    fake.tasks[ids[0]]["annotations"][0]["result"] = choice("b")
    fake.touch(ids[0])
    fake.touch(ids[1])  # a stamp that moved with the same content: no request for it
    fake.tasks.pop(ids[5])
    syncer.run_once(src)
    before = {t["id"] for t in fake.of(dst)}
    fake.calls.clear()
    result = push(syncer, src, target_project=dst, delete=True)
    assert (result.created, result.updated, result.deleted, result.echoes) == (0, 1, 1, 1)
    assert fake.writes() == [f"PATCH /api/annotations/{fake.of(dst)[0]['annotations'][0]['id']}/",
                             "POST /api/dm/actions/"]
    assert {t["id"] for t in fake.of(dst)} < before  # same ids, minus the deleted one
    assert contents(fake, dst) == contents(fake, src)


def test_where_and_ids_select_rows_and_a_bad_filter_says_which_columns_exist(tmp_path, fake):
    src = seed(fake)
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    assert push(syncer, src, target_project=dst, where="cancelled_annotations = 0").created == 3
    first = fake.of(src)[1]["id"]
    assert push(syncer, src, target_project=dst, ids=[first]).created == 1
    with pytest.raises(PushError, match="SQL predicate over the columns id, project"):
        push(syncer, src, target_project=dst, where="no_such_column = 1")
    with pytest.raises(PushError, match="use `ls-space-sync restore"):
        push(syncer, src, target_project=src)


def test_label_config_mismatch_stops_before_any_write(tmp_path, fake):
    src = seed(fake)
    dst = fake.project("other", '<View><Text name="text" value="$text"/><Choices name="other" toName="text">'
                                '<Choice value="a"/></Choices></View>')
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    with pytest.raises(LabelConfigMismatch, match=f"project {dst}'s label config has no control tag named label"):
        push(syncer, src, target_project=dst)
    assert fake.of(dst) == [] and syncer.state.runs(src, kind="push")[0].status == FAILED


def test_rows_whose_annotations_were_stored_without_results_are_never_pushed(tmp_path, fake):
    src = seed(fake, 2)
    trimmed = fake.of(src)[0]
    # what a listing with include= returns on Label Studio 1.23.2: the annotation objects trimmed too
    trimmed["annotations"] = [{k: a[k] for k in ("id", "created_at", "updated_at")} for a in trimmed["annotations"]]
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    with pytest.raises(PushError, match=f"stored task {trimmed['id']} has annotations without a result"):
        push(syncer, src, target_project=dst)
    assert fake.of(dst) == []


def test_a_refused_import_passes_the_server_message_on(tmp_path, fake):
    src = seed(fake, 2)
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    fake.fail_import.append(httpx.Response(400, json={"validation_errors": {
        "non_field_errors": ['Error at item 0: "text" key is expected in task data']}}))
    with pytest.raises(LabelStudioError, match='refused the import of 2 tasks.*"text" key is expected in task data'):
        push(syncer, src, target_project=dst)


def test_an_import_that_timed_out_is_not_retried_and_the_next_push_links_what_arrived(tmp_path, fake):
    src = seed(fake, 6)
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    fake.fail_import += [None, "timeout after import"]  # the server imports the 2nd chunk, the client times out
    with pytest.raises(ServerUnavailable, match="run the push again"):
        push(syncer, src, target_project=dst)
    assert len(fake.of(dst)) == 6  # 4 + 2: the second import was sent once, not retried
    result = push(syncer, src, target_project=dst)
    assert (result.resumed, result.created) == (2, 0)
    assert len(fake.of(dst)) == 6 and contents(fake, dst) == contents(fake, src)


def test_a_push_killed_between_import_and_links_resumes_without_duplicates(tmp_path, fake, monkeypatch):
    src = seed(fake, 6)
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    real_save = _Push.save

    def die_after_first_chunk(self, links):
        if len(fake.of(dst)) > 4:  # the second chunk is imported, its links not yet written
            raise KeyboardInterrupt("killed")
        return real_save(self, links)

    monkeypatch.setattr(_Push, "save", die_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        push(syncer, src, target_project=dst)
    monkeypatch.setattr(_Push, "save", real_save)
    run = syncer.state.runs(src, kind="push")[0]
    syncer.state.finish_run(run.run_id, "running", finished_at=None)  # as SIGKILL would leave it
    result = push(syncer, src, target_project=dst)
    assert len(fake.of(dst)) == 6 and contents(fake, dst) == contents(fake, src)
    assert (result.resumed, result.created, result.updated) == (2, 0, 0)
    assert syncer.state.runs(src, kind="push")[1].status == FAILED  # the dead run is closed


def test_links_record_the_target_created_at_read_back_after_the_import(tmp_path, fake):
    src = seed(fake, 3)
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    push(syncer, src, target_project=dst)
    with syncer.state.Session() as s:
        links = {link.target_id: link.target_created for link in s.scalars(select(PushLink))}
    assert links == {t["id"]: _micros(t["created_at"]) for t in fake.of(dst)}
    reads = [r for r in fake.calls if r.url.path == "/api/tasks/" and r.url.params["project"] == str(dst)
             and r.url.params.get("include") == "id,created_at"]
    assert len(reads) == 1  # one read-back per imported chunk (3 tasks, chunks of 4)


def reused_target(tmp_path, fake) -> tuple[Any, int, int, int]:
    """Two source tasks pushed; the target's copy of the second deleted and its id given to another task."""
    src = seed(fake, 2)
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    push(syncer, src, target_project=dst)
    theirs = fake.of(dst)[1]["id"]
    fake.reuse(theirs, {"data": {"text": "the target's own"}})
    return syncer, src, dst, theirs


def test_a_target_task_whose_id_was_reused_is_left_alone_and_the_row_imported_again(tmp_path, fake, caplog):
    syncer, src, dst, theirs = reused_target(tmp_path, fake)
    row = fake.of(src)[1]
    row["data"] = {"text": "edited"}
    fake.touch(row["id"])
    syncer.run_once(src)
    fake.calls.clear()
    result = push(syncer, src, target_project=dst, delete=True)
    assert fake.tasks[theirs]["data"] == {"text": "the target's own"} and fake.tasks[theirs]["annotations"] == []
    assert not [w for w in fake.writes() if w.startswith("PATCH") or w == "POST /api/dm/actions/"]
    assert (result.created, result.updated, result.deleted, result.reused, result.conflicts) == (1, 0, 0, 1, 0)
    assert "1 target ids reused by another task (left alone)" in result.summary()
    assert "Label Studio reused their ids" in caplog.text
    assert sorted(t["data"]["text"] for t in fake.of(dst)) == ["edited", "t0", "the target's own"]
    assert push(syncer, src, target_project=dst, delete=True).moved == 0


def test_a_target_task_whose_id_was_reused_is_not_deleted_with_its_source_row(tmp_path, fake):
    syncer, src, dst, theirs = reused_target(tmp_path, fake)
    fake.tasks.pop(fake.of(src)[1]["id"])
    syncer.run_once(src, full_scan=True)
    result = push(syncer, src, target_project=dst, delete=True)
    assert theirs in fake.tasks and (result.deleted, result.reused) == (0, 1)
    with syncer.state.Session() as s:
        assert [link.target_id for link in s.scalars(select(PushLink))] == [fake.of(dst)[0]["id"]]


def test_a_link_without_target_created_at_is_trusted_only_on_the_origin_mark(tmp_path, fake):
    syncer, src, dst, theirs = reused_target(tmp_path, fake)
    with syncer.state.Session.begin() as s:  # as a push before the read-back left its links
        s.execute(update(PushLink).values(target_created=None))
    for row in fake.of(src):
        row["data"] = {"text": row["data"]["text"] + " edited"}
        fake.touch(row["id"])
    syncer.run_once(src)
    result = push(syncer, src, target_project=dst)
    ours = fake.of(dst)[0]
    assert ours["data"] == {"text": "t0 edited"} and fake.tasks[theirs]["data"] == {"text": "the target's own"}
    assert (result.updated, result.created, result.reused) == (1, 1, 1)
    with syncer.state.Session() as s:
        assert None not in [link.target_created for link in s.scalars(select(PushLink))]


def gt_pushed(tmp_path, fake, *annotations: dict[str, Any]) -> tuple[Any, int, int]:
    """A source task with these annotations, synced and pushed to a target."""
    src = fake.project("source")
    fake.import_task(src, {"data": {"text": "x"}, "annotations": list(annotations)})
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    push(syncer, src, target_project=dst)
    return syncer, src, dst


def link_hash(syncer) -> str:
    with syncer.state.Session() as s:
        [link] = s.scalars(select(PushLink)).all()
    return link.content_hash


def test_an_edit_next_to_imported_ground_truths_leaves_their_flags(tmp_path, fake):
    # issue 10 #2: imported without the key, both annotations are ground truths
    syncer, src, dst = gt_pushed(tmp_path, fake, {"result": choice("a")}, {"result": choice("b")})
    assert [a["ground_truth"] for a in fake.of(dst)[0]["annotations"]] == [True, True]
    fake.of(src)[0]["annotations"][1]["result"] = choice("c")
    fake.touch(fake.of(src)[0]["id"])
    syncer.run_once(src)
    fake.calls.clear()
    assert push(syncer, src, target_project=dst).updated == 1
    target = fake.of(dst)[0]
    assert [(a["result"], a["ground_truth"]) for a in target["annotations"]] == [(choice("a"), True),
                                                                                 (choice("c"), True)]
    assert json.loads(fake.calls[-1].content) == {"result": choice("c")}  # no flag named
    assert link_hash(syncer) == content_hash(target)
    assert push(syncer, src, target_project=dst).unchanged == 1


def test_a_ground_truth_set_in_place_is_read_back_and_recorded_as_the_server_holds_it(tmp_path, fake):
    syncer, src, dst = gt_pushed(tmp_path, fake, {"result": choice("a"), "ground_truth": False},
                                 {"result": choice("b"), "ground_truth": False})
    fake.of(src)[0]["annotations"][0]["ground_truth"] = True  # starred in the source
    fake.touch(fake.of(src)[0]["id"])
    syncer.run_once(src)
    fake.calls.clear()
    assert push(syncer, src, target_project=dst).updated == 1
    target = fake.of(dst)[0]
    patch = next(r for r in fake.calls if r.method == "PATCH")
    assert json.loads(patch.content) == {"ground_truth": True}
    # the server clears the flag on the task's other annotations: the task is read again after it
    after = fake.calls[fake.calls.index(patch) + 1:]
    assert [r.url.path for r in after] == ["/api/tasks/"] and str(target["id"]) in after[0].url.params["query"]
    assert [a["ground_truth"] for a in target["annotations"]] == [True, False]
    assert link_hash(syncer) == content_hash(target)


# --- mirror and restore --------------------------------------------------------------------

def test_mirror_both_ways_converges_then_stays_quiet(tmp_path, fake):
    a = seed(fake, 4)
    syncer = make_syncer(tmp_path)
    pair = MirrorSettings(source=a, target=None, both_ways=True)
    first = mirror_once(syncer, pair)
    b = first.target
    assert b != a and first.moved == 4 and contents(fake, b) == contents(fake, a)
    assert mirror_once(syncer, pair).quiet
    tb = fake.of(b)
    tb[0]["annotations"][0]["result"] = choice("b")  # edited in the target
    fake.touch(tb[0]["id"])
    fake.import_task(b, {"data": {"text": "born in b"}})
    fake.import_task(a, {"data": {"text": "born in a"}})
    results = [mirror_once(syncer, pair) for _ in range(4)]
    assert results[-1].quiet and results[-2].quiet
    assert len(fake.of(a)) == len(fake.of(b)) == 6 and contents(fake, a) == contents(fake, b)
    fake.calls.clear()
    assert mirror_once(syncer, pair).quiet and fake.writes() == []


def test_a_mirror_pass_line_names_target_ids_that_were_reused(tmp_path, fake):
    syncer, src, dst, theirs = reused_target(tmp_path, fake)
    row = fake.of(src)[1]
    row["data"] = {"text": "edited"}
    fake.touch(row["id"])
    pair = MirrorSettings(source=src, target=dst)
    lines = summary_lines(mirror_once(syncer, pair), pair)
    assert lines[-1] == f"push {src} -> {dst}: +1 ~0 -0 (0 echoes, 0 conflicts, 1 reused ids)"
    assert fake.tasks[theirs]["data"] == {"text": "the target's own"}
    quiet = summary_lines(mirror_once(syncer, pair), pair)[-1]
    assert quiet == f"push {src} -> {dst}: +0 ~0 -0 (0 echoes, 0 conflicts)"


def test_a_conflict_lets_the_source_win_and_converges(tmp_path, fake):
    a = seed(fake, 2)
    syncer = make_syncer(tmp_path)
    pair = MirrorSettings(source=a, target=None, both_ways=True)
    b = mirror_once(syncer, pair).target
    ta, tb = fake.of(a)[0], fake.of(b)[0]
    ta["data"] = {"text": "edited in a"}
    tb["data"] = {"text": "edited in b"}
    fake.touch(ta["id"])
    fake.touch(tb["id"])
    res = mirror_once(syncer, pair)
    assert res.pushes[0].conflicts == 1
    while not mirror_once(syncer, pair).quiet:
        pass
    assert fake.tasks[ta["id"]]["data"] == fake.tasks[tb["id"]]["data"] == {"text": "edited in a"}
    # b's edit is kept in b's dataset history
    texts = {json.loads(r)["text"] for v in syncer.store(b).versions()
             for r in syncer.store(b).dataset(v["version"]).to_table(columns=["data_json"]).column(0).to_pylist()}
    assert "edited in b" in texts


def test_restore_recreates_updates_and_deletes_to_match_a_tag(tmp_path, fake):
    pid = seed(fake, 4)
    syncer = make_syncer(tmp_path)
    syncer.run_once(pid)
    want = contents(fake, pid)
    ids = [t["id"] for t in fake.of(pid)]
    fake.tasks[ids[0]]["annotations"].clear()
    fake.touch(ids[0])
    fake.tasks.pop(ids[1])
    fake.import_task(pid, {"data": {"text": "added later"}})
    plan = plan_restore(syncer, pid, "run-000001")
    assert (len(plan.create), len(plan.update), len(plan.delete)) == (1, 1, 1)
    assert "create 1 tasks" in plan.describe() and f"update 1 tasks in place: {ids[0]}" in plan.describe()
    done = apply_restore(syncer, plan)
    assert (done.created, done.updated, done.deleted) == (1, 1, 1)
    assert contents(fake, pid) == want
    assert fake.tasks[ids[0]]["annotations"][0]["completed_by"] == 2  # authorship restored
    assert not plan_restore(syncer, pid, "run-000001")


# --- command line --------------------------------------------------------------------------

def test_cli_push_and_restore(tmp_path, fake, monkeypatch):
    from click.testing import CliRunner

    from ls_space_sync.cli.console import main

    src = seed(fake, 3)
    monkeypatch.setenv("LABEL_STUDIO_URL", URL)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path / "data")]
    assert runner.invoke(main, [*args, "sync", "-p", str(src)]).exit_code == 0
    usage = runner.invoke(main, [*args, "push", "-p", str(src)])
    assert usage.exit_code == 2 and "exactly one of --to-project ID and --new-project" in usage.output
    pushed = runner.invoke(main, [*args, "push", "-p", str(src), "--tag", "run-000001", "--new-project"])
    assert pushed.exit_code == 0, pushed.output
    assert f"push project {src} v1 -> project" in pushed.output and "+3 ~0 -0" in pushed.output
    fake.tasks[fake.of(src)[0]["id"]]["annotations"].clear()
    fake.touch(fake.of(src)[0]["id"])
    declined = runner.invoke(main, [*args, "restore", "-p", str(src), "--tag", "run-000001"], input="n\n")
    assert "update 1 tasks in place" in declined.output and declined.exit_code == 1
    assert fake.of(src)[0]["annotations"] == []
    done = runner.invoke(main, [*args, "restore", "-p", str(src), "--tag", "run-000001", "--yes"])
    assert done.exit_code == 0 and "+0 ~1 -0" in done.output
    assert len(fake.of(src)[0]["annotations"]) == 1


def test_a_push_that_fails_midway_leaves_no_agreement_the_target_does_not_hold(tmp_path, fake, monkeypatch):
    """The chaos test's find (tests/integration/test_chaos_faults.py): a chunk updates task a in
    place, then a write for task b fails after the server applied it. Task a's new content must be
    recorded, b's must be unknown, so when the source goes back to earlier content the next push
    compares with the server instead of taking it for an echo."""
    src = seed(fake, 2)
    dst = fake.project("target")
    syncer = make_syncer(tmp_path)
    syncer.run_once(src)
    push(syncer, src, target_project=dst)
    a, b = [t["id"] for t in fake.of(src)]
    first_a = fake.tasks[a]["annotations"][0]["result"]
    first_b = fake.tasks[b]["predictions"][0]["result"]
    fake.tasks[a]["annotations"][0]["result"] = choice("b")
    fake.touch(a)
    fake.tasks[b]["predictions"][0]["result"] = choice("a")
    fake.touch(b)
    syncer.run_once(src)

    real = syncer.client.update_prediction

    def applied_then_lost(prediction_id, body):
        real(prediction_id, body)
        raise ServerUnavailable("the answer was lost after the server applied it")

    monkeypatch.setattr(syncer.client, "update_prediction", applied_then_lost)
    with pytest.raises(ServerUnavailable):
        push(syncer, src, target_project=dst)
    monkeypatch.undo()
    # Both go back to what the first push carried: a was written (its link must say so), b perhaps.
    fake.tasks[a]["annotations"][0]["result"] = first_a
    fake.touch(a)
    fake.tasks[b]["predictions"][0]["result"] = first_b
    fake.touch(b)
    syncer.run_once(src)
    push(syncer, src, target_project=dst)
    assert contents(fake, dst) == contents(fake, src)
    assert push(syncer, src, target_project=dst).status == SKIPPED
