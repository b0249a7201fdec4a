"""What the dashboard shows, read from the store: the facts behind every page and every API answer.

Called by :mod:`controller.ui.app` for each request. Everything is read
through the store's protocols and :mod:`controller.engine.status` (the same
reads ``flywheel models``, ``status``, ``versions``, ``history``, ``audit``
and ``review ls`` make), and returned as the API's shapes
(:mod:`controller.ui.schemas`); nothing is written. "Now" is the caller's,
from the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, Unpack

from controller.backends.store import (
    AuditEntry,
    AuditReads,
    ModelPage,
    ModelQuery,
    ModelVersion,
    NotFound,
    RolloutRecord,
    Run,
    ServingRecord,
)
from controller.engine.status import (
    ApprovalWait,
    ModelStatusRecords,
    ReviewStatusRecords,
    proposal_statuses,
    rollout_status,
)
from controller.specs.types import Catalog
from controller.ui.schemas import (
    ApprovalGiven,
    ApprovalMissing,
    AuditItem,
    AuditList,
    CheckPoint,
    DriftEnvironment,
    DriftReport,
    Links,
    ModelDetail,
    ModelItem,
    ModelList,
    PendingApproval,
    PendingList,
    ProposalItem,
    ProposalList,
    RolloutDetail,
    RolloutItem,
    Round,
    ServingShare,
    StageApprovals,
    TimelineItem,
    VersionItem,
    WeightPoint,
)

__all__ = ["DriftSource", "Facts", "HistoryReads", "LinkMaker", "ModelReads", "Unknown"]

DriftSource = Callable[[str], list[dict[str, Any]]]
"""A model's drift tables, one per environment serving it (``flywheel drift --json``'s shape)."""

_TIMELINE = 200  # audit entries on a model's page
_ROUND = "analysis.round"


class ModelReads(ModelStatusRecords, Protocol):
    """What the dashboard reads of models: what ``flywheel models`` does, and pages of them, and lineage."""

    def page_models(self, **query: Unpack[ModelQuery]) -> ModelPage: ...

    def get_version(self, model: str, number: int) -> ModelVersion: ...

    def get_run(self, run_id: int) -> Run: ...


class HistoryReads(ReviewStatusRecords, AuditReads, Protocol):
    """What the dashboard reads of what happened: rollouts, traffic over time, the audit log, reviews."""

    def get_rollout(self, rollout_id: int) -> RolloutRecord: ...

    def active_rollouts(self) -> list[RolloutRecord]: ...

    def serving_history(self, *, environment: str, model: str) -> list[ServingRecord]: ...


class Unknown(LookupError):
    """A model, rollout or proposal the store does not have (answered 404)."""


@dataclass(frozen=True)
class LinkMaker:
    """Addresses of a pull request and a commit on the forge, when the repository is on GitHub."""

    github_repository: str | None = None  # owner/name
    github_web: str = "https://github.com"

    def commit(self, sha: str) -> str | None:
        if self.github_repository is None or not sha:
            return None
        return f"{self.github_web}/{self.github_repository}/commit/{sha}"

    def pull_request(self, number: int | None) -> str | None:
        if self.github_repository is None or number is None:
            return None
        return f"{self.github_web}/{self.github_repository}/pull/{number}"


@dataclass(frozen=True)
class Facts:
    """The dashboard's reads of one store at one time, with main's catalog when it could be read."""

    models_store: ModelReads
    history: HistoryReads
    now: datetime
    catalog: Catalog | None = None
    links: LinkMaker = LinkMaker()
    pull_number: Callable[[str], int | None] = lambda branch: None  # a proposal branch's pull request
    drift_source: DriftSource | None = None  # None: drift is not read here (no router to ask)
    slack_thread: Callable[[str, int], str | None] = lambda model, version: None

    # ------------------------------------------------------------- models

    def models(self, **query: Unpack[ModelQuery]) -> ModelList:
        page = self.models_store.page_models(**query)
        items = []
        for summary in page.models:
            # What `flywheel models` shows of the newest rollout and the serving, without the release run.
            rollouts = self.models_store.rollouts_for(summary.model)
            newest = rollouts[0] if rollouts else None
            rollout = (
                rollout_status(self.models_store, newest, now=self.now, catalog=self.catalog)
                if newest
                else None
            )
            items.append(
                ModelItem(
                    model=summary.model,
                    versions=summary.versions,
                    latest=summary.latest,
                    latest_at=summary.latest_at,
                    rollout=rollout.id if rollout is not None else None,
                    condition=rollout.condition if rollout is not None else None,
                    reason=rollout.reason if rollout is not None else "",
                    serving=self._serving_now(
                        summary.model, _environments(rollouts, self.catalog, summary.model)
                    ),
                )
            )
        return ModelList(
            models=items,
            total=page.total,
            offset=query.get("offset", 0),
            limit=query.get("limit", 50),
            sort=query.get("sort", "name"),
            search=query.get("search"),
        )

    def model(self, name: str, *, at: datetime | None = None) -> ModelDetail:
        versions = self.models_store.list_versions(name)
        rollouts = self.models_store.rollouts_for(name)
        if not versions and not rollouts:
            raise Unknown(f"no model {name!r} in the registry")
        environments = _environments(rollouts, self.catalog, name)
        when = at or self.now
        serving = [
            ServingShare(environment=env, version=version, weight=weight)
            for env in environments
            for version, weight in self.models_store.served_at(environment=env, model=name, at=when)
        ]
        serving_now = serving if at is None else self._serving_now(name, environments)
        items = [
            VersionItem(
                version=v.number,
                content_id=v.content_id,
                run=v.run_id,
                reused_from=self._reused_from(v.run_id),
                commit=v.commit,
                data_fingerprints=v.data_fingerprints,
                params=v.params,
                metrics=v.metrics,
                image=v.image,
                environment_hash=v.environment_hash,
                artifact_digest=v.artifact_digest,
                artifact_uri=v.artifact_uri,
                created_at=v.created_at,
                serving_in=[s.environment for s in serving_now if s.version == v.number],
                links=Links(commit=self.links.commit(v.commit)),
            )
            for v in reversed(versions)
        ]
        return ModelDetail(
            model=name,
            latest=versions[-1].number if versions else None,
            versions=items,
            serving=serving,
            at=at,
            rollouts=[self._rollout_item(r) for r in rollouts],
            timeline=[_timeline(e) for e in reversed(self.history.audit(model=name, limit=_TIMELINE))],
        )

    def drift(self, name: str) -> DriftReport:
        if not self.models_store.list_versions(name):
            raise Unknown(f"no model {name!r} in the registry")
        tables = self.drift_source(name) if self.drift_source is not None else []
        return DriftReport(model=name, environments=[DriftEnvironment.model_validate(t) for t in tables])

    # ----------------------------------------------------------- rollouts

    def rollout(self, rollout_id: int) -> RolloutDetail:
        try:
            record = self.history.get_rollout(rollout_id)
        except NotFound as exc:
            raise Unknown(f"no rollout #{rollout_id}") from exc
        status = rollout_status(self.models_store, record, now=self.now, catalog=self.catalog)
        entries = self.history.audit(model=record.model, actions=[_ROUND], since=record.created_at)
        rounds = [self._round(e, record.model) for e in entries if e.version == record.version]
        weights = [
            WeightPoint(at=s.at, environment=env, weight=s.weight)
            for env in record.stages
            for s in self.history.serving_history(environment=env, model=record.model)
            if s.version == record.version and s.at >= record.created_at
        ]
        given = [
            StageApprovals(
                environment=env,
                given=[
                    ApprovalGiven(
                        user=a.user,
                        decision=a.decision,
                        channel=a.channel,
                        comment=a.comment,
                        at=a.created_at,
                        expires_at=a.expires_at,
                    )
                    for a in self.models_store.approvals_for(
                        model=record.model, version=record.version, environment=env
                    )
                ],
            )
            for env in record.stages
        ]
        version = self._version(record.model, record.version)
        return RolloutDetail(
            id=record.id,
            model=record.model,
            version=record.version,
            state=status.state,
            condition=status.condition,
            reason=status.reason,
            stages=list(record.stages),
            stage=status.stage,
            weight=status.weight,
            author=status.author,
            started_at=status.started_at,
            finished_at=status.finished_at,
            waiting_for=[w.message for w in status.waiting_for],
            rounds=rounds,
            weights=sorted(weights, key=lambda w: w.at),
            approvals=given,
            missing=_missing(status.approval),
            links=Links(
                commit=self.links.commit(version) if version else None,
                slack=self.slack_thread(record.model, record.version),
            ),
        )

    def pending(self) -> PendingList:
        """Rollouts at an approval gate that still lacks approvals, oldest first."""
        found = []
        for record in sorted(self.history.active_rollouts(), key=lambda r: r.id):
            if record.state != "gate":
                continue
            status = rollout_status(self.models_store, record, now=self.now, catalog=self.catalog)
            gate = _missing(status.approval)
            if gate is None or status.condition != "holding":
                continue
            found.append(
                PendingApproval(
                    rollout=record.id,
                    model=record.model,
                    version=record.version,
                    author=status.author,
                    waiting_since=record.updated_at,
                    gate=gate,
                )
            )
        return PendingList(pending=found)

    # ------------------------------------------------ proposals and audit

    def proposals(self, *, branch: str | None = None) -> ProposalList:
        statuses = proposal_statuses(self.history, branch=branch, catalog=self.catalog)
        if branch is not None and not statuses:
            raise Unknown(f"no proposal {branch!r} has been reviewed")
        reports = {(r.proposal, r.model): r.body for r in self.history.reviews(proposal=branch)}
        return ProposalList(
            proposals=[
                ProposalItem(
                    branch=p.branch,
                    model=p.model,
                    commit=p.commit,
                    state=p.state,
                    description=p.description,
                    updated_at=p.updated_at,
                    run=p.run,
                    compared_with=p.compared_with,
                    report=reports.get((p.branch, p.model), ""),
                    links=Links(
                        commit=self.links.commit(p.commit),
                        pull_request=self.links.pull_request(self.pull_number(p.branch)),
                    ),
                )
                for p in statuses
            ]
        )

    def audit(
        self,
        *,
        model: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 200,
    ) -> AuditList:
        entries = self.history.audit(
            model=model,
            actor=actor,
            actions=[action] if action else None,
            since=since,
            until=until,
            limit=limit,
        )
        return AuditList(entries=[_audit_item(e) for e in reversed(entries)], limit=limit)

    # ------------------------------------------------------------ helpers

    def _serving_now(self, name: str, environments: list[str]) -> list[ServingShare]:
        return [
            ServingShare(environment=env, version=version, weight=weight)
            for env in environments
            for version, weight in self.models_store.served_at(environment=env, model=name, at=self.now)
        ]

    def _reused_from(self, run_id: int) -> int | None:
        try:
            return self.models_store.get_run(run_id).reused_from
        except NotFound:
            return None

    def _version(self, model: str, number: int) -> str:
        try:
            return self.models_store.get_version(model, number).commit
        except NotFound:
            return ""

    def _rollout_item(self, record: RolloutRecord) -> RolloutItem:
        status = rollout_status(self.models_store, record, now=self.now, catalog=self.catalog)
        return RolloutItem(
            id=record.id,
            version=record.version,
            condition=status.condition,
            stages=list(record.stages),
            started_at=record.created_at,
            finished_at=record.finished_at,
        )

    def _round(self, entry: AuditEntry, model: str) -> Round:
        verdict: dict[str, Any] = entry.detail.get("verdict") or {}
        bounds = self._bounds(model)
        checks = []
        for result in verdict.get("results") or []:
            low, high = bounds.get(str(result.get("check")), (None, None))
            checks.append(
                CheckPoint(
                    check=str(result.get("check", "")),
                    value=result.get("value"),
                    samples=result.get("samples"),
                    rule=str(result.get("rule", "")),
                    outcome=str(result.get("outcome", "")),
                    min=low,
                    max=high,
                )
            )
        return Round(
            at=entry.at,
            environment=entry.environment,
            outcome=str(verdict.get("outcome", "")),
            summary=str(verdict.get("summary", "")),
            decision=entry.detail.get("decision") or None,
            checks=checks,
        )

    def _bounds(self, model: str) -> dict[str, tuple[float | None, float | None]]:
        spec = self.catalog.models.get(model) if self.catalog is not None else None
        if spec is None:
            return {}
        return {c.name: (c.min, c.max) for c in spec.rollout.analysis.checks}


def _environments(rollouts: list[RolloutRecord], catalog: Catalog | None, model: str) -> list[str]:
    spec = catalog.models.get(model) if catalog is not None else None
    environments = [s.environment for s in spec.rollout.stages] if spec is not None else []
    for record in rollouts:
        environments += [e for e in record.stages if e not in environments]
    return environments


def _missing(wait: ApprovalWait | None) -> ApprovalMissing | None:
    if wait is None:
        return None
    return ApprovalMissing(
        environment=wait.environment,
        rule=wait.rule,
        groups=list(wait.groups),
        required=wait.required,
        missing=wait.missing,
        approvers=list(wait.approvers),
        rejecters=list(wait.rejecters),
        message=wait.message,
    )


def _why(entry: AuditEntry) -> str:
    detail = entry.detail
    return str(detail.get("reason") or detail.get("why") or detail.get("comment") or "")


def _timeline(entry: AuditEntry) -> TimelineItem:
    return TimelineItem(
        at=entry.at, actor=entry.actor, action=entry.action, subject=entry.subject, why=_why(entry)
    )


def _audit_item(entry: AuditEntry) -> AuditItem:
    return AuditItem(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        model=entry.model,
        version=entry.version,
        environment=entry.environment,
        why=_why(entry),
    )
