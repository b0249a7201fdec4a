"""The proposal reconciler runs nothing for a head its trust gate does not admit (Invariant 2).

A held head gets a pending status saying why, once, and an audit entry; once
the gate admits that head (a trusted ``/flywheel ok-to-test``), the run
starts. Uses real git, the fake runner and the fake forge.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.backends.forge.fake import FakeForge
from controller.backends.git import Repository
from controller.backends.pipelines.fake import FakeRunner
from controller.backends.store import open_store
from controller.clock import SYSTEM_CLOCK
from controller.engine.proposals import ProposalReconciler
from controller.scaffold import scaffold
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration


def test_untrusted_head_runs_nothing_until_admitted(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    repo.git("checkout", "-qb", "outside")
    repo.edit("specs/iris/model.yaml", "    C: 1.0\n", "    C: 3.0\n")
    repo.git("commit", "-qam", "outside change")
    head = repo.git("rev-parse", "HEAD")
    admitted: set[str] = set()
    store = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    forge = FakeForge()
    reconciler = ProposalReconciler(
        repository=Repository.open(str(repo.path), mirror_root=tmp_path / "mirrors"),
        store=store,
        forge=forge,
        runners={"local": FakeRunner()},
        work_dir=tmp_path / "work",
        admit=lambda ref, sha: (sha in admitted, "waits for /flywheel ok-to-test"), clock=SYSTEM_CLOCK
    )
    try:
        reconciler.reconcile()
        reconciler.reconcile()
        assert store.list_runs(ref="outside") == []
        held = [s for s in forge.statuses if s[0].proposal == "outside"]
        assert [(t.model, state, why) for t, state, why in held] == [
            ("iris", "pending", "waits for /flywheel ok-to-test")
        ]  # said once, not every pass
        assert [e.action for e in store.audit()] == ["proposal.held"]

        admitted.add(head)
        reconciler.reconcile()
        reconciler.collect()
        runs = store.list_runs(ref="outside")
        assert [r.commit for r in runs] == [head]
    finally:
        reconciler.shutdown()
        store.close()


def test_retrain_runs_the_head_again_despite_the_cache(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    repo.git("checkout", "-qb", "tune")
    repo.edit("specs/iris/model.yaml", "    C: 1.0\n", "    C: 3.0\n")
    repo.git("commit", "-qam", "tune")
    store = open_store(tmp_path / "state", clock=SYSTEM_CLOCK)
    reconciler = ProposalReconciler(
        repository=Repository.open(str(repo.path), mirror_root=tmp_path / "mirrors"),
        store=store,
        forge=FakeForge(),
        runners={"local": FakeRunner()},
        work_dir=tmp_path / "work", clock=SYSTEM_CLOCK
    )
    try:
        reconciler.reconcile()
        reconciler.collect()
        reconciler.reconcile()  # same head: nothing new
        (first,) = store.list_runs(ref="tune")
        again = reconciler.retrain("iris", "tune")
        reconciler.collect()
        runs = store.list_runs(ref="tune")
        assert [r.id for r in runs] == [again, first.id] and runs[0].cache_key == first.cache_key
        assert runs[0].reused_from is None  # trained again, not a cache hit
        with pytest.raises(ValueError, match="no branch"):
            reconciler.retrain("iris", "gone")
    finally:
        reconciler.shutdown()
        store.close()
