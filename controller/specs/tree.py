"""Spec files of a repository checked out on disk.

Called by ``flywheel validate`` and by anything that works on a working
tree rather than a git commit; the git reader uses
:func:`controller.specs.validate.load_catalog` (or ``parse_document`` and
``check_catalog``) with blobs instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from controller.specs.loader import MAX_BYTES
from controller.specs.parse import ParsedFile, parse_document
from controller.specs.paths import LINK_OUT_OF_REPOSITORY, LINK_TO_NOTHING, is_spec_path, spec_kind
from controller.specs.types import Catalog, Location, SpecError
from controller.specs.validate import check_catalog, gc_paused

SPEC_DIRS = ("specs", "policies", "environments")


def find_spec_files(root: Path) -> list[str]:
    """Repo-relative POSIX paths of every spec file under the repository ``root``, sorted.

    As in the git reader, a spec directory (``specs/``, a model's directory,
    ``policies/``, ``environments/``) that is a symbolic link is not read; a
    spec file that is one is listed, and :func:`parse_file` follows it only
    inside the repository.
    """
    found: list[str] = []
    for top in SPEC_DIRS:
        base = root / top
        if not base.is_dir() or base.is_symlink():
            continue
        for entry in os.scandir(base):
            if top == "specs" and entry.is_dir(follow_symlinks=False):
                for name in ("model.yaml", "model.yml"):
                    candidate = f"specs/{entry.name}/{name}"
                    if is_spec_path(candidate) and _file_or_link(root / candidate):
                        found.append(candidate)
            elif top != "specs" and _file_or_link(Path(entry.path)) and is_spec_path(f"{top}/{entry.name}"):
                found.append(f"{top}/{entry.name}")
    return sorted(found)


def _file_or_link(path: Path) -> bool:
    """A file, or a symbolic link (to a file or to nothing: :func:`parse_file` says which)."""
    return path.is_file() or path.is_symlink()


def load_tree(root: Path, *, max_bytes: int = MAX_BYTES) -> Catalog:
    """Parse and check every spec file of the repository at ``root``; never raises on bad specs."""
    with gc_paused():
        return check_catalog(parse_file(root, rel, max_bytes=max_bytes) for rel in find_spec_files(root))


def parse_file(root: Path, rel: str, *, max_bytes: int = MAX_BYTES) -> ParsedFile:
    """Read and parse one spec file; reads at most one byte past the limit, so a huge file stays unread.

    Symbolic links are followed inside the repository at ``root`` only: a
    file reached through a link that leads out of it is refused unread.
    """
    if ".." in rel.split("/"):
        return _refused(rel, "leads out of the repository; it is not read")
    link = _link_out_of(root, rel)
    if link is not None:
        message = LINK_OUT_OF_REPOSITORY if link == rel else f"{link} {LINK_OUT_OF_REPOSITORY}"
        return _refused(rel, message)
    if os.path.islink(root / rel) and not os.path.isfile(root / rel):
        return _refused(rel, LINK_TO_NOTHING)
    try:
        with open(root / rel, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        return _refused(rel, f"cannot read the file: {exc.strerror or exc}")
    return parse_document(rel, data, max_bytes=max_bytes)


def _refused(rel: str, message: str) -> ParsedFile:
    kind = spec_kind(rel)
    return ParsedFile(path=rel, kind=kind, errors=(SpecError(Location(rel), "", message, kind or ""),))


def _link_out_of(root: Path, rel: str) -> str | None:
    """The first symbolic link on the way from ``root`` to the normalised ``rel`` that leads out of ``root``."""
    base = os.fspath(root)
    parts = rel.split("/")
    links = [
        prefix
        for prefix in ("/".join(parts[:end]) for end in range(1, len(parts) + 1))
        if os.path.islink(os.path.join(base, prefix))
    ]
    if not links:
        return None  # the common case: one lstat per part, no realpath
    real_root = os.path.realpath(base)
    if _within(os.path.realpath(os.path.join(base, rel)), real_root):
        return None
    for prefix in links:
        if not _within(os.path.realpath(os.path.join(base, prefix)), real_root):
            return prefix
    return rel


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class PathsReport:
    """What ``flywheel validate PATH...`` found: errors (paths as the user wrote them) and counts."""

    errors: tuple[SpecError, ...] = ()
    models: int = 0
    policies: int = 0
    environments: int = 0
    files: int = 0  # spec files checked (and reported on)
    empty_roots: tuple[str, ...] = ()  # directories given that hold no spec files

    def summary(self) -> str:
        counts = [
            (self.models, "model", "models"),
            (self.policies, "policy", "policies"),
            (self.environments, "environment", "environments"),
        ]
        return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts)


def find_root(file: Path) -> Path:
    """The repository root of a spec file: the nearest directory under which it is a spec path,
    else the nearest directory holding ``.git``, else the file's own directory.

    The path is made absolute without following symbolic links, so a link is
    judged where it is, not where it leads.
    """
    file = Path(os.path.abspath(file))
    for parent in file.parents:
        if is_spec_path(file.relative_to(parent).as_posix()):
            return parent
    for parent in file.parents:
        if (parent / ".git").exists():
            return parent
    return file.parent


def validate_paths(paths: Sequence[Path], *, cwd: Path | None = None) -> PathsReport:
    """Check the repositories at the given directories and the given spec files.

    A directory is a repository root: all its specs are checked and reported.
    A file is checked with the rest of its repository as context for the
    checks across documents, and only its own errors are reported.
    """
    here = (cwd or Path.cwd()).resolve()
    whole: dict[Path, None] = {}
    chosen: dict[Path, set[str]] = {}
    for given in paths:
        target = given if given.is_absolute() else here / given
        if target.is_dir():
            whole[target.resolve()] = None
        else:
            root = find_root(target)
            chosen.setdefault(root, set()).add(Path(os.path.abspath(target)).relative_to(root).as_posix())
    errors: list[SpecError] = []
    counts = {"Model": 0, "Policy": 0, "Environment": 0}
    files = 0
    empty: list[str] = []
    with gc_paused():
        for root in sorted({*whole, *chosen}):
            listed = find_spec_files(root)
            wanted = None if root in whole else chosen[root]
            if wanted is None and not listed:
                empty.append(_shown(root, ".", here))
            parsed = [parse_file(root, rel) for rel in sorted({*listed, *(wanted or ())})]
            catalog = check_catalog(parsed)
            reported = {p.path for p in parsed} if wanted is None else wanted
            files += len(reported)
            for file in parsed:
                if file.path in reported and file.document is not None and not catalog.errors_for(file.path):
                    counts[type(file.document).__name__] += 1
            for error in catalog.errors:
                if error.location.file in reported:
                    shown = _shown(root, error.location.file, here)
                    errors.append(replace(error, location=replace(error.location, file=shown)))
    return PathsReport(
        errors=tuple(errors),
        models=counts["Model"],
        policies=counts["Policy"],
        environments=counts["Environment"],
        files=files,
        empty_roots=tuple(empty),
    )


def _shown(root: Path, rel: str, here: Path) -> str:
    if root == here:
        return rel
    return Path(os.path.relpath(root / rel, here)).as_posix()
