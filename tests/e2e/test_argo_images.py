"""End to end on the cluster home with real image builds: built once per environment, named in the lineage.

Pins down what ``flywheel run --once`` does when nothing stands in for the
image builder: the composition root builds BuildKit Jobs through the Kubernetes
API of ``FLYWHEEL_KUBECONFIG`` (the stand-in of ``tests/fakes/kube_api.py``,
reached through the real ``kubernetes`` client; a finished Job pushes an image
to the real registry of ``tests/fakes/oci_registry.py``, as BuildKit would),
and asks that registry for the tag first. The first pass builds the image once
(the release branch and a proposal share it), a proposal that changes a param
but not the requirements builds none, one that changes a requirement builds
one; the version the release registers names its image's digest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from controller.app import build_controller, run_controller
from controller.backends.images.buildkit import IMAGE_ANNOTATION
from controller.backends.store import open_store
from controller.cli import main
from controller.clock import SYSTEM_CLOCK
from controller.settings import ArgoSettings, ControllerSettings, Settings
from tests.e2e.test_argo import NAMESPACE, STAGING, _runs
from tests.e2e.test_proposals import _seed_production
from tests.fakes.argo_server import FakeArgoServer
from tests.fakes.kube_api import FakeKube, Outcome
from tests.fakes.oci_registry import RunningRegistry, push_image, running_registry
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.e2e


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def kube(registry: RunningRegistry) -> Iterator[FakeKube]:
    """The Kubernetes API the builds go to; a finished build Job pushes its image, as BuildKit does."""
    pushed: dict[str, str] = {}

    def push(job: dict[str, Any]) -> None:
        reference = job["metadata"]["annotations"][IMAGE_ANNOTATION]
        name, tag = reference.removeprefix(f"{registry.host}/").rsplit(":", 1)
        pushed[reference] = push_image(registry, name, tag, note=reference)

    fake = FakeKube(
        outcome=lambda job: Outcome(succeeded=True, log="#9 pushing layers done\n"), on_finish=push
    )
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def repo(tmp_path: Path, registry: RunningRegistry) -> Iterator[tuple[GitRepo, FakeArgoServer]]:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "ml")])
    assert result.exit_code == 0, result.output
    git = GitRepo(tmp_path / "ml")
    with pytest.MonkeyPatch.context() as patch, FakeArgoServer(token="s3cret") as argo:
        patch.setenv("ARGO_TOKEN", "s3cret")
        staging = STAGING.format(namespace=NAMESPACE, server=argo.url).replace(
            "registry: registry.test:5000", f"registry: {registry.host}\n    insecure: true"
        )
        git.write("environments/staging.yaml", staging)
        git.commit("Train on Argo, images built in the cluster")
        yield git, argo


def _run_once(git: GitRepo, state: Path, argo: FakeArgoServer, kube: FakeKube, tmp_path: Path) -> int:
    settings = Settings(
        controller=ControllerSettings(repo=str(git.path), state_dir=state, promote=True),
        argo=ArgoSettings(
            artifacts_dir=argo.claim("flywheel-artifacts").parent,
            kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig"),
        ),
    )
    return run_controller(settings, once=True, controller=build_controller(settings))


def _builds(kube: FakeKube) -> int:
    """The build Jobs made (two runs asking at once create one: the second follows the first's)."""
    return len(kube.jobs)


def test_a_proposal_builds_its_image_once_and_a_changed_requirement_builds_one(
    repo: tuple[GitRepo, FakeArgoServer], kube: FakeKube, registry: RunningRegistry, tmp_path: Path
) -> None:
    git, argo = repo
    state = tmp_path / "state"
    _seed_production(state, accuracy=0.90)
    git.branch("tune-c")
    git.edit("specs/iris/model.yaml", "C: 1.0", "C: 0.5")
    git.commit("Lower C")
    git.git("checkout", "--quiet", "main")

    assert _run_once(git, state, argo, kube, tmp_path) == 0
    [trained] = _runs(state, "tune-c")
    assert trained.status == "succeeded", trained
    assert _builds(kube) == 1  # the release branch and the proposal: one environment, one image
    [job] = kube.jobs.values()
    reference = job["metadata"]["annotations"][IMAGE_ANNOTATION]

    store = open_store(state, clock=SYSTEM_CLOCK)
    try:
        newest = store.list_versions("iris")[-1]
    finally:
        store.close()
    assert newest.number == 2 and newest.image is not None  # the release branch's version, after the seed
    assert newest.image.startswith(f"{reference}@sha256:")
    name, tag = reference.removeprefix(f"{registry.host}/").rsplit(":", 1)
    assert newest.image == f"{reference}@{push_image(registry, name, tag, note=reference)}"  # the same push

    git.branch("tune-c-again")
    git.edit("specs/iris/model.yaml", "C: 1.0", "C: 0.7")
    git.commit("C 0.7: the same requirements")
    git.git("checkout", "--quiet", "main")
    assert _run_once(git, state, argo, kube, tmp_path) == 0
    [again] = _runs(state, "tune-c-again")
    assert again.status == "succeeded" and _builds(kube) == 1  # the registry had the tag

    git.branch("more-deps")
    git.write("specs/iris/requirements.txt", git.read("specs/iris/requirements.txt") + "threadpoolctl>=3\n")
    git.commit("A new requirement")
    git.git("checkout", "--quiet", "main")
    assert _run_once(git, state, argo, kube, tmp_path) == 0
    [changed] = _runs(state, "more-deps")
    assert changed.status == "succeeded" and _builds(kube) == 2
