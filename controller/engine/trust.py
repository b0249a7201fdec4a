"""Trust for outside contributors: whose pull requests may run, and ``ok-to-test`` per head commit.

Invariant 2: a pull request from a fork, or from an author whom main's policy
does not trust, runs nothing until a trusted person comments
``/flywheel ok-to-test``, and that covers exactly the head commit it was
given for — a new push needs a new ``ok-to-test``.

:func:`record_pull_request` keeps what the gate and the review targets need
from each ``pull_request`` event in the store's
:class:`~controller.backends.store.PullRequestRecords` (called by the inbox
consumer, :mod:`controller.engine.github_events`);
:func:`record_ok_to_test` is called by the comment commands
(:mod:`controller.engine.comments`) once the commenter's right has been
checked; the proposal reconciler asks :meth:`TrustGate.admits` before it
starts a run. Trust is always judged by the policy on main (Invariant 1),
passed in as a callable, never by the one in the pull request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from controller.backends.git import Repository
from controller.backends.store import PullRequest, PullRequestRecords, pull_ref_number
from controller.engine.approvals import groups_of, resolve_user
from controller.engine.commands import main_policy
from controller.specs.types import Catalog, Policy

__all__ = [
    "TrustGate",
    "author_trusted",
    "proposal_heads",
    "pull_request_for",
    "record_ok_to_test",
    "record_pull_request",
]


def record_pull_request(pulls: PullRequestRecords, payload: Mapping[str, Any]) -> PullRequest | None:
    """Record the pull request of a ``pull_request`` event; ``None`` for a malformed payload.

    An event older than what is stored (GitHub does not promise order) keeps
    the stored record and returns it. Only pull requests whose head is a
    branch of this repository map that branch to their number: a fork's
    branch name says nothing about ours.
    """
    pull = payload.get("pull_request")
    if not isinstance(pull, Mapping):
        return None
    head, base, user = pull.get("head"), pull.get("base"), pull.get("user")
    if not (isinstance(head, Mapping) and isinstance(base, Mapping) and isinstance(user, Mapping)):
        return None
    number = pull.get("number", payload.get("number"))
    if isinstance(number, bool) or not isinstance(number, int):
        return None
    head_repo, base_repo = head.get("repo"), base.get("repo")
    head_id = head_repo.get("id") if isinstance(head_repo, Mapping) else None
    base_id = base_repo.get("id") if isinstance(base_repo, Mapping) else None
    info = PullRequest(
        number=number,
        head_ref=str(head.get("ref") or ""),
        head_sha=str(head.get("sha") or ""),
        base_ref=str(base.get("ref") or ""),
        author=str(user.get("login") or ""),
        fork=head_id is None or head_id != base_id,  # a deleted fork counts as a fork
        state=str(pull.get("state") or ""),
        merged=bool(pull.get("merged") or pull.get("merged_at")),  # a listed pull has only merged_at
        updated_at=str(pull.get("updated_at") or ""),
    )
    return pulls.save_pull_request(info)


def proposal_heads(repository: Repository, pulls: PullRequestRecords) -> dict[str, str]:
    """The proposals to train on GitHub: every branch, and ``pull/<n>/head`` of each open fork pull request.

    A fork's head is not a branch of ours; GitHub keeps it under
    ``refs/pull/<n>/head``, which a mirror fetches with everything else. Only
    the open fork pull requests Flywheel has a record of are included
    (GitHub keeps the refs of closed ones for ever), and only once their
    head commit has been fetched. Whether their code may run is still the
    trust gate's decision.
    """
    heads = repository.branches()
    for pull in pulls.open_pull_requests():
        if not pull.fork:
            continue  # its head is one of our branches, already listed
        sha = repository.ref_target(f"refs/{pull.ref}")
        if sha is not None:
            heads[pull.ref] = sha
    return heads


def pull_request_for(pulls: PullRequestRecords, branch: str) -> tuple[bool, PullRequest | None]:
    """``(is a pull-request ref, its record)`` for ``branch``.

    ``pull/<n>/head`` (how a fork's head is fetched) is always a pull-request
    ref, known or not; any other branch is one when a pull request of this
    repository has it as its head.
    """
    number = pull_ref_number(branch)
    if number is None:
        number = pulls.pull_number_for_branch(branch)
        if number is None:
            return False, None
    return True, pulls.pull_request(number)


def record_ok_to_test(pulls: PullRequestRecords, number: int, sha: str) -> None:
    """Let pull request ``number`` run its head commit ``sha`` (and no other)."""
    pulls.grant_ok_to_test(number=number, sha=sha)


def author_trusted(policy: Policy, login: str) -> bool:
    """Whether main's ``policy`` trusts the GitHub user ``login`` (a trusted user or in a trusted group)."""
    user = resolve_user(policy, channel="github", name=login)
    if user is None:
        return False
    return user in policy.trusted_users or not groups_of(policy, user).isdisjoint(policy.trusted_groups)


class TrustGate:
    """Decides whether the code at a proposal's head may run; ``catalog`` returns main's specs now."""

    def __init__(self, pulls: PullRequestRecords, catalog: Callable[[], Catalog]) -> None:
        self._pulls = pulls
        self._catalog = catalog

    def admits(self, branch: str, head_sha: str) -> tuple[bool, str]:
        """``(may run, why)`` for the commit ``head_sha`` at the head of ``branch``."""
        is_pull, info = pull_request_for(self._pulls, branch)
        if not is_pull:
            return True, f"{branch} has no pull request: a branch pushed by the team"
        if info is None:
            return False, f"{branch} is a pull request Flywheel has no record of; it runs nothing"
        policy = main_policy(self._catalog())
        if not info.fork and policy is not None and author_trusted(policy, info.author):
            return True, f"#{info.number} is by {info.author}, whom main's policy trusts"
        who = (
            f"from a fork by {info.author}"
            if info.fork
            else f"by {info.author}, not trusted by main's policy"
        )
        grant = self._pulls.ok_to_test(info.number)
        if grant is not None and grant.sha == head_sha:
            return True, f"#{info.number} is {who}; a trusted user said ok-to-test for {head_sha[:12]}"
        return False, (
            f"#{info.number} is {who}; it waits for a trusted user to comment "
            f"`/flywheel ok-to-test` for {head_sha[:12]}"
        )
