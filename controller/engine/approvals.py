"""Approval rules: who may approve what, and whether an approval gate is satisfied.

Pure functions (no I/O), shared by every channel that records a decision —
``flywheel approve`` on the CLI, ``/flywheel approve`` comments on GitHub and
Slack buttons — so all of them apply the very same check
(:meth:`ApprovalGate.check`). The caller records an allowed decision
(:meth:`~controller.backends.store.ApprovalRecords.add_approval`, with
:func:`expires_at`), writes the audit entry, and asks
:meth:`ApprovalGate.state` whether the gate of a rollout stage is now open.

Every function takes the :class:`~controller.specs.types.Policy` explicitly.
It must be the policy of the release branch (main), never the one in the
proposal being judged (Invariant 1): a pull request cannot grant its author
the right to approve it. Group membership is read from that policy at the
time of evaluation, so removing someone from a group on main withdraws their
past approvals as well.

Approvals are bound to one model version and one environment ("Identity of
things"); records for any other version or environment are ignored even if a
caller passes them by mistake.

Decisions per user: only a user's latest unexpired decision counts, so a
reviewer who rejects and later approves (or the reverse) has changed their
mind rather than cast two votes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from controller.specs.types import ApprovalRule, Catalog, Policy

__all__ = [
    "READ_ONLY_COMMANDS",
    "Approval",
    "ApprovalCheck",
    "ApprovalGate",
    "Channel",
    "GateState",
    "Refusal",
    "approval_gate",
    "expires_at",
    "groups_of",
    "login_user",
    "may_run",
    "policy_with_rule",
    "resolve_user",
]

Channel = Literal["cli", "github", "slack", "dashboard"]
Decision = Literal["approve", "reject"]
Refusal = Literal["unmapped", "not_in_groups", "author", "duplicate"]

ANYONE = "*"
_GITHUB_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})", re.ASCII)
# Commands an outside identity that maps to no Flywheel user may still run,
# when the policy opens them to "*": they read state and change nothing.
READ_ONLY_COMMANDS: frozenset[str] = frozenset({"help", "status"})


class Approval(Protocol):
    """A recorded decision, as these rules read it (the store's approval records are such).

    A protocol, so that the rules need nothing from the backends and the
    rollout planner can apply them.
    """

    @property
    def id(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def environment(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def decision(self) -> Decision: ...
    @property
    def created_at(self) -> datetime: ...
    def valid_at(self, when: datetime) -> bool: ...


# ------------------------------------------------------------------ identity


def resolve_user(policy: Policy, *, channel: Channel, name: str) -> str | None:
    """The Flywheel user behind ``name`` on ``channel``, or ``None`` when the policy does not know them.

    Identities match exactly, character for character: ``'carol\xa0'`` or a
    Slack id with a trailing space is nobody (a look-alike must never act as
    someone). ``cli``: ``name`` is the Flywheel user itself, known when it is
    a member of a group or listed in the identities. ``github``: matched
    against the identities' GitHub logins, ignoring ASCII case only, as GitHub
    does (its logins are ASCII letters, digits and hyphens, so no Unicode case
    folding can turn a look-alike into a login). ``slack``: matched against
    the identities' Slack member ids. ``dashboard``: ``name`` is who the
    dashboard's sign-in or an authenticating proxy asserts: a Flywheel user
    (as on ``cli``), else an identity's operating-system ``login``, else its
    GitHub login (what oauth2-proxy's GitHub provider asserts).
    ``policy`` must be main's.
    """
    if not name:
        return None
    if channel == "cli":
        return _flywheel_user(policy, name)
    if channel == "dashboard":
        known = _flywheel_user(policy, name)
        if known is not None:
            return known
        for identity in policy.identities:
            if identity.login is not None and identity.login == name:
                return identity.user
        return resolve_user(policy, channel="github", name=name)
    if channel == "github":
        if not _GITHUB_LOGIN.fullmatch(name):
            return None
        login = name.lower()
        for identity in policy.identities:
            if identity.github is not None and identity.github.lower() == login:
                return identity.user
        return None
    for identity in policy.identities:
        if identity.slack is not None and identity.slack == name:
            return identity.user
    return None


def _flywheel_user(policy: Policy, name: str) -> str | None:
    """``name`` when it is a Flywheel user of ``policy``: a member of a group, or listed in the identities."""
    if any(name in members for members in policy.groups.values()):
        return name
    return name if any(identity.user == name for identity in policy.identities) else None


def login_user(policy: Policy, login: str) -> str | None:
    """The Flywheel user the operating-system user ``login`` is in ``policy`` (main's), or ``None``.

    The identity whose ``login`` is ``login``; else ``login`` itself when it is
    a Flywheel user (a member of a group, or listed in the identities).
    """
    if not login:
        return None
    for identity in policy.identities:
        if identity.login is not None and identity.login == login:
            return identity.user
    return _flywheel_user(policy, login)


def groups_of(policy: Policy, user: str | None) -> frozenset[str]:
    """The groups ``user`` is a member of in ``policy`` (main's); none for ``None``."""
    if user is None:
        return frozenset()
    return frozenset(group for group, members in policy.groups.items() if user in members)


def may_run(policy: Policy, *, user: str | None, command: str) -> bool:
    """Whether ``user`` may run ``command`` under ``policy`` (main's).

    A command the policy does not list may be run by nobody. ``"*"`` opens a
    command to every Flywheel user; an unmapped identity (``user is None``)
    may run only the read-only commands (:data:`READ_ONLY_COMMANDS`, help and
    status) and only when they are open to ``"*"`` — a stranger commenting on
    a pull request can ask for help but cannot retrain, promote or roll back,
    whatever the policy says.
    """
    allowed = policy.commands.get(command)
    if not allowed:
        return False
    if ANYONE in allowed:
        return user is not None or command in READ_ONLY_COMMANDS
    return not groups_of(policy, user).isdisjoint(allowed)


def policy_with_rule(catalog: Catalog, rule: str) -> tuple[Policy, ApprovalRule] | None:
    """The policy of ``catalog`` (main's) that defines the approval rule named ``rule``, and the rule."""
    for policy in catalog.policies.values():
        for candidate in policy.approvals:
            if candidate.name == rule:
                return policy, candidate
    return None


# ----------------------------------------------------------------- decisions


@dataclass(frozen=True)
class ApprovalCheck:
    """Whether one person may record one decision now, and if not, why (a sentence for them)."""

    allowed: bool
    reason: str = ""
    refusal: Refusal | None = None
    duplicate: bool = False  # the same decision is already recorded: a retry, not a second vote


def expires_at(rule: ApprovalRule, now: datetime) -> datetime | None:
    """When a decision recorded ``now`` under ``rule`` stops counting; ``None`` if it never expires."""
    if rule.expires_after_seconds is None:
        return None
    return now + timedelta(seconds=rule.expires_after_seconds)


# --------------------------------------------------------------------- gates


@dataclass(frozen=True)
class GateState:
    """Where an approval gate stands: open, closed by a rejection, or waiting, in a sentence."""

    satisfied: bool
    rejected: bool
    approvers: tuple[str, ...]  # distinct eligible users whose latest unexpired decision is approve
    rejecters: tuple[str, ...]  # the same, for reject
    missing: int  # approvals still needed (0 once satisfied)
    message: str


@dataclass(frozen=True)
class ApprovalGate:
    """The gate ``rule`` puts before ``model`` v``version`` in ``environment``.

    ``policy`` is the one that defines ``rule``, and must be main's, never the
    proposal's: it says who is in the rule's groups now, and who made the
    change. :func:`approval_gate` finds it in main's catalog.
    """

    policy: Policy
    rule: ApprovalRule
    model: str
    version: int
    environment: str

    def check(
        self,
        *,
        user: str | None,
        author: str | None,
        existing: Sequence[Approval],
        now: datetime,
        decision: Decision = "approve",
    ) -> ApprovalCheck:
        """May ``user`` record ``decision`` at this gate?

        ``user`` is the Flywheel user (see :func:`resolve_user`; ``None`` when
        unmapped). ``author`` is whoever made the change — a Flywheel user, or
        their GitHub login / Slack id, both are recognised. ``existing`` is what
        :meth:`~controller.backends.store.ApprovalRecords.approvals_for`
        returned for this version and environment.

        Refused, in this order: an unmapped user; a user in none of the rule's
        groups (the reason names the groups that may); the change's author when
        the rule does not allow it. When the user's latest unexpired decision on
        this version and environment is already ``decision``, the result is
        ``duplicate=True`` and not allowed, so a retried click counts once.
        """
        rule = self.rule
        verb = "approve" if decision == "approve" else "reject"
        target = f"{self.model} v{self.version} for {self.environment}"
        if user is None:
            return ApprovalCheck(
                False,
                f"You are not a known Flywheel user, so you cannot {verb} {target}; "
                f"ask to be added to the identities in the policy.",
                refusal="unmapped",
            )
        if groups_of(self.policy, user).isdisjoint(rule.groups):
            return ApprovalCheck(
                False,
                f"{user} cannot {verb} {target}: {rule.name} needs a member of {_either(rule.groups)}.",
                refusal="not_in_groups",
            )
        if not rule.allow_author and author is not None and _is_author(self.policy, user, author):
            return ApprovalCheck(
                False,
                f"{user} made this change and cannot {verb} it: {rule.name} needs someone else "
                f"from {_either(rule.groups)}.",
                refusal="author",
            )
        latest = self._latest_decisions(existing, now)
        if user in latest and latest[user].decision == decision:
            past = "approved" if decision == "approve" else "rejected"
            return ApprovalCheck(
                False,
                f"{user} has already {past} {target}; it counts once.",
                refusal="duplicate",
                duplicate=True,
            )
        return ApprovalCheck(True)

    def state(self, approvals: Sequence[Approval], now: datetime) -> GateState:
        """Where the gate stands at ``now``, given the decisions recorded.

        Only the decisions of users in the rule's groups (by main's policy, now)
        count. Records for another model, version or environment, and decisions
        expired at ``now`` (by their own ``expires_at`` or by
        ``rule.expires_after_seconds``), are ignored. Each user counts once, by
        their latest decision. Any eligible reject closes the gate.
        """
        rule, target = self.rule, f"{self.model} v{self.version} for {self.environment}"
        latest = self._latest_decisions(approvals, now)
        eligible = {u: a for u, a in latest.items() if not groups_of(self.policy, u).isdisjoint(rule.groups)}
        approvers = tuple(sorted(u for u, a in eligible.items() if a.decision == "approve"))
        rejecters = tuple(sorted(u for u, a in eligible.items() if a.decision == "reject"))
        required = max(rule.required, 1)
        missing = max(required - len(approvers), 0)
        if rejecters:
            message = f"{target} was rejected by {_and(rejecters)}."
            return GateState(False, True, approvers, rejecters, missing, message)
        if missing == 0:
            message = f"{target} was approved by {_and(approvers)}."
            return GateState(True, False, approvers, rejecters, 0, message)
        plural = "approval" if missing == 1 else "approvals"
        message = f"waiting for {missing} more {plural} from {_either(rule.groups)}"
        if approvers:
            message += f" (approved so far by {_and(approvers)})"
        return GateState(False, False, approvers, rejecters, missing, message)

    def _latest_decisions(self, approvals: Sequence[Approval], now: datetime) -> dict[str, Approval]:
        """Each user's latest decision on this version and environment that still counts at ``now``."""
        latest: dict[str, Approval] = {}
        subject = (self.model, self.version, self.environment)
        relevant = (a for a in approvals if (a.model, a.version, a.environment) == subject)
        for approval in sorted(relevant, key=lambda a: (a.created_at, a.id)):
            latest[approval.user] = approval
        return {user: a for user, a in latest.items() if _counts_at(a, self.rule, now)}


def approval_gate(
    catalog: Catalog, rule: str, *, model: str, version: int, environment: str
) -> ApprovalGate | None:
    """The gate of the approval rule named ``rule`` for this version; ``None`` if main's policies lack it."""
    found = policy_with_rule(catalog, rule)
    if found is None:
        return None
    policy, approval_rule = found
    return ApprovalGate(policy, approval_rule, model, version, environment)


# ------------------------------------------------------------------ internal


def _counts_at(approval: Approval, rule: ApprovalRule, now: datetime) -> bool:
    if not approval.valid_at(now):
        return False
    limit = expires_at(rule, approval.created_at)  # main's rule may be stricter than when it was given
    return limit is None or now < limit


def _is_author(policy: Policy, user: str, author: str) -> bool:
    if author == user:
        return True
    for identity in policy.identities:
        if identity.user != user:
            continue
        if identity.github is not None and identity.github.casefold() == author.casefold():
            return True
        if identity.slack is not None and identity.slack == author:
            return True
    return False


def _either(groups: Sequence[str]) -> str:
    names = list(groups)
    if len(names) <= 1:
        return names[0] if names else "no group"
    return ", ".join(names[:-1]) + " or " + names[-1]


def _and(users: Sequence[str]) -> str:
    names = list(users)
    if len(names) <= 1:
        return names[0] if names else "nobody"
    return ", ".join(names[:-1]) + " and " + names[-1]
