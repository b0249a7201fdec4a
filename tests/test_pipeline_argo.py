"""The argo runner against the stand-in Argo Server, through the real ``argo-workflows`` SDK.

The example iris model trains "on Argo" (each step a subprocess the stand-in
runs for its pod): the image is asked for first, the Workflow submitted once,
its metrics merged, its model brought home from the claim; a failing step's
log reaches the result; a second start of the same run follows the existing
Workflow; ``cancel`` stops it. The image holds no code: each pod checks the
run's commit out of the repository (a git repository the test makes with the
example model's code), so a code change runs the new code in the same image.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.backends.images.fake import FakeImages
from controller.backends.pipelines import RunRequest, StepEvent
from controller.backends.pipelines.argo import ArgoRunner
from controller.settings import ArgoSettings
from controller.specs import load_tree
from controller.specs.types import ArgoSpec, Environment, ImagesSpec, Model, PvcArtifacts, Step
from tests.fakes.argo_server import FakeArgoServer
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def images() -> FakeImages:
    return FakeImages()


@pytest.fixture
def argo() -> Iterator[FakeArgoServer]:
    with FakeArgoServer(token="s3cret") as server:
        yield server


@pytest.fixture
def code(tmp_path: Path) -> GitRepo:
    """A git repository holding the example model's code where its spec says, one commit on main."""
    repo = GitRepo(tmp_path / "repo")
    repo.path.mkdir()
    repo.git("init", "--quiet", "--initial-branch=main")
    shutil.copytree(REPO / iris().source.path, repo.path / iris().source.path, dirs_exist_ok=True)
    repo.commit("the example model")
    return repo


def cluster(server: FakeArgoServer) -> Environment:
    return Environment(
        name="staging",
        spec_path="environments/staging.yaml",
        home="cluster",
        runner="argo",
        pipeline_namespace="ml-pipelines",
        argo=ArgoSpec(server=server.url, service_account="flywheel-steps", token_env="ARGO_TOKEN"),
        images=ImagesSpec(registry="registry.test:5000", repository="ml", base_image="python:3.11-slim"),
        artifacts=PvcArtifacts(claim_name="flywheel-artifacts", mount_path="/artifacts"),
    )


def iris() -> Model:
    return load_tree(REPO).models["iris"]


def request(
    tmp_path: Path, server: FakeArgoServer, model: Model, events: list[StepEvent], **changes: Any
) -> RunRequest:
    run_id = changes.pop("run_id", "7")
    source = tmp_path / f"run-{run_id}" / "src"
    if not source.exists():
        shutil.copytree(REPO / model.source.path, source)
    return RunRequest(
        run_id=run_id,
        model=model,
        source_dir=source,
        run_dir=tmp_path / f"run-{run_id}",
        commit=changes.pop("commit"),
        params=dict(model.params),
        data={d.name: d.uri for d in model.data},
        environment=cluster(server),
        cache_key="k" * 64,
        on_event=changes.pop("on_event", events.append),
    )


def runner(images: FakeImages, server: FakeArgoServer, code: GitRepo) -> ArgoRunner:
    claims = server.claim("flywheel-artifacts").parent
    return ArgoRunner(
        images=images,
        repository=str(code.path),
        token=lambda spec: "s3cret",
        settings=ArgoSettings(artifacts_dir=claims),
    )


def head(code: GitRepo) -> str:
    return code.git("rev-parse", "HEAD")


def test_the_example_model_trains_on_argo(
    tmp_path: Path, argo: FakeArgoServer, images: FakeImages, code: GitRepo
) -> None:
    events: list[StepEvent] = []
    result = (
        runner(images, argo, code).start(request(tmp_path, argo, iris(), events, commit=head(code))).wait(120)
    )
    assert result.status == "succeeded", (result.error, [s.log_tail for s in result.steps])
    assert argo.created == ["flywheel-run-7"] and len(images.requests) == 1
    assert set(result.metrics) >= {"accuracy", "f1_macro", "log_loss"}
    assert result.model_dir == tmp_path / "run-7" / "model" and any(result.model_dir.iterdir())
    assert [(e.step, e.kind) for e in events if e.kind == "finished"] == [
        ("train", "finished"),
        ("evaluate", "finished"),
    ]
    workflow = argo.workflows[("ml-pipelines", "flywheel-run-7")]
    image = workflow["spec"]["templates"][1]["container"]["image"]
    assert image == images.ensure(images.requests[0]).pinned and "@sha256:" in image
    assert result.image == image  # the lineage's image: reference@digest


def test_a_failing_step_reports_its_log(
    tmp_path: Path, argo: FakeArgoServer, images: FakeImages, code: GitRepo
) -> None:
    model = iris()
    steps = (Step(name="train", run="python -c 'import sys; print(\"boom here\"); sys.exit(3)'", retries=1),)
    model = Model(name=model.name, spec_path=model.spec_path, source=model.source, steps=steps)
    result = runner(images, argo, code).start(request(tmp_path, argo, model, [], commit=head(code))).wait(60)
    assert result.status == "failed" and result.error.startswith("step train:")
    [train] = result.steps
    assert train.status == "failed" and train.attempts == 2 and "boom here" in train.log_tail


def test_a_second_start_follows_the_same_workflow(
    tmp_path: Path, argo: FakeArgoServer, images: FakeImages, code: GitRepo
) -> None:
    first = runner(images, argo, code).start(request(tmp_path, argo, iris(), [], commit=head(code)))
    again = runner(images, argo, code).start(
        request(tmp_path, argo, iris(), [], commit=head(code))
    )  # a restarted controller
    assert first.wait(120).status == "succeeded" and again.wait(120).status == "succeeded"
    assert argo.created == ["flywheel-run-7"]


def test_cancel_stops_the_workflow(
    tmp_path: Path, argo: FakeArgoServer, images: FakeImages, code: GitRepo
) -> None:
    model = iris()
    steps = (Step(name="train", run="sleep 30"), Step(name="evaluate", run="true", needs=("train",)))
    model = Model(name=model.name, spec_path=model.spec_path, source=model.source, steps=steps)
    started = threading.Event()
    handle = runner(images, argo, code).start(
        request(tmp_path, argo, model, [], commit=head(code), on_event=lambda e: started.set())
    )
    assert started.wait(60)
    handle.cancel()
    result = handle.wait(60)
    assert result.status == "cancelled", result.error
    assert argo.stopped == ["flywheel-run-7"]
    assert [s.status for s in result.steps] == ["cancelled", "skipped"]


def test_a_code_change_runs_the_new_code_in_the_same_image(
    tmp_path: Path, argo: FakeArgoServer, images: FakeImages, code: GitRepo
) -> None:
    model = iris()
    steps = (Step(name="train", run="cat marker.txt"),)
    model = Model(name=model.name, spec_path=model.spec_path, source=model.source, steps=steps)
    code.write(f"{model.source.path}/marker.txt", "code of the first commit\n")
    first = code.commit("first")
    code.write(f"{model.source.path}/marker.txt", "code of the second commit\n")
    second = code.commit("second: code only, the same requirements")
    logs = []
    for run_id, commit in (("7", first), ("8", second)):
        result = runner(images, argo, code).start(
            request(tmp_path, argo, model, [], run_id=run_id, commit=commit)
        )
        [train] = result.wait(60).steps
        assert train.status == "succeeded" and train.log_path is not None, train
        logs.append(train.log_path.read_text())
    assert "code of the first commit" in logs[0] and "code of the second commit" in logs[1]
    assert len(images.requests) == 2 and len(images.builds) == 1  # one image: the environment did not change
    workflow = argo.workflows[("ml-pipelines", "flywheel-run-8")]
    [artifact] = [a for a in workflow["spec"]["templates"][1]["inputs"]["artifacts"] if "git" in a]
    assert artifact["git"] == {"repo": str(code.path), "revision": second}
