"""Spec files of a repository checked out on disk.

Called by ``flywheel validate`` and by anything that works on a working
tree rather than a git commit; the git reader uses
:func:`controller.specs.validate.load_catalog` (or ``parse_document`` and
``check_catalog``) with blobs instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from controller.specs.loader import MAX_BYTES
from controller.specs.parse import ParsedFile, parse_document
from controller.specs.paths import is_spec_path, spec_kind
from controller.specs.types import Catalog, Location, SpecError
from controller.specs.validate import check_catalog

SPEC_DIRS = ("specs", "policies", "environments")


def find_spec_files(root: Path) -> list[str]:
    """Repo-relative POSIX paths of every spec file under the repository ``root``, sorted."""
    found: list[str] = []
    for top in SPEC_DIRS:
        base = root / top
        if not base.is_dir():
            continue
        for entry in os.scandir(base):
            if top == "specs" and entry.is_dir():
                for name in ("model.yaml", "model.yml"):
                    candidate = f"specs/{entry.name}/{name}"
                    if is_spec_path(candidate) and (root / candidate).is_file():
                        found.append(candidate)
            elif top != "specs" and entry.is_file() and is_spec_path(f"{top}/{entry.name}"):
                found.append(f"{top}/{entry.name}")
    return sorted(found)


def load_tree(root: Path, *, max_bytes: int = MAX_BYTES) -> Catalog:
    """Parse and check every spec file of the repository at ``root``; never raises on bad specs."""
    return check_catalog(parse_file(root, rel, max_bytes=max_bytes) for rel in find_spec_files(root))


def parse_file(root: Path, rel: str, *, max_bytes: int = MAX_BYTES) -> ParsedFile:
    """Read and parse one spec file; reads at most one byte past the limit, so a huge file stays unread."""
    try:
        with open(root / rel, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        error = SpecError(Location(rel), "", f"cannot read the file: {exc.strerror or exc}")
        return ParsedFile(path=rel, kind=spec_kind(rel), errors=(error,))
    return parse_document(rel, data, max_bytes=max_bytes)
