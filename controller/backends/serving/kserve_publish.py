"""Where KServe finds a version's model: publishing its artifact to the Environment's artifact store, once.

:class:`~controller.backends.serving.kserve.KServeServing` calls
:meth:`ArtifactPublisher.publish` before it writes a predictor; the
predictor's ``storageUri`` (:func:`~controller.backends.serving.kserve_spec.storage_uri`)
then names the copy, ``models/<model>/<version>`` on the store:

* **the claim** (``artifacts.pvc``), mounted in the controller too: the
  version's directory is copied into a directory of its own beside the
  target and renamed into place, so a directory that is there is whole;
* **the bucket** (``artifacts.s3``), through a
  :class:`~controller.backends.objects.Bucket`: one object per file under
  the version's key, then the marker :data:`PUBLISHED` last (a JSON list of
  the files). A version's artifact never changes, so a version whose marker
  is there is not uploaded again; an upload cut short left no marker and is
  done again whole. KServe's storage initializer downloads the marker with
  the files, into ``/mnt/models``.

A failure is a :class:`~controller.backends.serving.ServingError` saying what
was published, where and why (S3's answer); the rollout tries again at its
next tick, and nothing is lost.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from controller.backends.objects import Bucket, ObjectStoreError, object_key
from controller.backends.serving import ServedVersion, ServingError
from controller.backends.serving.kserve_spec import artifact_path, storage_uri
from controller.backends.serving.server import local_path
from controller.specs.types import Environment, PvcArtifacts, S3Artifacts

__all__ = ["PUBLISHED", "ArtifactPublisher"]

PUBLISHED = ".flywheel-published"  # the last object of a version in a bucket: all of it is there


class ArtifactPublisher:
    """Publishes versions' artifacts: onto a claim where ``claim_dir`` says this controller sees it, or to a
    bucket reached through ``bucket_of`` (one :class:`Bucket`, and its client, per store)."""

    def __init__(
        self,
        *,
        claim_dir: Callable[[PvcArtifacts], Path],
        bucket_of: Callable[[S3Artifacts], Bucket] = Bucket,
    ) -> None:
        self.claim_dir = claim_dir
        self.bucket_of = bucket_of
        self._buckets: dict[S3Artifacts, Bucket] = {}
        self._lock = threading.Lock()

    def publish(self, environment: Environment, version: ServedVersion) -> str:
        """Put the version's artifact on the Environment's artifact store once; its ``storageUri`` there."""
        uri = storage_uri(environment, version.model, version.version)
        artifacts = environment.artifacts
        if isinstance(artifacts, S3Artifacts):
            self._to_bucket(environment, artifacts, version)
        else:
            assert isinstance(artifacts, PvcArtifacts)  # storage_uri refuses anything else
            self._to_claim(artifacts, version)
        return uri

    def bucket(self, artifacts: S3Artifacts) -> Bucket:
        with self._lock:
            bucket = self._buckets.get(artifacts)
            if bucket is None:
                bucket = self._buckets[artifacts] = self.bucket_of(artifacts)
            return bucket

    def _to_claim(self, artifacts: PvcArtifacts, version: ServedVersion) -> None:
        target = self.claim_dir(artifacts) / artifact_path(version.model, version.version)
        if target.is_dir():
            return  # a version's artifact never changes
        source = local_path(version.artifact_uri, f"the artifact of {version.model} {version.version}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version.version}-", dir=target.parent))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            staging.rename(target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir():
                raise ServingError(f"cannot publish {source} to {target}: {exc}") from None

    def _to_bucket(self, environment: Environment, artifacts: S3Artifacts, version: ServedVersion) -> None:
        what = f"publishing {version.model} {version.version} for {environment.name}"
        bucket = self.bucket(artifacts)
        prefix = object_key(artifacts, artifact_path(version.model, version.version))
        marker = f"{prefix}/{PUBLISHED}"
        try:
            if bucket.exists(marker, what="read"):
                return  # a version's artifact never changes
            source = local_path(version.artifact_uri, f"the artifact of {version.model} {version.version}")
            if not source.is_dir():
                raise ServingError(f"{what}: the artifact {source} is not a directory")
            files = bucket.upload_directory(source, prefix, what="write")
            if not files:
                raise ServingError(f"{what}: the artifact {source} holds no file")
            done = {"model": version.model, "version": version.version, "files": files}
            bucket.put(marker, json.dumps(done, sort_keys=True).encode(), what="write")
        except ObjectStoreError as exc:
            raise ServingError(f"{what}: {exc}") from None
