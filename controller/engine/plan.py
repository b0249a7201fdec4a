"""Planning for proposals: a pure function from what was observed to the actions to take.

The reconciler observes one proposal head (the specs at that commit, each
model's cache key, what the store knows of earlier runs) and asks
:func:`plan_proposal` what to do. Nothing here touches git, the store or a
runner, so every rule of "what happens on a push" is tested without backends.

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
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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


Action = StartRun | ResumeRun | ReuseRun | CancelRun | ReportSpecErrors | Rejudge


def plan_proposal(
    *,
    ref: str,
    commit: str,
    heads: Sequence[ModelHead],
    running_here: Collection[int] = (),
    compare: bool = True,
) -> list[Action]:
    """The actions for one proposal head; ``running_here`` has the ids of the runs this controller runs.

    ``compare=False`` (the release branch, whose runs become production) never
    judges a finished run again.
    """
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
