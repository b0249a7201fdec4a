"""Images built on one machine: real buildah builds and pushes to Debian's docker-registry, then skips.

No image can be pulled here, so the test makes its base itself: ``FROM
scratch`` with Debian's statically linked busybox, and the model's own
Dockerfile uses only ``sh``. buildah keeps its storage under the test's
temporary directory (``CONTAINERS_STORAGE_CONF``, buildah's own setting).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.backends.images import ImageError
from controller.backends.images.buildah import BuildahImages
from controller.backends.images.registry import Registry
from controller.cli import main
from controller.cli.build import image_request
from controller.specs.types import Catalog, Environment, ImagesSpec, Model, Source
from tests.fakes.oci_registry import RunningRegistry, running_registry
from tests.fixtures.required import program

pytestmark = pytest.mark.integration

BASE = "localhost/flywheel-test/busybox:1"
MODEL_DOCKERFILE = f"""FROM {BASE}
COPY requirements.txt /flywheel/requirements.txt
RUN sh -c 'wc -l < /flywheel/requirements.txt > /flywheel/count'
COPY train.py /flywheel/src/train.py
"""


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """buildah's storage under ``tmp_path``, holding the busybox base image built from scratch."""
    buildah = program("buildah")
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        busybox = Path(program("busybox", package="busybox-static"))
    conf = tmp_path / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "graph"}"\nrunroot = "{tmp_path / "run"}"\n'
    )
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    base = tmp_path / "base"
    base.mkdir()
    (base / "busybox").write_bytes(busybox.read_bytes())
    (base / "busybox").chmod(0o755)
    (base / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    )
    subprocess.run(
        [buildah, "--storage-driver", "vfs", "build", "--isolation", "chroot", "-t", BASE, str(base)],
        check=True,
        capture_output=True,
    )
    return tmp_path / "graph"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path / "registry") as running:
        yield running


def write_repo(root: Path, requirements: str) -> None:
    code = root / "models" / "iris"
    code.mkdir(parents=True, exist_ok=True)
    (code / "train.py").write_text("print('train')\n")
    (code / "requirements.txt").write_text(requirements)
    (code / "Dockerfile").write_text(MODEL_DOCKERFILE)


def catalog_for(host: str) -> Catalog:
    """The model and a cluster environment, built directly (the spec checks refuse home: cluster today)."""
    model = Model(
        name="iris",
        spec_path="models/iris/model.yaml",
        source=Source(
            path="models/iris",
            requirements="models/iris/requirements.txt",
            dockerfile="models/iris/Dockerfile",
        ),
    )
    images = ImagesSpec(
        registry=host, repository="ml/flywheel", base_image=BASE, push_secret=None, insecure=True
    )
    environment = Environment(
        name="staging", spec_path="environments/staging.yaml", home="cluster", images=images
    )
    return Catalog(models={"iris": model}, environments={"staging": environment})


def test_a_model_is_built_and_pushed_once_and_again_when_a_requirement_changes(
    tmp_path: Path, storage: Path, registry: RunningRegistry
) -> None:
    root = tmp_path / "repo"
    write_repo(root, "numpy==2.0\n")
    catalog = catalog_for(registry.host)
    images = BuildahImages(push=True, logs_dir=tmp_path / "logs")
    try:
        first_request = image_request(catalog, root, "iris", "staging")
        first = images.ensure(first_request)
        assert first.built and first.digest and first.digest.startswith("sha256:")
        assert first.reference == f"{registry.host}/ml/flywheel/iris:{first_request.tag}"
        with Registry(registry.host, insecure=True) as check:
            assert check.digest("ml/flywheel/iris", first_request.tag) == first.digest

        again = images.ensure(image_request(catalog, root, "iris", "staging"))
        assert (again.built, again.pinned) == (False, first.pinned)  # the registry has the tag

        write_repo(root, "numpy==2.1\n")
        changed_request = image_request(catalog, root, "iris", "staging")
        changed = images.ensure(changed_request)
        assert changed.built and changed_request.tag != first_request.tag and changed.digest != first.digest
    finally:
        images.close()


def test_without_push_the_local_image_is_enough(
    tmp_path: Path, storage: Path, registry: RunningRegistry
) -> None:
    root = tmp_path / "repo"
    write_repo(root, "numpy==2.0\n")
    images = BuildahImages(push=False)
    request = image_request(catalog_for(registry.host), root, "iris", "staging")
    try:
        assert images.ensure(request).built
        assert not images.ensure(request).built
        with Registry(registry.host, insecure=True) as check:
            assert check.digest("ml/flywheel/iris", request.tag) is None  # nothing was pushed
    finally:
        images.close()


def test_a_failing_build_says_which_image_and_shows_the_tail(
    tmp_path: Path, storage: Path, registry: RunningRegistry
) -> None:
    root = tmp_path / "repo"
    write_repo(root, "numpy==2.0\n")
    (root / "models" / "iris" / "Dockerfile").write_text(
        f"FROM {BASE}\nRUN sh -c 'echo broken step; exit 3'\n"
    )
    request = image_request(catalog_for(registry.host), root, "iris", "staging")
    images = BuildahImages(push=True)
    try:
        with pytest.raises(
            ImageError, match=rf"image {request.reference}: buildah build exited \d+"
        ) as raised:
            images.ensure(request)
        assert "broken step" in str(raised.value)
    finally:
        images.close()


def test_flywheel_build_refuses_an_environment_without_images_in_one_line() -> None:
    repo = Path(__file__).resolve().parents[1]  # the example repository: embedded environments only
    result = CliRunner().invoke(main, ["build", "iris", "--repo", str(repo)])
    assert result.exit_code == 1
    assert result.output == (
        "Error: environment staging: no images section (registry, repository, baseImage); "
        "pass --env naming a cluster environment\n"
    )
    result = CliRunner().invoke(main, ["build", "nope", "--repo", str(repo)])
    assert (
        result.output == "Error: no valid model 'nope' in " + str(repo) + " (models: breast-cancer, iris)\n"
    )
