"""The argo runner against the stand-in Argo Server, through the real ``argo-workflows`` SDK.

The example iris model trains "on Argo" (each step a subprocess the stand-in
runs for its pod): the image is asked for first, the Workflow submitted once,
its metrics merged, its model brought home from the claim; a failing step's
log reaches the result; a second start of the same run follows the existing
Workflow; ``cancel`` stops it.
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

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def images() -> FakeImages:
    return FakeImages()


@pytest.fixture
def argo(images: FakeImages) -> Iterator[FakeArgoServer]:
    def image_source(image: str) -> Path:
        reference = image.split("@", 1)[0]
        return next(r.source_dir for r in reversed(images.requests) if r.reference == reference)

    with FakeArgoServer(image_source=image_source, token="s3cret") as server:
        yield server


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
    source = tmp_path / "run" / "src"
    if not source.exists():
        shutil.copytree(REPO / model.source.path, source)
    return RunRequest(
        run_id="7",
        model=model,
        source_dir=source,
        run_dir=tmp_path / "run",
        params=dict(model.params),
        data={d.name: d.uri for d in model.data},
        environment=cluster(server),
        cache_key="k" * 64,
        on_event=changes.pop("on_event", events.append),
    )


def runner(images: FakeImages, server: FakeArgoServer) -> ArgoRunner:
    claims = server.claim("flywheel-artifacts").parent
    return ArgoRunner(images=images, token=lambda spec: "s3cret", settings=ArgoSettings(artifacts_dir=claims))


def test_the_example_model_trains_on_argo(tmp_path: Path, argo: FakeArgoServer, images: FakeImages) -> None:
    events: list[StepEvent] = []
    result = runner(images, argo).start(request(tmp_path, argo, iris(), events)).wait(120)
    assert result.status == "succeeded", (result.error, [s.log_tail for s in result.steps])
    assert argo.created == ["flywheel-run-7"] and len(images.requests) == 1
    assert set(result.metrics) >= {"accuracy", "f1_macro", "log_loss"}
    assert result.model_dir == tmp_path / "run" / "model" and any(result.model_dir.iterdir())
    assert [(e.step, e.kind) for e in events if e.kind == "finished"] == [
        ("train", "finished"),
        ("evaluate", "finished"),
    ]
    workflow = argo.workflows[("ml-pipelines", "flywheel-run-7")]
    image = workflow["spec"]["templates"][1]["container"]["image"]
    assert image == images.ensure(images.requests[0]).pinned and "@sha256:" in image


def test_a_failing_step_reports_its_log(tmp_path: Path, argo: FakeArgoServer, images: FakeImages) -> None:
    model = iris()
    steps = (Step(name="train", run="python -c 'import sys; print(\"boom here\"); sys.exit(3)'", retries=1),)
    model = Model(name=model.name, spec_path=model.spec_path, source=model.source, steps=steps)
    result = runner(images, argo).start(request(tmp_path, argo, model, [])).wait(60)
    assert result.status == "failed" and result.error.startswith("step train:")
    [train] = result.steps
    assert train.status == "failed" and train.attempts == 2 and "boom here" in train.log_tail


def test_a_second_start_follows_the_same_workflow(
    tmp_path: Path, argo: FakeArgoServer, images: FakeImages
) -> None:
    first = runner(images, argo).start(request(tmp_path, argo, iris(), []))
    again = runner(images, argo).start(request(tmp_path, argo, iris(), []))  # a restarted controller
    assert first.wait(120).status == "succeeded" and again.wait(120).status == "succeeded"
    assert argo.created == ["flywheel-run-7"]


def test_cancel_stops_the_workflow(tmp_path: Path, argo: FakeArgoServer, images: FakeImages) -> None:
    model = iris()
    steps = (Step(name="train", run="sleep 30"), Step(name="evaluate", run="true", needs=("train",)))
    model = Model(name=model.name, spec_path=model.spec_path, source=model.source, steps=steps)
    started = threading.Event()
    handle = runner(images, argo).start(request(tmp_path, argo, model, [], on_event=lambda e: started.set()))
    assert started.wait(60)
    handle.cancel()
    result = handle.wait(60)
    assert result.status == "cancelled", result.error
    assert argo.stopped == ["flywheel-run-7"]
    assert [s.status for s in result.steps] == ["cancelled", "skipped"]
