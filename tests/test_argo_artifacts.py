"""A run's model brought home from the artifacts claim by several handles at once arrives whole, once.

Pins down :meth:`ClaimArtifacts.bring_model` under the race a controller
that adopted a Workflow makes with the handle still following it: every
caller returns without an error and the run's model directory holds every
file of the model (each copy goes to a directory of its own, renamed into
place; a later caller keeps the whole one it finds).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from controller.backends.pipelines.argo_artifacts import ArtifactsError, ClaimArtifacts
from controller.backends.pipelines.argo_workflow import run_paths
from controller.specs.types import PvcArtifacts

pytestmark = pytest.mark.unit


def test_handles_bringing_one_model_home_at_once_all_succeed_and_it_arrives_whole(tmp_path: Path) -> None:
    claim = tmp_path / "claim"
    source = claim / run_paths("flywheel-run-7")[1]
    for index in range(1000):
        (source / f"part-{index // 50}").mkdir(parents=True, exist_ok=True)
        (source / f"part-{index // 50}" / f"{index}.bin").write_bytes(bytes([index % 251]) * 2048)
    store = ClaimArtifacts(PvcArtifacts(claim_name="flywheel-artifacts"), claim)
    target = tmp_path / "run-7" / "model"
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def bring(delay: float) -> None:
        start.wait()
        time.sleep(delay)  # each starts while the ones before it are copying
        try:
            store.bring_model("flywheel-run-7", target)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=bring, args=(0.003 * n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    brought = sorted(p.relative_to(target).as_posix() for p in target.rglob("*.bin"))
    assert brought == sorted(p.relative_to(source).as_posix() for p in source.rglob("*.bin"))
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # no staging directory left behind


def test_a_model_missing_from_the_claim_is_an_error_naming_where(tmp_path: Path) -> None:
    store = ClaimArtifacts(PvcArtifacts(claim_name="flywheel-artifacts"), tmp_path / "claim")
    with pytest.raises(ArtifactsError, match="flywheel-run-7/model is not there: mount the claim"):
        store.bring_model("flywheel-run-7", tmp_path / "model")
