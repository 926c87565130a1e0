"""Restore: make a Label Studio project's tasks equal to one of its stored versions.

For when annotations were lost or spoiled. The plan compares the stored version with the
project as it is now, which a pull run just before the plan records (so what the restore
overwrites is itself kept as a version):

- tasks of the version the project no longer has are imported again (new task ids);
- tasks whose content (data, meta, annotations, predictions; :func:`ls_space_sync.taskdiff.content_of`)
  differs are changed in place, as a push does: task ids stay;
- annotations get the version's authors back (same server, same users): an annotation whose
  author differs from the version's is given it, one the restore writes carries it; an author
  the server no longer has is left to the server (it records the restoring user on a create);
- tasks the version did not have are deleted, except one that holds the content of a missing
  task (restored earlier under a new id): restoring twice changes nothing the second time.

After the writes a second pull records the restored state as a new version.

Ground truth flags follow Label Studio's rule for annotations written one at a time (a flag set
clears it on the task's other annotations): a task that held several flags (an import sets one on
every annotation without the key) keeps those of the annotations the restore does not edit; a flag
that cannot be set in place without clearing one of them is left as the server has it, and a task
whose only difference is such a flag is not part of the plan (:func:`ls_space_sync.taskdiff.annotation_ops`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from ls_space_sync.model.records import STAMP_COLUMNS
from ls_space_sync.model.taskdiff import (
    check_label_config,
    import_payload,
    plan_task_changes,
    require_results,
    result_names,
    task_ops,
)
from ls_space_sync.push.engine import apply_ops

log = logging.getLogger(__name__)


@dataclass
class RestorePlan:
    """What a restore of ``project_id`` to ``version`` changes. Tasks as Label Studio task JSON."""

    project_id: int
    version: int
    create: list[dict[str, Any]] = field(default_factory=list)  # tasks of the version to import
    update: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (wanted, current)
    delete: list[int] = field(default_factory=list)  # current task ids to delete
    pulled: str = ""  # the summary of the pull that recorded the project before the plan

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete)

    def describe(self, limit: int = 10) -> str:
        """Lines for people: counts, and the first ``limit`` task ids of each kind."""
        def ids(items: list[int]) -> str:
            more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(str(i) for i in items[:limit]) + more

        if not self:
            return f"project {self.project_id} already equals version {self.version}: nothing to do"
        lines = [f"restore project {self.project_id} to version {self.version}:"]
        if self.create:
            lines.append(f"  create {len(self.create)} tasks (were tasks {ids([t['id'] for t in self.create])}; "
                         "they get new ids)")
        if self.update:
            lines.append(f"  update {len(self.update)} tasks in place: {ids([c['id'] for _, c in self.update])}")
        if self.delete:
            lines.append(f"  delete {len(self.delete)} tasks: {ids(self.delete)}")
        return "\n".join(lines)


@dataclass
class RestoreResult:
    """What :func:`apply_restore` did to the project in Label Studio. Counts are tasks."""

    created: int = 0  # tasks of the version imported again (they got new ids)
    updated: int = 0  # tasks changed in place (ids kept)
    deleted: int = 0  # tasks the version did not have
    requests: int = 0  # HTTP requests the restore sent to Label Studio (the pulls' own not counted)
    pulled: str = ""  # RunResult.summary() of the pull that recorded the restored state

    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON-able values: ``{"created", "updated", "deleted", "requests", "pulled"}``."""
        return asdict(self)


def _tasks(ds: Any) -> dict[tuple[int, int], tuple[Any, Any]]:
    """``{(id, created_at): (stamp columns, full row)}`` of every row of a dataset version."""
    out = {}
    for batch in ds.to_batches():
        stamps = batch.select(STAMP_COLUMNS).to_pylist()
        full = batch.to_pylist()
        for s, row in zip(stamps, full):
            created = s["created_at"]
            out[(s["id"], created)] = (s, row)
    return out


def plan_restore(syncer: Any, project_id: int, version: int | str | None = None, *, as_of: Any = None) -> RestorePlan:
    """Pull the project, then compare the stored ``version`` (number or tag, or ``as_of`` a UTC
    time) with the pulled state.

    A task is an update when its content differs or its annotations lack authors the version
    gives them (users the server has), and a write can change it: a task whose only difference is
    a ground truth flag that cannot be set in place is left out, so the plan of a restore that
    has been applied is empty.

    Raises:
        StoreError: no such version or tag. LabelStudioError: the pull failed.
        PushError: the version's annotations were stored without results (see ``require_results``).
    """
    pulled = syncer.run_once(project_id, trigger="restore")
    store = syncer.store(project_id)
    wanted_ds = store.dataset(version, as_of=as_of)
    plan = RestorePlan(project_id, wanted_ds.version, pulled=pulled.summary())
    users = syncer.client.user_ids()
    plan.create, update, plan.delete = plan_task_changes(_tasks(wanted_ds), _tasks(store.dataset()), users)
    for task in plan.create + [want for want, _ in update]:
        require_results(task)
    plan.update = [(want, have) for want, have in update
                   if task_ops(import_payload(want, None, users), have, authors=True)]
    if len(plan.update) < len(update):
        log.info("project %s: %d tasks differ from version %s only in ground truth flags that Label Studio does "
                 "not let a write set without clearing another annotation's; left as they are", project_id,
                 len(update) - len(plan.update), plan.version)
    return plan


def apply_restore(syncer: Any, plan: RestorePlan, *, progress: bool = False) -> RestoreResult:
    """Carry out a plan from :func:`plan_restore`; then pull the project again.

    Args:
        syncer: the :class:`ls_space_sync.pull.run.Syncer` whose client, settings and store to use.
        plan: what to change; an empty plan writes nothing, and the project is still pulled.
        progress: show a progress bar (on stderr) over the tasks written.

    Returns:
        The counts of tasks created, updated and deleted, the requests sent, and the final pull's summary.

    Raises:
        LabelConfigMismatch: the project's label config lacks controls the version's results use.
        LabelStudioError: the server refused a request (its message passed on).
    """
    from tqdm import tqdm

    client = syncer.client
    out = RestoreResult()
    with client.counting() as requests:
        if plan:
            names = set().union(*(result_names(t) for t in plan.create + [w for w, _ in plan.update]))
            if names:
                check_label_config(client.project(plan.project_id).label_config, names, plan.project_id)
            users = client.user_ids()
            chunk = syncer.settings.push.chunk_size
            with tqdm(total=len(plan.create) + len(plan.update) + len(plan.delete), unit="task",
                      disable=not progress, desc=f"restore project {plan.project_id}") as bar:
                for start in range(0, len(plan.create), chunk):
                    part = plan.create[start:start + chunk]
                    client.import_tasks(plan.project_id, [import_payload(t, None, users) for t in part])
                    out.created += len(part)
                    bar.update(len(part))
                for want, have in plan.update:
                    ops = task_ops(import_payload(want, None, users), have, authors=True)
                    apply_ops(client, have["id"], ops)
                    out.updated += 1
                    bar.update(1)
                for start in range(0, len(plan.delete), chunk):
                    removed = plan.delete[start:start + chunk]
                    client.delete_tasks(plan.project_id, removed)
                    out.deleted += len(removed)
                    bar.update(len(removed))
    out.requests = requests.n
    out.pulled = syncer.run_once(plan.project_id, trigger="restore").summary()
    log.info("restored project %s to version %s: %s", plan.project_id, plan.version, json.dumps(out.as_dict()))
    return out
