"""Where a run on Argo keeps its model: the artifacts claim or an S3 bucket, seen from the controller.

The argo runner (:mod:`.argo`) calls :func:`run_artifacts` for the run's
Environment and, through what it returns, puts production's model where the
steps find it (``FLYWHEEL_BASELINE_MODEL_DIR``) before submitting, and after
the Workflow succeeded brings the trained model and the training inputs'
sample (``FLYWHEEL_REFERENCE_DATA``) home to the run's directory. The places
are the Workflow's (:mod:`.argo_workflow`: :func:`run_paths` and
:func:`baseline_path` on the claim, :func:`bucket_key` of
``<workflow>/work``, ``…/model`` and ``…/baseline`` in the bucket),
so the pods and the controller agree.

* :class:`ClaimArtifacts`: the PersistentVolumeClaim, which the controller
  mounts too (``FLYWHEEL_ARGO_ARTIFACTS_DIR/<claimName>``, else the
  Environment's ``mountPath``).
* :class:`BucketArtifacts`: the bucket through a
  :class:`~controller.backends.objects.Bucket` (boto3 at the Environment's
  ``endpoint``, else AWS, with the credentials of boto3's own chain); the
  steps use the Secret the Environment names. A directory is stored as one
  object per file under its key, as Argo stores an artifact with
  ``archive: none``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from controller.backends.objects import Bucket, ObjectStoreError
from controller.backends.pipelines.argo_workflow import (
    REFERENCE_PATH,
    baseline_path,
    bucket_key,
    run_paths,
)
from controller.settings import ArgoSettings
from controller.specs.types import ArtifactsSpec, PvcArtifacts, S3Artifacts

__all__ = ["ArtifactsError", "BucketArtifacts", "ClaimArtifacts", "RunArtifacts", "run_artifacts"]


class ArtifactsError(RuntimeError):
    """The artifact store could not be read or written; the message says where and why."""


class RunArtifacts(Protocol):
    def put_baseline(self, workflow: str, source: Path) -> None:
        """Put production's model (the directory ``source``) where Workflow ``workflow``'s steps read it."""
        ...

    def bring_model(self, workflow: str, target: Path) -> None:
        """Copy the model the Workflow trained into ``target`` (replaced); :class:`ArtifactsError` if none."""
        ...

    def bring_reference(self, workflow: str, target: Path) -> bool:
        """Copy the training inputs' sample into the file ``target``; ``False`` when the steps wrote none."""
        ...


def run_artifacts(spec: ArtifactsSpec, settings: ArgoSettings, *, s3_client: Any = None) -> RunArtifacts:
    """The artifact store ``spec`` names, as this controller reaches it."""
    if isinstance(spec, PvcArtifacts):
        return ClaimArtifacts(spec, settings.claim_dir(spec.claim_name, spec.mount_path))
    return BucketArtifacts(spec, client=s3_client)


class ClaimArtifacts:
    def __init__(self, spec: PvcArtifacts, root: Path) -> None:
        self.spec = spec
        self.root = root

    def _missing(self, where: Path) -> ArtifactsError:
        return ArtifactsError(
            f"{where} is not there: mount the claim {self.spec.claim_name!r} at {self.root} "
            f"(FLYWHEEL_ARGO_ARTIFACTS_DIR/<claimName>; without it, {self.spec.mount_path})"
        )

    def put_baseline(self, workflow: str, source: Path) -> None:
        if not self.root.is_dir():
            raise self._missing(self.root)
        shutil.copytree(source, self.root / baseline_path(workflow), dirs_exist_ok=True)

    def bring_model(self, workflow: str, target: Path) -> None:
        source = self.root / run_paths(workflow)[1]
        if not source.is_dir():
            raise self._missing(source)
        _into_place(target, lambda staging: shutil.copytree(source, staging))

    def bring_reference(self, workflow: str, target: Path) -> bool:
        source = self.root / run_paths(workflow)[0] / PurePosixPath(REFERENCE_PATH).name
        if not source.is_file():
            return False
        shutil.copyfile(source, target)
        return True


class BucketArtifacts:
    def __init__(self, spec: S3Artifacts, *, client: Any = None) -> None:
        self.spec = spec
        self.bucket = Bucket(spec, client=client)

    def put_baseline(self, workflow: str, source: Path) -> None:
        prefix = bucket_key(self.spec, f"{workflow}/baseline")
        with _as_artifacts_error():
            self.bucket.upload_directory(source, prefix, what="put production's model at")

    def bring_model(self, workflow: str, target: Path) -> None:
        prefix = bucket_key(self.spec, f"{workflow}/model")
        with _as_artifacts_error():
            keys = self.bucket.keys(prefix)
        if not keys:
            raise ArtifactsError(f"the run saved no model at {self.bucket.where(prefix)}/")

        def download(staging: Path) -> None:
            with _as_artifacts_error():
                self.bucket.download_directory(prefix, keys, staging, what="bring the model from")

        _into_place(target, download)

    def bring_reference(self, workflow: str, target: Path) -> bool:
        key = bucket_key(self.spec, f"{workflow}/work/{PurePosixPath(REFERENCE_PATH).name}")
        with _as_artifacts_error():
            if not self.bucket.exists(key):
                return False
            self.bucket.download_file(key, target, what="bring the reference sample from")
        return True


@contextmanager
def _as_artifacts_error() -> Iterator[None]:
    """The bucket's failure, as this module's error (the runner reports :class:`ArtifactsError`)."""
    try:
        yield
    except ObjectStoreError as exc:
        raise ArtifactsError(str(exc)) from None


def _into_place(target: Path, fill: Callable[[Path], object]) -> None:
    """Fill a directory of its own beside ``target``, then rename it into place.

    Two handles following one run (a controller that adopted a Workflow while
    another handle still followed it) may bring its model home at the same
    time: each copies into its own directory, the first rename wins and the
    second finds the same model already there. A ``target`` that exists is
    whole (renames are atomic); the run's directory is cleaned when a run is
    started again, so it is never a stale one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        staging.rmdir()  # fill makes it, as copytree wants
        fill(staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
