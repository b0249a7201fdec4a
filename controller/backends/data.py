"""Data inputs: where a step finds each one, and its fingerprint for the run's cache key.

Called by the reconciler when it resolves a run's inputs. A fingerprint names
the content of a data input as precisely as the controller can know it:

- a local file or directory (a relative path, resolved against the model's
  source directory, or a ``file://`` URI) is hashed by content; a directory
  by the names and contents of its files; a pinned ``digest`` must be that
  hash (a run of content other than the pinned one fails to start), and is
  then the fingerprint;
- anything else (``sklearn://``, ``s3://``, ``https://``...) is named by its
  URI and pinned ``version``. An unpinned remote input is fingerprinted as
  ``unpinned``, which the report shows, so nobody mistakes it for a pinned one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from controller.specs.types import DataInput

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ResolvedInput:
    name: str
    env_name: str  # FLYWHEEL_DATA_<NAME>
    location: str  # local path, or the URI when it is not local
    fingerprint: str


class DataError(Exception):
    """A data input cannot be found or read."""


def local_path(data: DataInput, *, base: Path) -> Path | None:
    """The local path of ``data`` (relative paths are under ``base``), or None when it is remote."""
    parsed = urlparse(data.uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and data.uri:
        return (base / data.uri).resolve()
    return None


def resolve(data: DataInput, *, base: Path) -> ResolvedInput:
    path = local_path(data, base=base)
    if path is not None:
        fingerprint = content_digest(data, path)
        if data.digest and data.digest != fingerprint:
            raise DataError(
                f"data input {data.name!r}: {path} is {fingerprint}, not the pinned digest {data.digest}"
            )
    elif data.digest:  # refused by the spec checks; named as pinned should one come through
        fingerprint = data.digest
    else:
        fingerprint = f"{data.uri}@{data.version}" if data.version else f"{data.uri}@unpinned"
    return ResolvedInput(
        name=data.name,
        env_name=data.env_name,
        location=str(path) if path is not None else data.uri,
        fingerprint=fingerprint,
    )


def content_digest(data: DataInput, path: Path) -> str:
    """``sha256:<hex>`` of a local input's content (a directory: its files' names and contents)."""
    if not path.exists():
        raise DataError(f"data input {data.name!r}: {path} does not exist")
    try:
        return "sha256:" + _hash_path(path)
    except OSError as exc:
        raise DataError(f"data input {data.name!r}: cannot read {path}: {exc.strerror or exc}") from exc


def _hash_path(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_file():
        _hash_file(path, digest)
        return digest.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            digest.update(full.relative_to(path).as_posix().encode() + b"\0")
            _hash_file(full, digest)
    return digest.hexdigest()


def _hash_file(path: Path, digest: hashlib._Hash) -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
