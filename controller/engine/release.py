"""The registry step of a merge: a judged run of main becomes an immutable model version, then a rollout.

The proposal reconciler trains (or reuses) each model's content on the
release branch and, once a run passed its gates, calls
:meth:`Registrar.release`. The version records its lineage — the run, the
commit, data fingerprints, params, metrics, environment hash and artifact
digest — and is content-addressed by the store; when the run was a cache hit
of a proposal's run, the artifact is that run's, so what was reviewed is
what ships. The rollout starts at once, compared against what serves
production now.

Idempotent: registering the same run again returns the same version, and a
rollout exists once per version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Unpack

from controller.backends.forge import CommitState
from controller.backends.store import AuditEntry, ModelVersion, NewAuditEntry, NewVersion, Run
from controller.engine.judging import ProductionRecords, production_version
from controller.engine.rollout import RolloutEngine
from controller.specs.types import Catalog, Model

__all__ = ["Registrar", "RegistrarRecords"]

log = logging.getLogger("flywheel.release")


class RegistrarRecords(ProductionRecords, Protocol):
    """What :class:`Registrar` reads (what serves production, versions) and writes (a version, the audit)."""

    def list_versions(self, model: str) -> list[ModelVersion]: ...

    def register_version(self, **version: Unpack[NewVersion]) -> ModelVersion: ...

    def append_audit(self, **entry: Unpack[NewAuditEntry]) -> AuditEntry: ...


@dataclass(kw_only=True, eq=False)
class Registrar:
    """Registers versions from release runs and starts their rollouts.

    ``author_of(run)`` says who made the change (the author of the commit the
    reviewed run trained, for the local forge; the pull request's author on
    GitHub); the approval rules keep them from approving it.
    """

    store: RegistrarRecords
    rollouts: RolloutEngine
    catalog: Callable[[], Catalog]
    author_of: Callable[[Run], str | None]

    def release(self, run: Run, model: Model, state: CommitState) -> ModelVersion | None:
        if state != "success" or run.status != "succeeded":
            return None
        if not run.artifact_digest or not run.artifact_path:
            log.error(
                "run %s of %s succeeded without a model artifact; nothing to register", run.id, run.model
            )
            return None
        baseline = production_version(self.store, model, self.catalog(), at=self.rollouts.clock.now())
        known = any(v.run_id == run.id for v in self.store.list_versions(run.model))
        version = self.store.register_version(
            model=run.model,
            run_id=run.id,
            commit=run.commit,
            artifact_digest=run.artifact_digest,
            artifact_uri=run.artifact_path,
            environment_hash=run.environment_hash or "",
            data_fingerprints=run.data_fingerprints,
            params=run.params,
            metrics=run.metrics,
            image=run.image,
        )
        if not known:
            self.store.append_audit(
                actor="flywheel",
                action="version.registered",
                model=run.model,
                version=version.number,
                detail={
                    "run": run.id,
                    "reused_from": run.reused_from,
                    "commit": run.commit,
                    "artifact_digest": version.artifact_digest,
                    "content_id": version.content_id,
                },
            )
            log.info("registered %s v%s from run %s (%s)", run.model, version.number, run.id, run.commit[:10])
        if baseline is not None and baseline.number == version.number:
            return version
        self.rollouts.start(version, model, author=self.author_of(run), baseline=baseline)
        return version
