"""What people ask of a rollout: approve, reject, promote, pause, resume, abort, rollback.

One implementation for every channel: ``flywheel approve`` and friends on the
CLI, ``/flywheel ...`` comments on GitHub and the buttons in Slack all call
:class:`Commands`, so the same person gets the same answer everywhere.

Every request is checked against the policy on the release branch (main),
never against a proposal's (Invariant 1): who the person is on that channel
(:func:`~controller.engine.approvals.resolve_user`), whether the policy lets
them run the command, and for decisions the approval rule of the stage
(groups, not the change's author, expiry, bound to the version and
environment). Every request, allowed or refused, goes to the audit log with
who, when and why (Invariant 6).

Commands only record intent, never a rollout's state: ``pause``, ``resume``,
``abort``, ``rollback`` and ``promote`` of an active rollout become
:class:`~controller.engine.rollout_state.Request` s in its row
(:func:`record_request`), which the rollout planner reads at its next tick and
consumes once it acted on them (``promote`` skips the rest of the current
canary step; approval gates still apply). ``rollback`` with no active rollout
queues an inbox event that restores the previous version. Approvals are rows
in the store that the planner reads at the gate.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Unpack

from controller.backends.store import (
    Approval,
    AuditEntry,
    Conflict,
    Meta,
    ModelVersion,
    NewApproval,
    NewAuditEntry,
    NewEvent,
    RolloutChanges,
    RolloutRecord,
    Transactions,
)
from controller.clock import Clock
from controller.engine.approvals import Channel, approval_gate, expires_at, may_run, resolve_user
from controller.engine.rollout_state import (
    Request,
    RequestKind,
    load_requests,
    load_state,
    paused_by,
    stop_of,
    with_request,
)
from controller.specs.types import Catalog, Model, Policy

__all__ = [
    "CONTROL_COMMANDS",
    "Actor",
    "CommandOutcome",
    "CommandRecords",
    "Commands",
    "ControlCommand",
    "RequestRecords",
    "Watched",
    "WatchedRecords",
    "main_policy",
    "record_request",
    "record_watched",
    "repository_location",
    "watched",
]

ControlCommand = Literal["pause", "resume", "abort", "promote", "rollback"]
CONTROL_COMMANDS: tuple[ControlCommand, ...] = ("pause", "resume", "abort", "promote", "rollback")
ROLLBACK_EVENT = "rollback"  # inbox kind of a rollback request with no active rollout
# What the controller on this state watches, so that commands from the CLI are judged under the policy of
# that repository's release branch and of no other (a proposal branch's policy must never decide).
WATCHED_REPOSITORY_KEY = "controller:repository"
RELEASE_BRANCH_KEY = "controller:release-branch"


@dataclass(frozen=True)
class Watched:
    """The repository and release branch a controller on this state directory watches."""

    repository: str
    release_branch: str


class WatchedRecords(Meta, Transactions, Protocol):
    """Where :func:`record_watched` keeps what the controller watches: settings, written together."""


class RequestRecords(Protocol):
    """What :func:`record_request` reads and writes: one rollout's row."""

    def get_rollout(self, rollout_id: int) -> RolloutRecord: ...

    def update_rollout(
        self, rollout_id: int, *, expected_revision: int, **changes: Unpack[RolloutChanges]
    ) -> RolloutRecord: ...


class CommandRecords(RequestRecords, Protocol):
    """What :class:`Commands` reads (rollouts, versions, approvals) and writes (decisions, requests, audit).

    One store: a decision and its audit entry are written in one transaction.
    """

    def rollouts_for(self, model: str) -> list[RolloutRecord]: ...

    def list_versions(self, model: str) -> list[ModelVersion]: ...

    def approvals_for(self, *, model: str, version: int, environment: str) -> list[Approval]: ...

    def add_approval(self, **approval: Unpack[NewApproval]) -> Approval: ...

    def append_audit(self, **entry: Unpack[NewAuditEntry]) -> AuditEntry: ...

    def put_event(self, **event: Unpack[NewEvent]) -> bool: ...

    def transaction(self) -> AbstractContextManager[None]: ...


def repository_location(repo: str) -> str:
    """``repo`` as it is compared: a URL as it is, a local path made absolute."""
    return repo if "://" in repo or repo.startswith("git@") else str(Path(repo).resolve())


def record_watched(store: WatchedRecords, watched: Watched) -> None:
    """Remember what the controller watches (called when a controller starts)."""
    with store.transaction():
        store.set_meta(WATCHED_REPOSITORY_KEY, watched.repository)
        store.set_meta(RELEASE_BRANCH_KEY, watched.release_branch)


def watched(store: Meta) -> Watched | None:
    """What a controller on this state watches, or ``None`` when none has run on it."""
    repository = store.get_meta(WATCHED_REPOSITORY_KEY)
    branch = store.get_meta(RELEASE_BRANCH_KEY)
    return Watched(repository, branch) if repository and branch else None


@dataclass(frozen=True)
class Actor:
    """Who asks, as the channel knows them: a Flywheel user (cli), a GitHub login or a Slack member id."""

    channel: Channel
    name: str


@dataclass(frozen=True)
class CommandOutcome:
    """The answer to one request: done or refused, in a sentence for the person who asked."""

    ok: bool
    message: str
    refusal: str | None = None  # why it was refused: unmapped | not_allowed | not_in_groups | author | ...
    user: str | None = None  # the Flywheel user the actor maps to
    rollout_id: int | None = None
    duplicate: bool = False  # the same decision was already recorded; nothing changed


def main_policy(catalog: Catalog) -> Policy | None:
    """The policy that governs commands: the only one, or the one named ``default``."""
    if len(catalog.policies) == 1:
        return next(iter(catalog.policies.values()))
    return catalog.policies.get("default")


def record_request(store: RequestRecords, rollout: RolloutRecord, request: Request) -> RolloutRecord:
    """Add ``request`` to ``rollout``'s pending requests (once per id), retrying when the row changed."""
    for _ in range(5):
        if any(r.id == request.id for r in load_requests(rollout)):
            return rollout
        try:
            return store.update_rollout(
                rollout.id, expected_revision=rollout.revision, detail=with_request(rollout.detail, request)
            )
        except Conflict:
            rollout = store.get_rollout(rollout.id)
    return store.update_rollout(
        rollout.id, expected_revision=rollout.revision, detail=with_request(rollout.detail, request)
    )


class Commands:
    """Checks and records requests about rollouts; ``catalog`` returns main's specs now."""

    def __init__(
        self,
        *,
        store: CommandRecords,
        catalog: Callable[[], Catalog],
        clock: Clock,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.clock = clock

    # ------------------------------------------------------------ decisions

    def decide(
        self,
        actor: Actor,
        *,
        decision: Literal["approve", "reject"],
        model: str,
        version: int | None = None,
        environment: str | None = None,
        comment: str = "",
    ) -> CommandOutcome:
        """Approve or reject ``model`` ``version`` for ``environment`` (default: what the rollout awaits)."""
        allowed = self._allowed(actor, decision, model, version=version)
        if isinstance(allowed, CommandOutcome):
            return allowed
        catalog, user = allowed
        spec = catalog.models.get(model)
        if spec is None:
            return self._refuse(
                actor, decision, model, user, "unknown_model", f"there is no model {model!r} on main."
            )
        rollout = self._active(model)
        if rollout is None:
            what = f"{model} v{version}" if version is not None else model
            why = f"{what} has no rollout in progress; there is no approval gate to {decision}."
            return self._refuse(actor, decision, model, user, "no_rollout", why, version=version)
        if version is not None and version != rollout.version:
            rolled_out = any(r.version == version for r in self.store.rollouts_for(model))
            why = (
                f"{model} v{version} is not the version being rolled out (v{rollout.version} is); "
                f"a decision counts only for the version at the gate."
            )
            refusal = "not_at_gate" if rolled_out else "no_rollout"
            return self._refuse(actor, decision, model, user, refusal, why, version=version)
        gates = _gates_ahead(spec, rollout)
        if not gates:
            why = f"{model} v{rollout.version} has no approval gate left; nothing to {decision}."
            return self._refuse(actor, decision, model, user, "no_gate", why, version=rollout.version)
        env = environment or gates[0][0]
        rule_name = dict(gates).get(env)
        if rule_name is None:
            passed = env in rollout.stages[: rollout.stage_index]
            why = (
                f"{model} v{rollout.version} is past {env} already; nothing to {decision} there."
                if passed
                else f"{env} is not an approval gate of {model} v{rollout.version}'s rollout; "
                f"its gates ahead: {', '.join(name for name, _ in gates)}."
            )
            return self._refuse(
                actor, decision, model, user, "no_gate", why, version=rollout.version, env=env
            )
        gate = approval_gate(catalog, rule_name, model=model, version=rollout.version, environment=env)
        if gate is None:
            why = f"the approval rule {rule_name!r} of {env} is not in main's policies; cannot {decision}."
            return self._refuse(
                actor, decision, model, user, "no_gate", why, version=rollout.version, env=env
            )
        rule, now = gate.rule, self.clock.now()
        existing = self.store.approvals_for(model=model, version=rollout.version, environment=env)
        author = load_state(rollout).release.author
        check = gate.check(user=user, author=author, existing=existing, now=now, decision=decision)
        if check.duplicate:
            return CommandOutcome(True, check.reason, user=user, rollout_id=rollout.id, duplicate=True)
        if not check.allowed:
            return self._refuse(
                actor,
                decision,
                model,
                user,
                check.refusal or "refused",
                check.reason,
                version=rollout.version,
                env=env,
            )
        with self.store.transaction():
            self.store.add_approval(
                model=model,
                version=rollout.version,
                environment=env,
                user=user,
                decision=decision,
                channel=actor.channel,
                comment=comment,
                expires_at=expires_at(rule, now),
            )
            self.store.append_audit(
                actor=user,
                action=f"approval.{decision}",
                model=model,
                version=rollout.version,
                environment=env,
                detail={"channel": actor.channel, "as": actor.name, "rule": rule.name, "comment": comment},
            )
        state = gate.state(
            self.store.approvals_for(model=model, version=rollout.version, environment=env), now
        )
        past = "approved" if decision == "approve" else "rejected"
        message = f"{user} {past} {model} v{rollout.version} for {env}. {state.message}"
        return CommandOutcome(True, message, user=user, rollout_id=rollout.id)

    # -------------------------------------------------------------- control

    def control(
        self, actor: Actor, *, command: ControlCommand, model: str, reason: str = ""
    ) -> CommandOutcome:
        """Pause, resume, abort, promote or roll back ``model``'s rollout."""
        allowed = self._allowed(actor, command, model)
        if isinstance(allowed, CommandOutcome):
            return allowed
        catalog, user = allowed
        if model not in catalog.models and not self.store.list_versions(model):
            return self._refuse(actor, command, model, user, "unknown_model", f"there is no model {model!r}.")
        now = self.clock.now()
        active = self._active(model)
        if active is None:
            if command != "rollback":
                return self._refuse(
                    actor, command, model, user, "no_rollout", f"{model} has no rollout in progress."
                )
            self.store.put_event(
                source=actor.channel,
                delivery_id=f"rollback-{uuid.uuid4()}",
                kind=ROLLBACK_EVENT,
                payload={"model": model, "by": user, "reason": reason},
            )
            self._audit(user, actor, command, model, None, reason, result="queued")
            return CommandOutcome(
                True, f"{user} asked to roll {model} back to its previous version.", user=user
            )
        state, pending = load_state(active), load_requests(active)
        already = None
        if command in ("pause", "resume"):
            paused = command == "pause"
            if (paused_by(state, pending) is not None) == paused:
                already = "paused" if paused else "not paused"
        elif command in ("abort", "rollback") and (
            state.phase == "rolling_back" or stop_of(state, pending) is not None
        ):
            already = "being stopped"
        if already is not None:
            return CommandOutcome(
                True, f"{model} v{active.version} is already {already}.", user=user, rollout_id=active.id
            )
        kind: RequestKind = command
        request = Request(
            id=uuid.uuid4().hex,
            kind=kind,
            by=user,
            at=now,
            reason=reason,
            stage=active.stage_index if command == "promote" else None,
            step=active.step_index if command == "promote" else None,
        )
        updated = record_request(self.store, active, request)
        self._audit(user, actor, command, model, updated, reason, result="recorded")
        words = {
            "pause": "paused",
            "resume": "resumed",
            "abort": "asked to abort",
            "rollback": "asked to roll back",
            "promote": "promoted past the current step of",
        }[command]
        return CommandOutcome(
            True,
            f"{user} {words} {model} v{updated.version} ({updated.environment}).",
            user=user,
            rollout_id=updated.id,
        )

    def refuse(self, actor: Actor, *, command: str, model: str, refusal: str, why: str) -> CommandOutcome:
        """Refuse a request a channel found wrong before asking (say, another branch's policy); audited."""
        return self._refuse(actor, command, model, None, refusal, why)

    # -------------------------------------------------------------- helpers

    def _allowed(
        self, actor: Actor, command: str, model: str, *, version: int | None = None
    ) -> tuple[Catalog, str] | CommandOutcome:
        """Main's specs and the user ``actor`` is, if main's policy lets them ``command``; else a refusal."""
        catalog = self.catalog()
        policy = main_policy(catalog)
        if policy is None:
            return self._refuse(actor, command, model, None, "no_policy", _NO_POLICY)
        user = resolve_user(policy, channel=actor.channel, name=actor.name)
        if user is None:
            return self._refuse(actor, command, model, None, "unmapped", _unmapped(actor), version=version)
        if not may_run(policy, user=user, command=command):
            why = f"{user} may not {command}: the policy on main does not allow it."
            return self._refuse(actor, command, model, user, "not_allowed", why, version=version)
        return catalog, user

    def _active(self, model: str) -> RolloutRecord | None:
        return next((r for r in self.store.rollouts_for(model) if r.active), None)

    def _audit(
        self,
        user: str,
        actor: Actor,
        command: str,
        model: str,
        rollout: RolloutRecord | None,
        reason: str,
        *,
        result: str,
    ) -> None:
        self.store.append_audit(
            actor=user,
            action=f"command.{command}",
            model=model,
            version=rollout.version if rollout else None,
            environment=rollout.environment if rollout else None,
            detail={"channel": actor.channel, "as": actor.name, "reason": reason, "result": result},
        )

    def _refuse(
        self,
        actor: Actor,
        command: str,
        model: str,
        user: str | None,
        refusal: str,
        why: str,
        *,
        version: int | None = None,
        env: str | None = None,
    ) -> CommandOutcome:
        self.store.append_audit(
            actor=user or f"{actor.channel}:{actor.name}",
            action="command.refused",
            model=model,
            version=version,
            environment=env,
            detail={
                "command": command,
                "channel": actor.channel,
                "as": actor.name,
                "refusal": refusal,
                "why": why,
            },
        )
        return CommandOutcome(False, why, refusal=refusal, user=user)


_NO_POLICY = "main has no policy (or several and none named 'default'); commands are refused."


def _unmapped(actor: Actor) -> str:
    return f"{actor.name} is not a known Flywheel user on {actor.channel}; ask to be added to the policy."


def _gates_ahead(model: Model, rollout: RolloutRecord) -> list[tuple[str, str]]:
    """``(environment, approval rule)`` of the stages from the rollout's current one on that have a gate."""
    ahead = rollout.stages[rollout.stage_index :]
    stages = model.rollout.stages
    return [(s.environment, s.approval) for s in stages if s.environment in ahead and s.approval]
