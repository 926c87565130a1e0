"""changes: stamps -> change sets."""

from ls_space_sync.model.changes import ChangeSet, classify, full_scan_plan, stamp_of

A = {"created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "total_annotations": 0,
     "cancelled_annotations": 0, "total_predictions": 0}


def st(**kw):
    return stamp_of({**A, **kw})


def test_classify_inserts_updates_replaces_and_ignores_unchanged():
    stored = {1: st(), 2: st(), 3: st()}
    seen = {1: st(), 2: st(updated_at="2026-01-02T00:00:00Z"), 3: st(created_at="2026-01-05T00:00:00Z"), 4: st()}
    cs = classify(stored, seen)
    assert (cs.inserts, cs.updates, cs.replaces, cs.deletes) == ([4], [2], [3], [])
    assert cs.counts == {"inserted": 2, "updated": 1, "deleted": 1}


def test_counters_alone_make_an_update():
    assert classify({1: st()}, {1: st(total_predictions=1)}).updates == [1]


def test_microseconds_matter():
    assert st(updated_at="2026-01-01T00:00:00.000001Z") != st()


def test_full_scan_plan_finds_deletes_and_skips_done():
    stored = {1: st(), 2: st(), 3: st()}
    scanned = {1: st(), 3: st(total_annotations=1), 4: st(), 5: st()}
    to_fetch, deletes = full_scan_plan(stored, scanned, done=[5])
    assert (to_fetch, deletes) == ([3, 4], [2])


def test_empty_change_set_is_falsy():
    assert not ChangeSet()
    assert ChangeSet(deletes=[1])
