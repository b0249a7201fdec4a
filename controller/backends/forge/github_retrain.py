"""Retrain branches on GitHub: commits made through the Git Data API, proposed as one pull request.

The composition root gives :class:`GitHubRetrainBranches` to the retrain
proposer (:mod:`controller.engine.retrain`) when a GitHub repository is
configured. The commit is made where the repository lives, with PyGithub: a
blob for the edited spec, a tree on the parent's with that file replaced, a
commit, and the branch's ref created or moved (forced: a branch whose pull
request was merged or closed starts again from the release branch). The
mirror learns of it on its next fetch, like any push.

The branch's open pull request (GitHub's list of pull requests filtered by
``head``) is the retrain's one proposal: a new reason edits its title and
description; with none open, one is created. A pull request closed unmerged
is left as it is: only a new reason opens another.

These calls are made from the controller's tick, not the outbox: a failure
raises, and the trigger engine tries the same reason again on a later tick
(proposing is idempotent: an existing open pull request is found and
updated, never opened twice).
"""

from __future__ import annotations

import base64
from typing import Any

from github import GithubException, InputGitTreeElement, UnknownObjectException
from github.Repository import Repository

from controller.backends.forge.github import github_client
from controller.settings import GitHubSettings

__all__ = ["GitHubRetrainBranches", "RetrainError"]


class RetrainError(Exception):
    """GitHub refused or failed a call of a retrain; the message says which and why."""


class GitHubRetrainBranches:
    def __init__(self, settings: GitHubSettings, *, release_branch: str, **client: Any) -> None:
        """``client``: more of :func:`github_client`'s options (tests turn its pauses between writes off)."""
        self._full_name = settings.repository
        self._owner = settings.repository.split("/")[0]
        self._release_branch = release_branch
        self._github = github_client(
            auth=settings.auth(), base_url=settings.api_url, timeout=settings.timeout, **client
        )
        self._repo: Repository | None = None

    def close(self) -> None:
        self._github.close()

    def open_head(self, branch: str) -> str | None:
        pull = self._open_pull(branch)
        return None if pull is None else str(pull.head.sha)

    def read(self, commit: str, path: str) -> bytes | None:
        try:
            contents = self._call(f"read {path} at {commit[:10]}", self.repo.get_contents, path, ref=commit)
        except RetrainError as exc:
            if isinstance(exc.__cause__, UnknownObjectException):
                return None
            raise
        if isinstance(contents, list):
            return None  # a directory
        return bytes(contents.decoded_content)

    def write(self, branch: str, *, parent: str, path: str, content: bytes, message: str) -> str:
        repo = self.repo
        base = self._call(f"read commit {parent[:10]}", repo.get_git_commit, parent)
        blob = self._call("create a blob", repo.create_git_blob, base64.b64encode(content).decode(), "base64")
        element = InputGitTreeElement(path, "100644", "blob", sha=blob.sha)
        tree = self._call("create a tree", repo.create_git_tree, [element], base.tree)
        commit = self._call("create a commit", repo.create_git_commit, message, tree, [base])
        name = f"refs/heads/{branch}"

        def existing() -> Any:  # matching refs are prefixes: flywheel/retrain/a also finds .../a-b
            return next((r for r in repo.get_git_matching_refs(f"heads/{branch}") if r.ref == name), None)

        ref = self._call(f"read {branch}", existing)
        if ref is None:
            self._call(f"create {branch}", repo.create_git_ref, name, commit.sha)
        else:  # forced: a branch whose proposal was merged or closed starts again from the release branch
            self._call(f"move {branch}", ref.edit, commit.sha, force=True)
        return str(commit.sha)

    def propose(self, branch: str, *, title: str, body: str) -> str:
        pull = self._open_pull(branch)
        if pull is not None:
            self._call(f"update pull request #{pull.number}", pull.edit, title=title, body=body)
            return f"pull request #{pull.number} (updated)"
        pull = self._call(
            f"open a pull request for {branch}",
            self.repo.create_pull,
            base=self._release_branch,
            head=branch,
            title=title,
            body=body,
        )
        return f"pull request #{pull.number} (opened)"

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            self._repo = self._github.get_repo(self._full_name)  # lazy: the client is
        return self._repo

    def _open_pull(self, branch: str) -> Any:
        def first() -> Any:  # the list is read when iterated
            return next(iter(self.repo.get_pulls(state="open", head=f"{self._owner}:{branch}")), None)

        return self._call(f"list the pull requests of {branch}", first)

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except GithubException as exc:
            raise RetrainError(f"GitHub: cannot {what}: {_message(exc)}") from exc


def _message(exc: GithubException) -> str:
    data = exc.data if isinstance(exc.data, dict) else {}
    return f"{exc.status} {data.get('message') or exc}"
