"""Trust for outside contributors: whose pull requests may run, and ``ok-to-test`` per head commit.

Invariant 2: a pull request from a fork, or from an author whom main's policy
does not trust, runs nothing until a trusted person comments
``/flywheel ok-to-test``, and that covers exactly the head commit it was
given for — a new push needs a new ``ok-to-test``.

:func:`record_pull_request` keeps what the gate and the GitHub forge need from
each ``pull_request`` event (called by :mod:`webhooks.events`);
:func:`record_ok_to_test` is called by the comment commands
(:mod:`controller.engine.comments`) once the commenter's right has been
checked; the proposal reconciler asks :meth:`TrustGate.admits` before it
starts a run. Trust is always judged by the policy on main (Invariant 1),
passed in as a callable, never by the one in the pull request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from controller.backends.forge.github import (
    OPEN_PULLS_KEY,
    PullRequestInfo,
    branch_meta_key,
    open_pull_requests,
    pull_ref_number,
    pull_request_info,
    pull_request_meta_key,
)
from controller.backends.git import Repository
from controller.backends.store import Store
from controller.engine.approvals import groups_of, resolve_user
from controller.engine.commands import main_policy
from controller.specs.types import Catalog, Policy

__all__ = [
    "PullRequestInfo",
    "TrustGate",
    "author_trusted",
    "ok_to_test_key",
    "open_pull_requests",
    "proposal_heads",
    "pull_request_for",
    "pull_request_info",
    "record_ok_to_test",
    "record_pull_request",
]


def ok_to_test_key(number: int) -> str:
    return f"github:ok-to-test:{number}"


def record_pull_request(store: Store, payload: Mapping[str, Any]) -> PullRequestInfo | None:
    """Store the metadata of a ``pull_request`` event's pull request; ``None`` for a malformed payload.

    An event older than what is stored (GitHub does not promise order) keeps
    the stored metadata and returns it. Only pull requests whose head is a
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
    info = PullRequestInfo(
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
    with store.transaction():
        stored = pull_request_info(store, number)
        if stored is not None and info.updated_at and stored.updated_at > info.updated_at:
            return stored
        store.set_meta(pull_request_meta_key(number), json.dumps(asdict(info), sort_keys=True))
        if not info.fork and info.head_ref:
            store.set_meta(branch_meta_key(info.head_ref), str(number))
        still_open = open_pull_requests(store)
        if info.state == "open":
            still_open[number] = info.fork
        else:
            still_open.pop(number, None)
        store.set_meta(OPEN_PULLS_KEY, json.dumps({str(n): f for n, f in sorted(still_open.items())}))
    return info


def proposal_heads(repository: Repository, store: Store) -> dict[str, str]:
    """The proposals to train on GitHub: every branch, and ``pull/<n>/head`` of each open fork pull request.

    A fork's head is not a branch of ours; GitHub keeps it under
    ``refs/pull/<n>/head``, which a mirror fetches with everything else. Only
    the open fork pull requests Flywheel has a record of are included
    (GitHub keeps the refs of closed ones for ever), and only once their
    head commit has been fetched. Whether their code may run is still the
    trust gate's decision.
    """
    heads = repository.branches()
    for number, fork in sorted(open_pull_requests(store).items()):
        if not fork:
            continue  # its head is one of our branches, already listed
        sha = repository.ref_target(f"refs/pull/{number}/head")
        if sha is not None:
            heads[f"pull/{number}/head"] = sha
    return heads


def pull_request_for(store: Store, branch: str) -> tuple[bool, PullRequestInfo | None]:
    """``(is a pull-request ref, its metadata)`` for ``branch``.

    ``pull/<n>/head`` (how a fork's head is fetched) is always a pull-request
    ref, known or not; any other branch is one when a pull request of this
    repository has it as its head.
    """
    number = pull_ref_number(branch)
    if number is not None:
        return True, pull_request_info(store, number)
    known = store.get_meta(branch_meta_key(branch))
    if known and known.isdigit():
        return True, pull_request_info(store, int(known))
    return False, None


def record_ok_to_test(store: Store, number: int, sha: str) -> None:
    store.set_meta(ok_to_test_key(number), sha)


def author_trusted(policy: Policy, login: str) -> bool:
    """Whether main's ``policy`` trusts the GitHub user ``login`` (a trusted user or in a trusted group)."""
    user = resolve_user(policy, channel="github", name=login)
    if user is None:
        return False
    return user in policy.trusted_users or not groups_of(policy, user).isdisjoint(policy.trusted_groups)


class TrustGate:
    """Decides whether the code at a proposal's head may run; ``catalog`` returns main's specs now."""

    def __init__(self, store: Store, catalog: Callable[[], Catalog]) -> None:
        self._store = store
        self._catalog = catalog

    def admits(self, branch: str, head_sha: str) -> tuple[bool, str]:
        """``(may run, why)`` for the commit ``head_sha`` at the head of ``branch``."""
        is_pull, info = pull_request_for(self._store, branch)
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
        if self._store.get_meta(ok_to_test_key(info.number)) == head_sha:
            return True, f"#{info.number} is {who}; a trusted user said ok-to-test for {head_sha[:12]}"
        return False, (
            f"#{info.number} is {who}; it waits for a trusted user to comment "
            f"`/flywheel ok-to-test` for {head_sha[:12]}"
        )
