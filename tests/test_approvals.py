"""Approval rules, as a decision table: who may approve, what counts, and when a gate opens.

Pins down: identities resolve per channel and unmapped ones are refused;
only members of the rule's groups (in main's policy, at evaluation time)
count; the author is refused unless the rule allows it; one user counts once
and a repeat is reported as a duplicate; expired decisions and decisions for
another version or environment never count; an eligible reject closes the
gate; command rights, with "*" open to strangers only for read-only commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from controller.backends.store import Approval, Decision
from controller.engine.approvals import ApprovalGate, expires_at, groups_of, may_run, resolve_user
from controller.specs.types import ApprovalRule, Identity, Policy

pytestmark = pytest.mark.unit
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0

PRODUCTION = ApprovalRule(
    name="production-signoff", groups=("business-owners",), required=1, expires_after_seconds=72 * HOUR
)
STAGING = ApprovalRule(name="staging-signoff", groups=("ml-engineers",), allow_author=True)

POLICY = Policy(
    name="default",
    spec_path="policies/default.yaml",
    groups={
        "ml-engineers": ("alice", "bob"),
        "business-owners": ("carol", "dave", "frank"),
        "platform": ("erin",),
    },
    identities=(
        Identity("alice", github="alice-ml"),
        Identity("bob", github="bob-ml"),
        Identity("carol", github="carol-biz", slack="U0CAROL01"),
        Identity("dave", slack="U0DAVE002", login="dmiller"),
        Identity("erin", github="erin-platform"),
        Identity("grace", github="grace-gh"),  # known, but in no group
    ),
    commands={
        "help": ("*",),
        "status": ("*",),
        "retrain": ("ml-engineers",),
        "approve": ("business-owners", "ml-engineers"),
        "promote": ("*",),
    },
    approvals=(STAGING, PRODUCTION),
)

_ids = iter(range(1, 10_000))


def _approval(
    user: str,
    decision: Decision = "approve",
    *,
    at: datetime = NOW - timedelta(hours=1),
    model: str = "iris",
    version: int = 3,
    environment: str = "production",
    expires: datetime | None = None,
) -> Approval:
    return Approval(
        id=next(_ids),
        model=model,
        version=version,
        environment=environment,
        user=user,
        decision=decision,
        channel="cli",
        comment="",
        created_at=at,
        expires_at=expires,
    )


def _state(
    approvals: Sequence[Approval], *, rule: ApprovalRule = PRODUCTION, policy: Policy = POLICY
) -> tuple[bool, bool, tuple[str, ...], int, str]:
    s = ApprovalGate(policy, rule, "iris", 3, "production").state(approvals, NOW)
    return s.satisfied, s.rejected, s.approvers, s.missing, s.message


def _check(
    user: str | None,
    *,
    author: str | None = "alice",
    rule: ApprovalRule = PRODUCTION,
    existing: Sequence[Approval] = (),
    decision: Decision = "approve",
) -> tuple[bool, str, bool, str | None]:
    gate = ApprovalGate(POLICY, rule, "iris", 3, "production")
    c = gate.check(user=user, author=author, existing=existing, now=NOW, decision=decision)
    return c.allowed, c.reason, c.duplicate, c.refusal


# ------------------------------------------------------------------ identity


@pytest.mark.parametrize(
    ("channel", "name", "user"),
    [
        ("cli", "carol", "carol"),
        ("cli", "grace", "grace"),  # listed in identities only
        ("cli", "mallory", None),
        ("cli", "", None),
        ("github", "carol-biz", "carol"),
        ("github", "Carol-Biz", "carol"),  # GitHub logins are case-insensitive
        ("github", "carol", None),  # the Flywheel name is not a GitHub login
        ("github", "mallory-gh", None),
        ("slack", "U0DAVE002", "dave"),
        ("slack", "u0dave002", None),  # Slack ids are exact
        ("slack", "U0NOBODY0", None),
        # look-alikes are nobody: identities match character for character
        ("cli", "carol\xa0", None),
        ("cli", " carol", None),
        ("cli", "carol\u200b", None),
        ("slack", "U0DAVE002 ", None),
        ("github", "carol-biz ", None),
        ("github", "carol-b\u0131z", None),  # dotless i: no Unicode case folding onto a login
        ("github", "Carol-Biz\u212a", None),  # Kelvin sign, which casefold() turns into "k"
        # the dashboard: a Flywheel user, an operating-system login, or a GitHub login (oauth2-proxy's)
        ("dashboard", "carol", "carol"),
        ("dashboard", "dmiller", "dave"),
        ("dashboard", "DMiller", None),  # logins are exact
        ("dashboard", "Carol-Biz", "carol"),
        ("dashboard", "U0DAVE002", None),  # a Slack id is no name a sign-in asserts
        ("dashboard", "mallory", None),
        ("dashboard", "carol\xa0", None),
        ("cli", "dmiller", None),  # an operating-system login is not a Flywheel user name
    ],
)
def test_resolve_user_per_channel(channel: str, name: str, user: str | None) -> None:
    assert resolve_user(POLICY, channel=channel, name=name) == user  # type: ignore[arg-type]


def test_groups_of() -> None:
    assert groups_of(POLICY, "alice") == {"ml-engineers"}
    assert groups_of(POLICY, "grace") == frozenset()
    assert groups_of(POLICY, None) == frozenset()


@pytest.mark.parametrize(
    ("user", "command", "allowed"),
    [
        ("alice", "retrain", True),
        ("carol", "retrain", False),
        ("carol", "approve", True),
        ("erin", "approve", False),
        ("grace", "status", True),
        ("grace", "promote", True),  # "*" is every Flywheel user
        (None, "help", True),  # strangers may read
        (None, "status", True),
        (None, "promote", False),  # but never change anything, even when "*"
        (None, "retrain", False),
        ("alice", "deploy", False),  # a command the policy does not list
    ],
)
def test_may_run(user: str | None, command: str, allowed: bool) -> None:
    assert may_run(POLICY, user=user, command=command) is allowed


# ------------------------------------------------------------------ checking


def test_business_owner_may_approve() -> None:
    assert _check("carol") == (True, "", False, None)


def test_unmapped_user_is_refused() -> None:
    github = resolve_user(POLICY, channel="github", name="mallory-gh")
    slack = resolve_user(POLICY, channel="slack", name="U0NOBODY0")
    for user in (github, slack):
        allowed, reason, duplicate, refusal = _check(user)
        assert not allowed and not duplicate and refusal == "unmapped"
        assert "not a known Flywheel user" in reason


def test_outsider_is_refused_with_the_groups_that_may() -> None:
    allowed, reason, _, refusal = _check("erin")
    assert not allowed and refusal == "not_in_groups"
    assert (
        reason
        == "erin cannot approve iris v3 for production: production-signoff needs a member of business-owners."
    )
    two_groups = replace(PRODUCTION, groups=("business-owners", "platform"))
    assert "business-owners or platform" in _check("alice", rule=two_groups)[1]


def test_author_refused_unless_rule_allows() -> None:
    author_is_owner = replace(PRODUCTION, allow_author=False)
    allowed, reason, _, refusal = _check("carol", author="carol", rule=author_is_owner)
    assert not allowed and refusal == "author"
    assert "carol made this change" in reason
    # the author as the forge names them is recognised too
    assert _check("carol", author="carol-biz", rule=author_is_owner)[3] == "author"
    assert _check("carol", author="CAROL-BIZ", rule=author_is_owner)[3] == "author"
    assert _check("carol", author="carol", rule=replace(PRODUCTION, allow_author=True))[0]
    assert _check("alice", author="alice", rule=STAGING)[0]


def test_same_decision_twice_is_a_duplicate_not_a_second_vote() -> None:
    first = _approval("carol")
    allowed, reason, duplicate, refusal = _check("carol", existing=[first])
    assert (allowed, duplicate, refusal) == (False, True, "duplicate")
    assert "already approved" in reason
    assert _state([first, _approval("carol", at=NOW)])[2] == ("carol",)


def test_changing_ones_mind_or_renewing_an_expired_approval_is_allowed() -> None:
    assert _check("carol", existing=[_approval("carol")], decision="reject")[0]
    expired = _approval("carol", at=NOW - timedelta(hours=100))
    assert _check("carol", existing=[expired])[0]
    for_other_version = _approval("carol", version=2)
    assert _check("carol", existing=[for_other_version])[0]


def test_expires_at() -> None:
    assert expires_at(PRODUCTION, NOW) == NOW + timedelta(hours=72)
    assert expires_at(STAGING, NOW) is None


# ---------------------------------------------------------------- gate state


def test_one_business_owner_satisfies_required_one() -> None:
    satisfied, rejected, approvers, missing, message = _state([_approval("carol")])
    assert (satisfied, rejected, approvers, missing) == (True, False, ("carol",), 0)
    assert message == "iris v3 for production was approved by carol."


def test_no_approvals_waits() -> None:
    assert _state([]) == (False, False, (), 1, "waiting for 1 more approval from business-owners")


def test_required_two_needs_two_distinct_users() -> None:
    two = replace(PRODUCTION, required=2)
    satisfied, _, approvers, missing, message = _state([_approval("carol"), _approval("carol")], rule=two)
    assert (satisfied, approvers, missing) == (False, ("carol",), 1)
    assert message == "waiting for 1 more approval from business-owners (approved so far by carol)"
    assert _state([_approval("carol"), _approval("dave")], rule=two)[:4] == (
        True,
        False,
        ("carol", "dave"),
        0,
    )


def test_approvals_from_outside_the_groups_do_not_count() -> None:
    assert _state([_approval("alice"), _approval("mallory")])[:4] == (False, False, (), 1)


def test_expired_approvals_do_not_count() -> None:
    old = _approval("carol", at=NOW - timedelta(hours=73))  # rule: 72h
    assert _state([old])[0] is False
    stamped = _approval("carol", at=NOW - timedelta(hours=1), expires=NOW - timedelta(seconds=1))
    assert _state([stamped])[0] is False
    exactly_now = _approval("carol", at=NOW - timedelta(hours=1), expires=NOW)
    assert _state([exactly_now])[0] is False
    assert _state([_approval("carol", at=NOW - timedelta(hours=71))])[0] is True
    never = _approval("carol", at=NOW - timedelta(days=365))
    assert _state([never], rule=replace(PRODUCTION, expires_after_seconds=None))[0] is True


def test_approvals_for_another_version_model_or_environment_are_ignored() -> None:
    mismatched = [
        _approval("carol", version=2),
        _approval("dave", environment="staging"),
        _approval("frank", model="churn"),
    ]
    assert _state(mismatched)[:4] == (False, False, (), 1)
    assert _state([*mismatched, _approval("carol", decision="reject", version=4)])[1] is False


def test_an_eligible_reject_blocks() -> None:
    satisfied, rejected, _, _, message = _state([_approval("carol"), _approval("dave", "reject")])
    assert (satisfied, rejected) == (False, True)
    assert message == "iris v3 for production was rejected by dave."
    assert _state([_approval("carol"), _approval("alice", "reject")])[:2] == (True, False)  # not eligible
    expired_reject = _approval("dave", "reject", at=NOW - timedelta(hours=80))
    assert _state([_approval("carol"), expired_reject])[:2] == (True, False)


def test_latest_decision_per_user_wins() -> None:
    rejected_then_approved = [_approval("carol", "reject"), _approval("carol", at=NOW - timedelta(minutes=5))]
    assert _state(rejected_then_approved)[:3] == (True, False, ("carol",))
    approved_then_rejected = [_approval("carol"), _approval("carol", "reject", at=NOW - timedelta(minutes=5))]
    assert _state(approved_then_rejected)[:3] == (False, True, ())


def test_user_removed_from_the_group_on_main_no_longer_counts() -> None:
    approvals = [_approval("carol")]
    assert _state(approvals)[0] is True
    main_now = replace(POLICY, groups={**POLICY.groups, "business-owners": ("dave", "frank")})
    assert _state(approvals, policy=main_now)[:4] == (False, False, (), 1)
