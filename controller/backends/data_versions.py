"""The current version of a data input, read where the data lives: what ``triggers.dataChange`` watches.

Called by the trigger engine (:mod:`controller.engine.triggers`) every
``FLYWHEEL_DATA_CHECK_SECONDS`` for each data input of a model that retrains
on new data. Each observation says what the spec would pin to name exactly
this data:

- a ``file://`` input: its content digest (``sha256:<hex>``, the one
  :func:`controller.backends.data.content_digest` computes), pinned as
  ``digest``;
- ``https://``: the ``ETag`` of a ``HEAD`` request (else its
  ``Last-Modified``), pinned as ``version``;
- ``s3://bucket/key``: the object's version id when the bucket keeps
  versions (else its ``ETag``), read with boto3's ``head_object`` and pinned
  as ``version``. Credentials and the endpoint come from boto3's own chain
  (``AWS_*`` variables, profiles, instance roles; ``AWS_ENDPOINT_URL`` for a
  store other than AWS).

An input inside the repository (a relative path) is not watched: a commit is
what changes it, and a commit already trains. Nor is a scheme without
versions (``sklearn://``, ``gs://``): :func:`watchable` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlparse

import httpx

from controller.backends.data import DataError, content_digest
from controller.specs.types import DataInput

__all__ = ["DataVersions", "Observed", "S3Heads", "watchable"]

Pin = Literal["digest", "version"]
_HTTP_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class Observed:
    """One input's current version: the spec field that pins it and its value."""

    name: str
    pin: Pin
    value: str


def watchable(data: DataInput) -> str | None:
    """``None`` when the input's version can be watched; else why not, in a few words."""
    scheme = urlparse(data.uri).scheme
    if scheme in ("file", "https", "s3"):
        return None
    if scheme == "":
        return "in the repository: a commit changes it"
    return f"{scheme}:// has no version to watch"


class S3Heads(Protocol):
    """The one S3 call used: boto3's ``head_object`` (tests may hand in a client of a stand-in)."""

    def head_object(self, *, Bucket: str, Key: str) -> Any: ...


class DataVersions:
    """Reads inputs' current versions; one HTTP client and one S3 client (made when first needed)."""

    def __init__(self, *, http: httpx.Client | None = None, s3: S3Heads | None = None) -> None:
        self._http = http
        self._s3 = s3

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def current(self, data: DataInput) -> Observed:
        """The version of ``data`` now; :class:`DataError` naming the input and why when it cannot be read."""
        parsed = urlparse(data.uri)
        if parsed.scheme == "file":
            return Observed(data.name, "digest", content_digest(data, Path(unquote(parsed.path))))
        if parsed.scheme == "https":
            return Observed(data.name, "version", self._http_version(data))
        if parsed.scheme == "s3":
            return Observed(data.name, "version", self._s3_version(data, parsed.netloc, parsed.path))
        raise DataError(f"data input {data.name!r}: {watchable(data)}")

    def _http_version(self, data: DataInput) -> str:
        if self._http is None:
            self._http = httpx.Client(timeout=_HTTP_TIMEOUT_SECONDS, follow_redirects=True)
        try:
            response = self._http.head(data.uri)
        except httpx.HTTPError as exc:
            raise DataError(f"data input {data.name!r}: HEAD {data.uri} failed: {exc}") from exc
        if response.status_code >= 400:
            raise DataError(f"data input {data.name!r}: HEAD {data.uri} answered {response.status_code}")
        version = response.headers.get("etag") or response.headers.get("last-modified")
        if not version:
            raise DataError(
                f"data input {data.name!r}: {data.uri} has no ETag nor Last-Modified header to watch"
            )
        return str(version)

    def _s3_version(self, data: DataInput, bucket: str, path: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        key = path.lstrip("/")
        if not bucket or not key:
            raise DataError(f"data input {data.name!r}: {data.uri} does not name a bucket and a key")
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3")
        try:
            head = self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise DataError(f"data input {data.name!r}: {data.uri}: {code}") from exc
        except BotoCoreError as exc:
            raise DataError(f"data input {data.name!r}: {data.uri}: {exc}") from exc
        version = head.get("VersionId")
        if version and version != "null":
            return str(version)
        return str(head["ETag"])
