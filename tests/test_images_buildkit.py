"""Images built in the cluster: the BuildKit Job rendered, validated, created by the real client, followed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from controller.backends.images import ImageError, ImageRequest
from controller.backends.images.buildkit import BuildKitImages, job_name, manifest_digest
from controller.backends.images.registry import Registry
from controller.backends.pipelines import environment_hash
from controller.backends.python_env import PythonEnvironment
from controller.clock import FakeClock
from controller.specs.types import ImagesSpec
from tests.fakes.kube_api import FakeKube, Outcome
from tests.fakes.oci_registry import RunningRegistry, push_image, running_registry

DIGEST = "sha256:" + "ab" * 32
BUILD_LOG = f"#9 exporting layers done\n#9 exporting manifest {DIGEST} 0.0s done\n#9 pushing layers done\n"
K8S_VERSION = "1.30.0"  # appArmorProfile in a container's securityContext is GA from 1.30


def make_request(
    source: Path,
    registry: str = "registry.example:5000",
    *,
    push_secret: str | None = "push",
    insecure: bool = False,
    requirements: str = "numpy==2.0\n",
) -> ImageRequest:
    return ImageRequest(
        model="iris",
        environment_hash=environment_hash(requirements=requirements, python="3.11"),
        source_dir=source,
        python=PythonEnvironment(requirements=requirements, python="3.11"),
        dockerfile=None,
        images=ImagesSpec(
            registry=registry,
            repository="ml/flywheel",
            base_image="python:3.11-slim",
            push_secret=push_secret,
            insecure=insecure,
        ),
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    code = tmp_path / "iris"
    code.mkdir()
    (code / "train.py").write_text("print('train')\n")
    return code


def builder(tmp_path: Path, kube: FakeKube | None = None, **options: Any) -> BuildKitImages:
    return BuildKitImages(
        api=kube.api_client() if kube else None,
        namespace="ml-builds",
        clock=FakeClock(),
        logs_dir=tmp_path / "logs",
        **options,
    )


@pytest.mark.unit
def test_the_job_and_its_config_map_validate_as_kubernetes_objects(source: Path, tmp_path: Path) -> None:
    for document in builder(tmp_path).manifests(make_request(source)):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


@pytest.mark.unit
def test_the_job_runs_buildkit_rootless_and_pushes_the_reference(source: Path, tmp_path: Path) -> None:
    request = make_request(source, insecure=True)
    config_map, job = builder(tmp_path).manifests(request)
    assert job["metadata"]["name"] == config_map["metadata"]["name"] == job_name("iris", request.tag)
    assert job["metadata"]["labels"]["flywheel.dev/model"] == "iris"
    assert job["metadata"]["labels"]["flywheel.dev/image-tag"] == request.tag[:63]  # a label's limit
    assert job["metadata"]["annotations"]["flywheel.dev/image"] == request.reference
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "moby/buildkit:rootless"
    assert container["command"] == ["buildctl-daemonless.sh"]
    assert container["args"][-1] == f"type=image,name={request.reference},push=true,registry.insecure=true"
    assert container["securityContext"] == {
        "seccompProfile": {"type": "Unconfined"},
        "appArmorProfile": {"type": "Unconfined"},
        "runAsUser": 1000,
        "runAsGroup": 1000,
    }
    assert {"name": "DOCKER_CONFIG", "value": "/home/user/.docker"} in container["env"]
    secret = next(v for v in pod["volumes"] if v["name"] == "docker-config")["secret"]
    assert secret == {"secretName": "push", "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}
    assert pod["initContainers"][0]["volumeMounts"][0] == {
        "name": "context",
        "mountPath": "/context",
        "readOnly": True,
    }


@pytest.mark.unit
def test_without_a_push_secret_no_docker_config_is_mounted(source: Path, tmp_path: Path) -> None:
    _, job = builder(tmp_path).manifests(make_request(source, push_secret=None))
    pod = job["spec"]["template"]["spec"]
    assert all(v["name"] != "docker-config" for v in pod["volumes"])
    assert (
        "push=true" in pod["containers"][0]["args"][-1] and "insecure" not in pod["containers"][0]["args"][-1]
    )


@pytest.mark.unit
def test_job_names_are_dns_labels_derived_from_model_and_tag() -> None:
    tag = "f" * 64
    name = job_name("Iris_Classifier.v2", tag)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    assert name == job_name("Iris_Classifier.v2", tag) != job_name("Iris_Classifier.v2", "e" * 64)


@pytest.mark.unit
def test_the_digest_is_read_from_the_last_exported_manifest_line() -> None:
    index = "sha256:" + "cd" * 32
    assert manifest_digest(BUILD_LOG) == DIGEST
    assert manifest_digest(BUILD_LOG + f"#9 exporting manifest list {index} done\n") == index
    assert manifest_digest("#1 building\n") is None


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    fake = FakeKube()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path / "registry") as running:
        yield running


def job_posts(kube: FakeKube) -> int:
    return sum(1 for method, path in kube.requests if method == "POST" and path.endswith("/jobs"))


@pytest.mark.integration
def test_a_missing_tag_is_built_once_and_then_found(
    source: Path, tmp_path: Path, kube: FakeKube, registry: RunningRegistry
) -> None:
    request = make_request(source, registry.host, insecure=True)
    pushed: list[str] = []
    kube.outcome = lambda job: Outcome(succeeded=True, log=BUILD_LOG)
    kube.on_finish = lambda job: pushed.append(push_image(registry, "ml/flywheel/iris", request.tag))
    images = builder(tmp_path, kube)

    first = images.ensure(request)
    assert first.built and first.digest == pushed[0]  # the registry's digest after the push
    assert first.pinned == f"{request.reference}@{pushed[0]}"
    name = job_name("iris", request.tag)
    assert (tmp_path / "logs" / f"{name}.log").read_text() == BUILD_LOG
    created = kube.jobs[("ml-builds", name)]
    kubernetes_validate.validate(created, K8S_VERSION, strict=False)
    assert any("watch=true" in path for _, path in kube.requests)

    second = images.ensure(request)
    assert not second.built and second.digest == pushed[0]
    assert job_posts(kube) == 1

    changed = images.ensure(make_request(source, registry.host, insecure=True, requirements="numpy==2.1\n"))
    assert changed.built and job_posts(kube) == 2
    images.close()


@pytest.mark.integration
def test_creating_a_build_twice_follows_the_existing_job(
    source: Path, tmp_path: Path, kube: FakeKube
) -> None:
    kube.outcome = lambda job: Outcome(succeeded=True, log=BUILD_LOG)
    images = builder(tmp_path, kube)
    request = make_request(source)
    assert images.build(request) == BUILD_LOG
    assert images.build(request) == BUILD_LOG  # 409 on both objects: the same Job is followed
    assert len(kube.jobs) == 1 and job_posts(kube) == 2


@pytest.mark.integration
def test_without_the_pushed_tag_in_the_registry_the_logs_digest_is_used(
    source: Path, tmp_path: Path, kube: FakeKube
) -> None:
    kube.outcome = lambda job: Outcome(succeeded=True, log=BUILD_LOG)
    missing = Registry("unused.example", insecure=True)
    missing.digest = lambda name, tag: None  # type: ignore[method-assign]
    built = builder(tmp_path, kube, registry=lambda images: missing).ensure(make_request(source))
    missing.close()
    assert built.built and built.digest == DIGEST


@pytest.mark.integration
def test_a_failed_build_is_an_error_with_its_log_tail(source: Path, tmp_path: Path, kube: FakeKube) -> None:
    log = "".join(f"#5 line {n}\n" for n in range(40)) + "ERROR: failed to solve: pip install exited 1\n"
    kube.outcome = lambda job: Outcome(succeeded=False, log=log)
    request = make_request(source)
    with pytest.raises(ImageError) as raised:
        builder(tmp_path, kube).build(request)
    message = str(raised.value)
    name = job_name("iris", request.tag)
    assert message.startswith(f"image {request.reference}: build job ml-builds/{name} failed (log: ")
    assert message.endswith("ERROR: failed to solve: pip install exited 1") and "#5 line 10\n" not in message
    assert (tmp_path / "logs" / f"{name}.log").read_text() == log


@pytest.mark.unit
def test_without_a_kubernetes_api_a_build_is_refused(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no Kubernetes API is configured"):
        builder(tmp_path).build(make_request(source))
