"""A retrain is a proposal: commit its reason on ``flywheel/retrain/<model>`` and propose that branch.

Called by the trigger engine (:mod:`controller.engine.triggers`) when a
model's schedule ticks or its data changes. :class:`RetrainProposer` edits
the model's spec (the new data pins, the annotations that say why: see
:mod:`controller.specs.edit`), commits it on the model's one stable retrain
branch and proposes the branch through a :class:`RetrainBranches`: on the
embedded home the branch itself is the proposal (the reconciler trains every
branch), on GitHub a pull request is opened or updated.

At most one retrain of a model is open: while its proposal is open a new
reason is a new commit on top of it (and the pull request's title and
description say the newest reason); once it is merged or closed unmerged, the
next reason starts the branch again from the release branch. Proposing is
idempotent, so a controller that stopped between the commit and its audit
entry finds the reason already committed and commits nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controller.backends.git import Repository
from controller.engine.trigger_plan import Reason
from controller.specs.edit import edit_model_spec
from controller.specs.types import Model

__all__ = ["RETRAIN_PREFIX", "Proposed", "RetrainBranches", "RetrainProposer", "retrain_branch"]


RETRAIN_PREFIX = "flywheel/retrain/"


def retrain_branch(model: str) -> str:
    return f"{RETRAIN_PREFIX}{model}"


class RetrainBranches(Protocol):
    """Where retrain branches are written and proposed: the local repository, or GitHub's API."""

    def open_head(self, branch: str) -> str | None:
        """The head commit of ``branch``'s open proposal; ``None`` when none is open (never made, merged,
        or closed unmerged)."""

    def read(self, commit: str, path: str) -> bytes | None:
        """The file at ``path`` in ``commit`` (a commit this writer made or found), or ``None``."""

    def write(self, branch: str, *, parent: str, path: str, content: bytes, message: str) -> str:
        """Commit ``content`` at ``path`` on top of ``parent`` and point ``branch`` at it; its sha."""

    def propose(self, branch: str, *, title: str, body: str) -> str:
        """Open ``branch``'s proposal, or update the open one's title and body; what it is, for people."""


@dataclass(frozen=True)
class Proposed:
    """What proposing one reason did."""

    branch: str
    commit: str  # the branch's head now
    committed: bool  # False: the reason was already on the branch (a restart), nothing new was written
    proposal: str  # "branch flywheel/retrain/x", "pull request #12", ...

    def to_json(self) -> dict[str, object]:
        return {
            "branch": self.branch,
            "commit": self.commit,
            "committed": self.committed,
            "proposal": self.proposal,
        }


class AlreadyOnMain(Exception):
    """The release branch's spec already says what the reason would write: nothing to propose."""


class RetrainProposer:
    def __init__(self, *, repository: Repository, branches: RetrainBranches, release_branch: str) -> None:
        self.repository = repository
        self.branches = branches
        self.release_branch = release_branch

    def propose(self, model: Model, reason: Reason) -> Proposed:
        """Commit ``reason`` on the model's retrain branch and propose it.

        Raises :class:`AlreadyOnMain` when no proposal is open and the
        release branch already pins what the reason would; a backend's error
        (git, GitHub) goes up, and the trigger engine tries again later.
        """
        branch = retrain_branch(model.name)
        head = self.branches.open_head(branch)
        if head is None:
            parent = self.repository.resolve(self.release_branch)
            text = self.repository.read_file(parent, model.spec_path)
        else:
            parent, text = head, self.branches.read(head, model.spec_path)
        if text is None:
            raise FileNotFoundError(f"{model.spec_path} is not in {parent[:10]}")
        old = text.decode("utf-8")
        new = edit_model_spec(
            old,
            pins={name: (v.pin, v.value) for name, v in reason.pins.items()},
            annotations=reason.annotations,
        )
        if new == old and head is None:
            raise AlreadyOnMain(f"{self.release_branch} already says this ({model.spec_path})")
        committed = new != old
        commit = parent
        if committed:
            message = f"{reason.title}\n\n{reason.body}\n"
            commit = self.branches.write(
                branch, parent=parent, path=model.spec_path, content=new.encode("utf-8"), message=message
            )
        body = (
            f"{reason.body}\n\nA retrain is a proposal like any other: Flywheel trains it and reports here; "
            "merging it ships it. Earlier reasons, if any, are this branch's earlier commits."
        )
        proposal = self.branches.propose(branch, title=reason.title, body=body)
        return Proposed(branch=branch, commit=commit, committed=committed, proposal=proposal)
