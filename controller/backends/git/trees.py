"""The spec files of one commit, read from git's trees: what they are, what feeds what, caching keys.

Helpers of :class:`~controller.backends.git.Repository`: the records a
loaded catalog is kept with (:class:`Loaded`), the index from a path to the
documents it feeds (:class:`PathIndex`), the key of a set of spec blobs, and
the pause of the cyclic garbage collector around large parses.
"""

from __future__ import annotations

import gc
import hashlib
import posixpath
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import pygit2
from pygit2.enums import FileMode

from controller.specs import ParsedFile, spec_kind
from controller.specs.types import Catalog, Location, SpecError

__all__ = [
    "Loaded",
    "PathIndex",
    "SpecEntries",
    "blob_set_key",
    "gc_paused",
    "is_blob",
    "normalise",
    "refused_link",
    "self_and_ancestors",
    "subtree",
]


@dataclass(frozen=True)
class PathIndex:
    """From a repo-relative path (file or directory) to the documents it feeds."""

    models: Mapping[str, frozenset[str]]
    policies: Mapping[str, str]  # spec path -> policy name
    environments: Mapping[str, str]  # spec path -> environment name

    @classmethod
    def build(cls, catalog: Catalog) -> PathIndex:
        models: dict[str, set[str]] = {}
        for model in catalog.models.values():
            inputs = (model.spec_path, model.source.path, model.source.requirements, model.source.dockerfile)
            for raw in inputs:
                if raw is not None:
                    models.setdefault(normalise(raw), set()).add(model.name)
        return cls(
            models={path: frozenset(names) for path, names in models.items()},
            policies={p.spec_path: p.name for p in catalog.policies.values()},
            environments={e.spec_path: e.name for e in catalog.environments.values()},
        )

    def models_fed_by(self, path: str) -> set[str]:
        found: set[str] = set()
        for candidate in self_and_ancestors(path):
            names = self.models.get(candidate)
            if names:
                found |= names
        return found


@dataclass(frozen=True)
class Loaded:
    """A checked catalog, the spec blobs it came from, and its path index (built once, with it).

    ``linked_from`` maps the path a spec's symbolic link leads to onto the
    spec paths that are links to it, so a change there changes them.
    """

    catalog: Catalog
    blobs: Mapping[str, str]
    index: PathIndex
    linked_from: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class SpecEntries:
    """The spec files of one commit: path -> blob id, and those that are symbolic links.

    ``links`` maps a spec path that is a link to the path it leads to, inside
    the repository; ``refused`` maps one that leads out of it, or to no file,
    to the error that says so.
    """

    blobs: dict[str, str]
    links: dict[str, str]
    refused: dict[str, str]


_GC_PAUSE_MIN_FILES = 500
_gc_lock = threading.Lock()
_gc_pause = {"depth": 0, "restore": False}


@contextmanager
def gc_paused(files: int) -> Iterator[None]:
    """Hold the cyclic garbage collector while many spec files are parsed.

    Parsing thousands of documents creates objects fast enough to set off
    repeated full collections over a heap that is only growing (about a third
    of the cold load of 10,000 specs); the documents hold no cycles, so
    reference counting frees what is dropped. When the last pause ends, one
    full collection runs here, so its cost is paid by the load that caused it
    and not by whichever request allocates next. Small loads leave the
    collector alone.
    """
    if files < _GC_PAUSE_MIN_FILES:
        yield
        return
    with _gc_lock:
        if _gc_pause["depth"] == 0:
            _gc_pause["restore"] = gc.isenabled()
            gc.disable()
        _gc_pause["depth"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pause["depth"] -= 1
            resume = _gc_pause["depth"] == 0 and _gc_pause["restore"]
            if resume:
                gc.enable()
        if resume:
            gc.collect()


def normalise(path: str) -> str:
    """A repo-relative path without ``./``, trailing slash or leading slash; ``""`` for the root."""
    clean = posixpath.normpath(path.replace("\\", "/")).lstrip("/")
    return "" if clean == "." else clean


def self_and_ancestors(path: str) -> Iterable[str]:
    yield path
    while path:
        path = posixpath.dirname(path)
        yield path


def subtree(root: pygit2.Tree, name: str) -> pygit2.Tree | None:
    if name not in root:
        return None
    obj = root[name]
    return obj if isinstance(obj, pygit2.Tree) else None


def is_blob(entry: pygit2.Object) -> bool:
    return entry.filemode in (FileMode.BLOB, FileMode.BLOB_EXECUTABLE)


def blob_set_key(blobs: Mapping[str, str], links: Mapping[str, str], refused: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for path, oid in sorted(blobs.items()):
        digest.update(f"{path}\0{oid}\n".encode())
    for path, target in sorted(links.items()):
        digest.update(f"{path}\0->{target}\n".encode("utf-8", "surrogateescape"))
    for path, why in sorted(refused.items()):
        digest.update(f"{path}\0!{why}\n".encode())
    return digest.hexdigest()


def refused_link(item: tuple[str, str]) -> ParsedFile:
    """The parsed file of a spec whose symbolic link leads out of the repository, or nowhere: unread."""
    path, why = item
    kind = spec_kind(path)
    return ParsedFile(path=path, kind=kind, errors=(SpecError(Location(path), "", why, kind or ""),))
