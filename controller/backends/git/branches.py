"""Retrain branches written into the watched repository: on the embedded home the branch is the proposal.

The composition root gives :class:`LocalRetrainBranches` to the retrain
proposer (:mod:`controller.engine.retrain`) when no GitHub repository is
configured. A commit is made with libgit2 without touching any working tree:
a new blob for the edited spec, the parent's tree with that one file
replaced, a commit by Flywheel at the injected clock's time, and the branch
pointed at it. For a repository the controller mirrors (a URL), the branch is
pushed to its origin and the mirror fetched, so the branch survives the
mirror's pruning fetches. A branch whose head the release branch contains
(merged) or that is gone (deleted: closed unmerged) has no open proposal.
"""

from __future__ import annotations

import pygit2
from pygit2.enums import FileMode

from controller.backends.git.mirrors import GitError, run_git
from controller.backends.git.repository import Repository
from controller.clock import Clock

__all__ = ["LocalRetrainBranches"]

AUTHOR = ("Flywheel", "flywheel@localhost")


class LocalRetrainBranches:
    def __init__(self, repository: Repository, *, release_branch: str, clock: Clock) -> None:
        self.repository = repository
        self.release_branch = release_branch
        self.clock = clock

    def open_head(self, branch: str) -> str | None:
        head = self.repository.ref_target(f"refs/heads/{branch}")
        if head is None:
            return None
        main = self.repository.resolve(self.release_branch)
        return None if self.repository.merge_base(main, head) == head else head

    def read(self, commit: str, path: str) -> bytes | None:
        return self.repository.read_file(commit, path)

    def write(self, branch: str, *, parent: str, path: str, content: bytes, message: str) -> str:
        try:
            repo = pygit2.Repository(str(self.repository.path))
            base = repo.revparse_single(parent).peel(pygit2.Commit)
            index = pygit2.Index()
            index.read_tree(base.tree)
            index.add(pygit2.IndexEntry(path, repo.create_blob(content), FileMode.BLOB))
            tree = index.write_tree(repo)
            when = int(self.clock.now().timestamp())
            signature = pygit2.Signature(*AUTHOR, when, 0)
            commit = repo.create_commit(None, signature, signature, message, tree, [base.id])
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise GitError(f"cannot commit on {branch} in {self.repository.location}: {exc}") from exc
        if self.repository.remote:
            run_git(
                ["push", "--force", "--quiet", "origin", f"{commit}:refs/heads/{branch}"],
                cwd=self.repository.path,
                what=f"push {branch} to {self.repository.location}",
            )
            self.repository.fetch()
        else:
            repo.references.create(f"refs/heads/{branch}", commit, force=True)
        return str(commit)

    def propose(self, branch: str, *, title: str, body: str) -> str:
        return f"branch {branch}"  # the reconciler trains every branch: the branch is the proposal
