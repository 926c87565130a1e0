"""Mirror pairs: pull a source project into its dataset and push each new version to a target;
with ``both_ways``, pull the target too and push its own edits back to the source.

One pass of a pair A -> B (:func:`mirror_once`), the same for ``ls-space-sync mirror`` and the daemon:

1. pull A (``Syncer.run_once``);
2. both ways: pull B, so B's own edits are in B's dataset before a push could overwrite them;
3. push A's latest version to B: only rows whose content differs from what A and B last agreed
   on (the id map's content hash), ``filter`` applied, hard deletes followed if ``delete``;
4. both ways, if step 3 moved tasks: pull B again (it records what was just pushed);
5. both ways: push B's latest version back to A, the same way.

No echo: a task pushed A -> B comes back from B's pull with a new ``updated_at`` but the content
A holds, so step 5 sends nothing for it (content is compared, not ``updated_at``); a task B got
from A carries A's origin in its meta, so even without the id map it is linked back, never
imported into A again. When both sides changed the same task between passes, A (the source)
wins; B's edit stays in B's dataset history (step 2). Two projects mirroring each other converge
and then stay quiet: a pass without edits commits no version and sends no write request.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ls_space_sync.push.engine import PushResult, push
from ls_space_sync.settings import MirrorSettings
from ls_space_sync.store.state import MirrorTarget

if TYPE_CHECKING:  # annotations only: a pass runs its pulls through the syncer it is given
    from ls_space_sync.pull.run import RunResult

log = logging.getLogger(__name__)


@dataclass
class MirrorResult:
    """What one pass of a mirror pair did (:func:`mirror_once`). Counts are tasks."""

    source: int  # the source project id
    target: int | None  # the target project id; None while no pass has created it (empty source)
    pulls: list[str] = field(default_factory=list)  # RunResult.summary() of each pull, in order
    runs: list[RunResult] = field(default_factory=list)  # the pulls' results, in order
    pushes: list[PushResult] = field(default_factory=list)  # the pushes' results: source -> target, then back
    versions: int = 0  # versions the pulls committed (a pull that changed nothing commits none)
    moved: int = 0  # tasks the pushes created, updated or deleted

    @property
    def quiet(self) -> bool:
        """Whether the pass committed no version and moved no task."""
        return self.versions == 0 and self.moved == 0

    def as_dict(self) -> dict[str, Any]:
        """The pass as plain JSON-able values: the fields (runs and pushes as dicts), then ``quiet``."""
        return asdict(self) | {"quiet": self.quiet}


def mirror_key(pair: MirrorSettings) -> str:
    """A pair's name in job ids, logs and metrics: ``<source>-<target>`` as configured
    (``<source>-new`` when the first pass creates the target)."""
    return f"{pair.source}-{'new' if pair.target is None else pair.target}"


def mirror_target(syncer: Any, pair: MirrorSettings) -> int | None:
    """The pair's target project: configured, or created by an earlier pass, or ``None`` yet."""
    if pair.target is not None:
        return pair.target
    with syncer.state.Session() as s:
        row = s.get(MirrorTarget, pair.source)
        return row.target_project if row else None


def mirror_once(syncer: Any, pair: MirrorSettings) -> MirrorResult:
    """Run one pass of a mirror pair (see the module docstring).

    Args:
        syncer: the :class:`ls_space_sync.pull.run.Syncer` whose client, state and store to use.
        pair: ``source``, ``target`` (``None``: create a project on the first push), ``both_ways``,
            ``delete``, ``filter`` (a SQL predicate for the source rows pushed to the target).

    Returns:
        The pulls and pushes of the pass, in order, with the versions committed and tasks moved.

    Raises:
        ProjectLocked: a pull of one of the projects is running elsewhere (try again later).
        LabelStudioError, StoreError, PushError: as ``run_once`` and ``push``.
    """
    out = MirrorResult(pair.source, mirror_target(syncer, pair))

    def pull(project_id: int) -> None:
        result = syncer.run_once(project_id, trigger="mirror")
        out.pulls.append(result.summary())
        out.runs.append(result)
        if result.status == "succeeded":  # skipped: nothing changed, no version
            out.versions += 1

    def push_to(source: int, target: int | None, **kwargs: Any) -> int:
        if not syncer.store(source).exists():
            return 0  # an empty project: nothing to push, nothing to delete
        result = push(syncer, source, target_project=target, delete=pair.delete, trigger="mirror", **kwargs)
        out.pushes.append(result)
        out.moved += result.moved
        if target is None:
            _remember(syncer, pair.source, result.target_project)
            out.target = result.target_project
        return result.moved

    pull(pair.source)
    target = out.target
    if pair.both_ways and target is not None:
        pull(target)
    moved = push_to(pair.source, target, where=pair.filter,
                    title=f"Mirror of project {pair.source}" if target is None else None)
    target = out.target
    if pair.both_ways and target is not None:
        if moved:
            pull(target)
        push_to(target, pair.source)
    return out


def summary_lines(result: MirrorResult, pair: MirrorSettings) -> list[str]:
    """A pass of :func:`mirror_once` for people: a headline, then one line per pull and per push.

    ``mirror 18 -> 19 (both ways): quiet``, or ``...: 1 new versions, 2 tasks moved``; then
    ``pull project 18: no change +0 ~0 -0 (0.4 s, 2 requests)`` and
    ``push 19 -> 18: +1 ~1 -0 (2 echoes, 0 conflicts)`` (``, 1 reused ids`` when a linked task's id
    now holds another task, which the push left alone).
    """
    state = "quiet" if result.quiet else f"{result.versions} new versions, {result.moved} tasks moved"
    lines = [f"mirror {result.source} -> {result.target}{' (both ways)' if pair.both_ways else ''}: {state}"]
    lines += [f"pull {line}" for line in result.pulls]
    for p in result.pushes:
        reused = f", {p.reused} reused ids" if p.reused else ""
        lines.append(f"push {p.source_project} -> {p.target_project}: +{p.created} ~{p.updated} "
                     f"-{p.deleted} ({p.echoes} echoes, {p.conflicts} conflicts{reused})")
    return lines


def _remember(syncer: Any, source: int, target: int) -> None:
    with syncer.state.Session.begin() as s:
        s.merge(MirrorTarget(source_project=source, target_project=target))
    log.info("mirror of project %s: created project %s as its target", source, target)
