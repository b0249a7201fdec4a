"""Objects in the cluster home's S3-compatible bucket, as the controller reaches them.

What the pipelines and the serving backends share below both: the argo
runner's artifacts (:mod:`controller.backends.pipelines.argo_artifacts`)
put production's model in the bucket and bring trained models home through
a :class:`Bucket`, and the kserve serving backend
(:mod:`controller.backends.serving.kserve`) publishes a version's model
there for KServe's storage initializer.

A :class:`Bucket` is one ``artifacts.s3`` (:class:`~controller.specs.types.S3Artifacts`):
a boto3 client at its ``endpoint`` (else AWS) with the credentials of
boto3's own chain (the ``AWS_*`` variables, a profile, the pod's role); the
Secret the Environment names is the pods', not the controller's. A
directory is stored as one object per file under its key, as Argo stores an
artifact with ``archive: none`` and as KServe's storage initializer reads a
``storageUri``. Keys are made by :func:`object_key`, under the Environment's
``prefix``. Every failure of S3 is one :class:`ObjectStoreError` saying what
was being done, where (``s3://bucket/key``) and what S3 answered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from controller.specs.types import S3Artifacts

__all__ = ["Bucket", "ObjectStoreError", "object_key"]

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


class ObjectStoreError(RuntimeError):
    """The bucket could not be read or written; the message says what, where and why."""


def object_key(artifacts: S3Artifacts, relative: str) -> str:
    """The key of ``relative`` in the bucket: under the Environment's ``prefix``, with no empty segment."""
    parts = [p for p in (*artifacts.prefix.split("/"), *relative.split("/")) if p]
    return "/".join(parts)


class Bucket:
    """The bucket of ``spec``; ``client``: a boto3 S3 client to use (tests), else one is made when needed."""

    def __init__(self, spec: S3Artifacts, *, client: Any = None) -> None:
        self.spec = spec
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.client("s3", endpoint_url=self.spec.endpoint)
            return self._client

    def where(self, key: str) -> str:
        """``s3://<bucket>/<key>``: a key as people read it."""
        return f"s3://{self.spec.bucket}/{key}"

    def call(self, what: str, key: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``; S3's failure as :class:`ObjectStoreError` ``"<what> s3://…: <why>"``."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(*args, **kwargs)
        except (BotoCoreError, ClientError, Boto3Error) as exc:  # Boto3Error: S3UploadFailedError
            raise ObjectStoreError(f"{what} {self.where(key)}: {exc}") from None

    def exists(self, key: str, *, what: str = "read") -> bool:
        """Whether the object ``key`` is there (a missing one is ``False``, any other failure an error)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.spec.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise ObjectStoreError(f"{what} {self.where(key)}: {exc}") from None
        except BotoCoreError as exc:
            raise ObjectStoreError(f"{what} {self.where(key)}: {exc}") from None
        return True

    def keys(self, prefix: str, *, what: str = "list") -> list[str]:
        """Every key under ``prefix/`` (the objects of the directory ``prefix``), in S3's order."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.spec.bucket, Prefix=f"{prefix}/")
        listed = self.call(what, prefix, list, pages)
        return [item["Key"] for page in listed for item in page.get("Contents", [])]

    def upload_file(self, source: Path, key: str, *, what: str = "write") -> None:
        self.call(what, key, self.client.upload_file, str(source), self.spec.bucket, key)

    def upload_directory(self, source: Path, prefix: str, *, what: str = "write") -> list[str]:
        """Store every file under ``source`` as ``prefix/<its path>``; the keys written, in order."""
        written = []
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(source).as_posix()}"
            self.upload_file(path, key, what=what)
            written.append(key)
        return written

    def put(self, key: str, body: bytes, *, what: str = "write") -> None:
        self.call(what, key, self.client.put_object, Bucket=self.spec.bucket, Key=key, Body=body)

    def download_file(self, key: str, target: Path, *, what: str = "read") -> None:
        self.call(what, key, self.client.download_file, self.spec.bucket, key, str(target))

    def download_directory(self, prefix: str, keys: list[str], target: Path, *, what: str = "read") -> None:
        """Download ``keys`` (all under ``prefix/``) into the directory ``target``, by their path under it."""
        for key in keys:
            local = target / PurePosixPath(key[len(prefix) + 1 :])
            local.parent.mkdir(parents=True, exist_ok=True)
            self.download_file(key, local, what=what)
