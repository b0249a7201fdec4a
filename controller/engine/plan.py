"""Planning for proposals and releases: pure functions from what was observed to the actions to take.

The proposal reconciler (:mod:`controller.engine.proposals`) observes one
proposal head (the specs at that commit, each model's cache key, what the
store knows of earlier runs, whether the trust gate admits the head) and asks
:func:`plan_proposal` what to do; it asks :func:`plan_release` for the release
branch (main) and :func:`plan_launches` which queued runs start now. Nothing
here touches git, the store or a runner, so every rule of "what happens on a
push" and "what happens on a merge" is tested without backends.

A head the trust gate does not admit (an untrusted author's, Invariant 2)
runs nothing: its models are held, and told so once per head.

Rules, per model the proposal changes:

- a model whose spec has errors gets an error report, and nothing runs for it;
  the other models are planned as usual (a bad spec blocks only itself);
- a head already planned (the latest run on this ref is at this commit) needs
  nothing, unless its run was queued or running in a controller that is gone,
  which is resumed, or its result was compared with another production
  version than the one serving now, which is judged and reported again
  against the new one (never trained again);
- a newer head cancels the older head's run when it is still going;
- a cache key that already has a successful run reuses it and runs nothing;
- otherwise a run starts.

Rules for the release branch, per model on it (:func:`plan_release`): a model
whose content (cache key) already has a run there needs no other — a finished
one whose version was never registered (the controller stopped in between)
is released now when it passed its judged gates; a queued or running one
left by a stopped controller is resumed where it is, even at an older commit
of main. Every other model is planned as a proposal head whose runs become
production (never judged again).

Starting runs (:func:`plan_launches`): the oldest queued runs first, while
fewer than the limit run; a queued run of a proposal that moved on before it
ran is dropped, one whose environment names a pipeline runner this
controller lacks fails to start (and takes no room), one whose model is gone
from its commit waits.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from controller.specs.types import Model, SpecError

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class PriorRun:
    """What planning needs to know of a stored run."""

    id: int
    model: str
    commit: str
    cache_key: str
    status: str  # queued | running | succeeded | failed | error | cancelled
    compared_with: int | None = None  # the production version its gates were judged against
    gates: tuple[str, ...] = ()  # the outcomes of its judged gates; none when not judged (or no gates)
    registered: bool = False  # a model version was registered from it

    @property
    def finished(self) -> bool:
        return self.status not in ACTIVE


@dataclass(frozen=True)
class ModelHead:
    """One model a proposal changes, as observed at the proposal's head."""

    name: str
    model: Model | None  # None when its spec has errors
    cache_key: str | None = None
    errors: tuple[SpecError, ...] = ()
    latest: PriorRun | None = None  # the latest run of this model on this proposal
    reusable: PriorRun | None = None  # a successful run anywhere with the same cache key
    production: int | None = None  # the version serving the model's production environment now


@dataclass(frozen=True)
class StartRun:
    model: str
    ref: str
    commit: str
    cache_key: str


@dataclass(frozen=True)
class ResumeRun:
    """Start again a run that was queued or running when the controller stopped."""

    run_id: int
    model: str
    ref: str
    commit: str


@dataclass(frozen=True)
class ReuseRun:
    model: str
    ref: str
    commit: str
    cache_key: str
    source_run: int


@dataclass(frozen=True)
class Rejudge:
    """Judge a finished run's gates again and refresh its report: production has moved on."""

    run_id: int
    model: str
    ref: str
    commit: str
    production: int | None


@dataclass(frozen=True)
class CancelRun:
    run_id: int
    model: str
    reason: str


@dataclass(frozen=True)
class ReportSpecErrors:
    model: str
    ref: str
    commit: str
    errors: tuple[SpecError, ...]


@dataclass(frozen=True)
class HoldHead:
    """Run nothing for an untrusted head and say why on each of its models' status (once per head)."""

    ref: str
    commit: str
    models: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Release:
    """Hand a judged run of the release branch to the release hook: it becomes a version and a rollout."""

    run_id: int
    model: str


@dataclass(frozen=True)
class LaunchRun:
    run_id: int
    model: str
    ref: str
    commit: str


@dataclass(frozen=True)
class FailToStart:
    """A queued run that cannot start here (its runner is missing): an error, reported like a finished run."""

    run_id: int
    model: str
    reason: str


@dataclass(frozen=True)
class DropQueued:
    """A queued run that will never start: its proposal moved on before it ran."""

    run_id: int
    reason: str


@dataclass(frozen=True)
class Trust:
    """Whether the trust gate admits a head, why not, and whether that was said already."""

    admitted: bool
    reason: str = ""
    told: bool = False


@dataclass(frozen=True)
class QueuedRun:
    """A queued run, as starting it needs: is its model at its commit, can a runner here take it."""

    id: int
    model: str
    ref: str
    commit: str
    found: bool = True  # the model is valid at the run's commit
    runner_error: str | None = None  # why no runner of this controller can take it


Action = (
    StartRun
    | ResumeRun
    | ReuseRun
    | CancelRun
    | ReportSpecErrors
    | Rejudge
    | HoldHead
    | Release
    | LaunchRun
    | FailToStart
    | DropQueued
)


def plan_proposal(
    *,
    ref: str,
    commit: str,
    heads: Sequence[ModelHead],
    running_here: Collection[int] = (),
    compare: bool = True,
    trust: Trust | None = None,
) -> list[Action]:
    """The actions for one proposal head; ``running_here`` has the ids of the runs this controller runs.

    ``compare=False`` (the release branch, whose runs become production) never
    judges a finished run again. ``trust`` is the trust gate's answer for the
    head (``None``: every head is admitted).
    """
    if trust is not None and not trust.admitted and heads:
        held = tuple(head.name for head in heads)
        return [] if trust.told else [HoldHead(ref, commit, held, trust.reason)]
    actions: list[Action] = []
    for head in heads:
        latest = head.latest
        if latest is not None and latest.commit == commit:
            if latest.status in ACTIVE and latest.id not in running_here:
                actions.append(ResumeRun(latest.id, head.name, ref, commit))
            elif compare and _compared_with_another(latest, head):
                actions.append(Rejudge(latest.id, head.name, ref, commit, head.production))
            continue
        if latest is not None and latest.status in ACTIVE:
            actions.append(CancelRun(latest.id, head.name, f"superseded by {commit[:10]}"))
        if head.errors or head.model is None or head.cache_key is None:
            actions.append(ReportSpecErrors(head.name, ref, commit, head.errors))
            continue
        reusable = head.reusable
        if reusable is None and latest is not None and latest.cache_key == head.cache_key:
            reusable = latest if latest.status == "succeeded" else None
        if reusable is not None:
            actions.append(ReuseRun(head.name, ref, commit, head.cache_key, reusable.id))
        else:
            actions.append(StartRun(head.name, ref, commit, head.cache_key))
    return actions


def _compared_with_another(latest: PriorRun, head: ModelHead) -> bool:
    return latest.status == "succeeded" and head.model is not None and latest.compared_with != head.production


def plan_closed(*, ref: str, runs: Sequence[PriorRun]) -> list[Action]:
    """A proposal that is gone (branch deleted or merged): cancel what still runs for it."""
    return [CancelRun(run.id, run.model, f"proposal {ref} closed") for run in runs if run.status in ACTIVE]


def plan_release(
    *, ref: str, commit: str, heads: Sequence[ModelHead], running_here: Collection[int] = ()
) -> list[Action]:
    """The actions that give every model on the release branch a version of its content.

    ``heads`` are main's models at ``commit``, each with its latest run on ``ref``.
    """
    actions: list[Action] = []
    rest: list[ModelHead] = []
    for head in heads:
        latest = head.latest
        if latest is None or latest.cache_key != head.cache_key:
            rest.append(head)
        elif latest.finished:
            if _unreleased(latest, head.model):
                actions.append(Release(latest.id, head.name))
        elif latest.id not in running_here and latest.commit != commit:
            actions.append(ResumeRun(latest.id, head.name, ref, latest.commit))  # same content, older commit
        elif latest.id not in running_here:
            rest.append(head)
    planned = plan_proposal(ref=ref, commit=commit, heads=rest, running_here=running_here, compare=False)
    return actions + planned


def _unreleased(run: PriorRun, model: Model | None) -> bool:
    """A succeeded run whose gates passed, judged (when the model has gates), with no version yet."""
    if run.status != "succeeded" or run.registered or "failed" in run.gates:
        return False
    return bool(run.gates) or model is None or not model.gates


def plan_launches(
    *,
    queued: Sequence[QueuedRun],
    heads: Mapping[str, str],
    release_branch: str,
    running: Collection[int],
    limit: int,
) -> list[Action]:
    """Which queued runs start now, oldest first, while fewer than ``limit`` run; ``heads``: ref → commit."""
    actions: list[Action] = []
    busy = len(running)
    for run in sorted(queued, key=lambda r: r.id):
        if busy >= limit:
            break
        if run.id in running:
            continue
        if run.ref != release_branch and heads.get(run.ref) != run.commit:
            actions.append(DropQueued(run.id, "the proposal moved on before it ran"))
        elif not run.found:
            continue
        elif run.runner_error is not None:
            actions.append(FailToStart(run.id, run.model, run.runner_error))
        else:
            actions.append(LaunchRun(run.id, run.model, run.ref, run.commit))
            busy += 1
    return actions
