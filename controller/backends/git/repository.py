"""The :class:`Repository`: branches, commits, spec catalogs, changed models and inputs, from git objects.

See the package's docstring for what it reads and how it stays cheap.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pygit2
from cachetools import LRUCache
from pygit2.enums import FileMode, ObjectType

from controller.backends.git.mirrors import GitError, clone_mirror, is_remote, mirror_path, run_git
from controller.backends.git.trees import (
    Loaded,
    PathIndex,
    SpecEntries,
    blob_set_key,
    gc_paused,
    is_blob,
    normalise,
    refused_link,
    subtree,
)
from controller.specs import ParsedFile, check_catalog, is_spec_path, parse_document
from controller.specs.paths import LINK_OUT_OF_REPOSITORY, LINK_TO_NOTHING
from controller.specs.types import Catalog, Model

__all__ = ["ChangedModels", "ModelInputs", "Repository"]

_SPEC_SUFFIXES = (".yaml", ".yml")
_MAX_LINKS = 40  # symbolic links followed on one path at most, as Linux does
_MODEL_FILES = ("model.yaml", "model.yml")


@dataclass(frozen=True)
class ModelInputs:
    """The git pieces of a model's identity at one commit.

    ``None`` means the thing is absent at that commit (a missing requirements
    file, no Dockerfile), which is itself part of the identity.
    """

    commit: str
    model: str
    spec_blob: str | None
    source_tree: str | None
    requirements_blob: str | None
    dockerfile_blob: str | None = None


@dataclass(frozen=True)
class ChangedModels:
    """What a commit range changed, by name.

    ``modified`` models exist on both sides and have a changed spec, source
    file, requirements file or Dockerfile. ``invalid`` lists the changed spec
    files that have errors at the new commit (their model is then absent from
    the new catalog, so it shows as removed until fixed).
    """

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    modified: frozenset[str] = frozenset()
    policies: frozenset[str] = frozenset()
    environments: frozenset[str] = frozenset()
    invalid: tuple[str, ...] = ()

    @property
    def models(self) -> frozenset[str]:
        """Every model touched: added, removed or modified."""
        return self.added | self.removed | self.modified

    def __bool__(self) -> bool:
        return bool(self.models or self.policies or self.environments or self.invalid)


class Repository:
    """Read-only view of one git repository, with parse and catalog caches.

    Build it with :meth:`open`. Every method that takes a commit accepts any
    revision git understands (a sha, a branch name, ``HEAD~1``).
    """

    def __init__(
        self,
        repo: pygit2.Repository,
        *,
        location: str,
        remote: bool = False,
        parse_cache_size: int = 100_000,
        catalog_cache_size: int = 32,
    ) -> None:
        self._repo = repo
        self.location = location
        self.remote = remote
        self._lock = threading.RLock()
        parse_cache_size, catalog_cache_size = max(1, parse_cache_size), max(1, catalog_cache_size)
        self._parsed: LRUCache[tuple[str, str], ParsedFile] = LRUCache(parse_cache_size)
        self._by_commit: LRUCache[str, Loaded] = LRUCache(catalog_cache_size)
        self._by_blobs: LRUCache[str, Loaded] = LRUCache(catalog_cache_size)
        # model directory tree id -> {"model.yaml": (blob id, is a symbolic link)}; tree ids are content,
        # so this never goes stale
        self._model_dirs: LRUCache[str, dict[str, tuple[str, bool]]] = LRUCache(parse_cache_size)

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        location: str,
        *,
        mirror_root: Path,
        parse_cache_size: int = 100_000,
        catalog_cache_size: int = 32,
    ) -> Repository:
        """Open a local repository in place, or mirror a remote one into ``mirror_root``."""
        remote = is_remote(location)
        if remote:
            path = mirror_path(mirror_root, location)
            if not (path / "HEAD").exists():
                clone_mirror(location, path)
            broken = f"broken mirror of {location} at {path}"
        else:
            path = Path(location).expanduser()
            if not path.exists():
                raise GitError(f"no repository at {location}")
            broken = f"not a git repository: {location}"
        try:
            repo = pygit2.Repository(str(path))
        except pygit2.GitError as exc:
            raise GitError(f"{broken}: {exc}") from exc
        return cls(
            repo,
            location=location,
            remote=remote,
            parse_cache_size=parse_cache_size,
            catalog_cache_size=catalog_cache_size,
        )

    @property
    def path(self) -> Path:
        """The git directory being read (the mirror, for a remote)."""
        return Path(self._repo.path)

    def remote_url(self, name: str = "origin") -> str | None:
        """The URL of remote ``name`` (a mirror's is where it mirrors from); ``None`` when there is none."""
        if self.remote:
            return self.location
        try:
            return str(self._repo.remotes[name].url)
        except (KeyError, ValueError):
            return None

    def fetch(self) -> None:
        """Bring a mirror up to date, pruning deleted branches. A no-op for a local repository."""
        if not self.remote:
            return
        run_git(["fetch", "--prune", "--quiet", "origin"], cwd=self.path, what=f"fetch {self.location}")

    # ------------------------------------------------------------- refs

    def branches(self) -> dict[str, str]:
        """Branch name -> head commit sha."""
        heads: dict[str, str] = {}
        for name in self._repo.listall_references():
            if name.startswith("refs/heads/"):
                target = self.ref_target(name)
                if target is not None:  # a dangling or non-commit branch is not a branch to build
                    heads[name.removeprefix("refs/heads/")] = target
        return heads

    def ref_target(self, name: str) -> str | None:
        """The commit sha the full ref ``name`` (``refs/pull/7/head``) points at, if there is one."""
        try:
            return str(self._repo.lookup_reference(name).resolve().peel(pygit2.Commit).id)
        except (KeyError, ValueError, pygit2.GitError):
            return None

    @property
    def default_branch(self) -> str:
        """``main``, else ``master``, else the branch HEAD points at."""
        heads = self.branches()
        for name in ("main", "master"):
            if name in heads:
                return name
        try:
            head = self._repo.lookup_reference("HEAD").target
        except (KeyError, pygit2.GitError) as exc:
            raise GitError(f"{self.location}: no main or master branch and no HEAD") from exc
        if isinstance(head, str) and head.removeprefix("refs/heads/") in heads:
            return head.removeprefix("refs/heads/")
        raise GitError(f"{self.location}: no main or master branch")

    def resolve(self, ref: str) -> str:
        """The commit sha a revision names."""
        return str(self._commit(ref).id)

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of two commits, or ``None`` when their histories are unrelated."""
        left, right = self._commit(a), self._commit(b)
        try:
            base: pygit2.Oid | None = self._repo.merge_base(left.id, right.id)
        except pygit2.GitError as exc:
            raise GitError(f"merge base of {a} and {b}: {exc}") from exc
        return str(base) if base else None

    def commit_author(self, commit: str) -> str:
        """The name of the author of ``commit`` (who made the change, for approval rules)."""
        return str(self._commit(commit).author.name)

    # ------------------------------------------------------------ reading

    def spec_blobs(self, commit: str) -> dict[str, str]:
        """Spec file path -> blob id at a commit, reading only the spec directories.

        A spec file that is a symbolic link maps to the blob it leads to inside
        the repository; one that leads out of it, or to no file, is left out
        (the catalog reports it).
        """
        return self._spec_entries(self._commit(commit).tree).blobs

    def _spec_entries(self, root: pygit2.Tree) -> SpecEntries:
        found: dict[str, str] = {}
        linked: list[tuple[str, str]] = []  # (spec path, link blob id)
        specs = subtree(root, "specs")
        if specs is not None:
            for entry in specs:
                if entry.filemode != FileMode.TREE:
                    continue  # a link to a model directory is not followed (nor on disk)
                for name, (oid, is_link) in self._model_dir(entry).items():
                    path = f"specs/{entry.name}/{name}"
                    if is_link:
                        linked.append((path, oid))
                    else:
                        found[path] = oid
        for top in ("policies", "environments"):
            tree = subtree(root, top)
            if tree is None:
                continue
            for entry in tree:
                if not entry.name or not entry.name.endswith(_SPEC_SUFFIXES):
                    continue
                if is_blob(entry):
                    found[f"{top}/{entry.name}"] = str(entry.id)
                elif entry.filemode == FileMode.LINK:
                    linked.append((f"{top}/{entry.name}", str(entry.id)))
        links: dict[str, str] = {}
        refused: dict[str, str] = {}
        for path, _ in linked:
            if not is_spec_path(path):
                continue
            target, why = self._follow(root, path)
            if target is None:
                refused[path] = why
                continue
            obj = self._lookup(root, target)
            if isinstance(obj, pygit2.Blob):
                found[path] = str(obj.id)
                links[path] = target
            else:
                refused[path] = LINK_TO_NOTHING
        blobs = {path: oid for path, oid in found.items() if is_spec_path(path)}
        return SpecEntries(blobs=blobs, links=links, refused=refused)

    def _follow(self, root: pygit2.Tree, path: str) -> tuple[str | None, str]:
        """Where ``path`` leads inside the commit's tree, each symbolic link on the way followed.

        Returns ``(repo-relative path, "")``, or ``(None, why)`` when a link
        leads out of the repository (an absolute target, or one above the
        root) or to nothing. Only git objects are read, never the disk.
        """
        pending = path.split("/")
        done: list[str] = []
        hops = 0
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if not done:
                    return None, LINK_OUT_OF_REPOSITORY
                done.pop()
                continue
            parent = self._lookup(root, "/".join(done))
            if not isinstance(parent, pygit2.Tree) or name not in parent:
                return None, LINK_TO_NOTHING
            entry = parent[name]
            if entry.filemode != FileMode.LINK:
                done.append(name)
                continue
            hops += 1
            if hops > _MAX_LINKS:
                return None, LINK_TO_NOTHING
            target = self._spec_bytes(str(entry.id)).decode("utf-8", "surrogateescape")
            if target.startswith("/"):
                return None, LINK_OUT_OF_REPOSITORY
            pending = target.split("/") + pending
        return "/".join(done), ""

    def read_blob(self, oid: str) -> bytes:
        """The content of a blob."""
        try:
            obj = self._repo[oid]
        except (KeyError, ValueError) as exc:
            raise GitError(f"no object {oid}") from exc
        if not isinstance(obj, pygit2.Blob):
            raise GitError(f"object {oid} is a {obj.type_str}, not a blob")
        return obj.data

    def spec_files(self, commit: str) -> dict[str, bytes]:
        """Spec file path -> content at a commit."""
        return {path: self.read_blob(oid) for path, oid in self.spec_blobs(commit).items()}

    def read_file(self, commit: str, path: str) -> bytes | None:
        """A file's content at a commit, or ``None`` when there is no file at that path."""
        obj = self._lookup(self._commit(commit).tree, path)
        return obj.data if isinstance(obj, pygit2.Blob) else None

    def tree_id(self, commit: str, path: str) -> str | None:
        """The git object id of a directory (or file) at a commit, or ``None`` when absent."""
        obj = self._lookup(self._commit(commit).tree, path)
        return None if obj is None else str(obj.id)

    def export_tree(self, commit: str, path: str, dest: Path) -> None:
        """Write the directory ``path`` of a commit into ``dest``, keeping executable bits and symlinks.

        ``dest`` is created if needed; files already in it are overwritten.
        """
        obj = self._lookup(self._commit(commit).tree, path)
        if not isinstance(obj, pygit2.Tree):
            raise GitError(f"{path!r} is not a directory at {commit}")
        dest.mkdir(parents=True, exist_ok=True)
        self._write_tree(obj, dest)

    # ---------------------------------------------------------- catalogs

    def catalog(self, commit: str) -> Catalog:
        """Every spec at a commit, parsed and checked (cached by commit, by spec set and by blob)."""
        return self._load(commit).catalog

    def changed_paths(self, old: str, new: str) -> list[str]:
        """Repo-relative paths of the files that differ between two commits (added, removed or changed)."""
        a, b = self._commit(old).tree, self._commit(new).tree
        if a.id == b.id:
            return []
        paths: set[str] = set()
        for delta in a.diff_to_tree(b).deltas:
            paths.add(delta.old_file.path)
            paths.add(delta.new_file.path)
        return sorted(paths)

    def changed_models(self, old: str, new: str) -> ChangedModels:
        """Which models, policies and environments changed between two commits."""
        before, after = self._load(old), self._load(new)
        paths = self.changed_paths(old, new)
        touched: set[str] = set()
        policies: set[str] = set()
        environments: set[str] = set()
        invalid: list[str] = []
        if before.linked_from or after.linked_from:
            # a change to the file a spec's symbolic link leads to is a change to that spec
            links = (*before.linked_from.items(), *after.linked_from.items())
            changed = set(paths)
            through = {spec for target, specs in links if target in changed for spec in specs}
            paths = sorted(changed | through)
        for path in paths:
            touched |= before.index.models_fed_by(path)
            touched |= after.index.models_fed_by(path)
            for index in (before.index, after.index):
                if path in index.policies:
                    policies.add(index.policies[path])
                if path in index.environments:
                    environments.add(index.environments[path])
            if path in after.blobs and after.catalog.errors_for(path):
                invalid.append(path)
        old_models, new_models = before.catalog.models, after.catalog.models
        if before is not after:
            # a cross-document check can drop or restore a model whose own files did not change
            # (an environment it names was removed, say): compare the names, once, in C
            touched |= old_models.keys() ^ new_models.keys()
        return ChangedModels(
            added=frozenset(n for n in touched if n in new_models and n not in old_models),
            removed=frozenset(n for n in touched if n in old_models and n not in new_models),
            modified=frozenset(n for n in touched if n in old_models and n in new_models),
            policies=frozenset(policies),
            environments=frozenset(environments),
            invalid=tuple(invalid),
        )

    def model_inputs(self, commit: str, model: Model | str) -> ModelInputs:
        """The source tree id, requirements, Dockerfile and spec blob ids of a model at a commit."""
        sha = self.resolve(commit)
        if isinstance(model, str):
            found = self.catalog(sha).models.get(model)
            if found is None:
                raise GitError(f"no valid model {model!r} at {sha}")
            model = found
        root = self._commit(sha).tree
        source = model.source

        def oid(path: str | None, want: type[pygit2.Object]) -> str | None:
            if path is None:
                return None
            obj = self._lookup(root, path)
            return str(obj.id) if isinstance(obj, want) else None

        return ModelInputs(
            commit=sha,
            model=model.name,
            spec_blob=oid(model.spec_path, pygit2.Blob),
            source_tree=oid(source.path, pygit2.Tree),
            requirements_blob=oid(source.requirements, pygit2.Blob),
            dockerfile_blob=oid(source.dockerfile, pygit2.Blob),
        )

    # ---------------------------------------------------------- internals

    def _commit(self, ref: str) -> pygit2.Commit:
        try:
            obj = self._repo.revparse_single(ref)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise GitError(f"{self.location}: no commit {ref!r}") from exc
        if not isinstance(commit, pygit2.Commit):
            raise GitError(f"{self.location}: {ref!r} is not a commit")
        return commit

    def _lookup(self, root: pygit2.Tree, path: str) -> pygit2.Object | None:
        clean = normalise(path)
        if not clean:
            return root
        try:
            return root[clean]
        except (KeyError, ValueError):
            return None

    def _model_dir(self, entry: pygit2.Object) -> dict[str, tuple[str, bool]]:
        key = str(entry.id)
        cached = self._model_dirs.get(key)
        if cached is not None:
            return cached
        tree = self._repo[entry.id]
        found: dict[str, tuple[str, bool]] = {}
        if isinstance(tree, pygit2.Tree):
            for name in _MODEL_FILES:
                if name in tree:
                    child = tree[name]
                    if isinstance(child, pygit2.Blob):  # a file, or a symbolic link (a blob of its target)
                        found[name] = (str(child.id), child.filemode == FileMode.LINK)
        self._model_dirs[key] = found
        return found

    def _load(self, commit: str) -> Loaded:
        sha = self.resolve(commit)
        with self._lock:
            loaded = self._by_commit.get(sha)
            if loaded is not None:
                return loaded
            entries = self._spec_entries(self._commit(sha).tree)
            blobs = entries.blobs
            key = blob_set_key(blobs, entries.links, entries.refused)
            loaded = self._by_blobs.get(key)
            if loaded is None:
                misses = sum(1 for path_blob in blobs.items() if path_blob not in self._parsed)
                with gc_paused(misses):
                    parsed = [*self._parse_all(blobs), *map(refused_link, entries.refused.items())]
                    catalog = check_catalog(parsed)
                    linked_from: dict[str, tuple[str, ...]] = {}
                    for path, target in sorted(entries.links.items()):
                        linked_from[target] = (*linked_from.get(target, ()), path)
                    loaded = Loaded(
                        catalog=catalog,
                        blobs={**blobs, **dict.fromkeys(entries.refused, "")},
                        index=PathIndex.build(catalog),
                        linked_from=linked_from,
                    )
                self._by_blobs[key] = loaded
            self._by_commit[sha] = loaded
            return loaded

    def _parse_all(self, blobs: Mapping[str, str]) -> Iterable[ParsedFile]:
        order = sorted(blobs.items())
        cached = [self._parsed.get(key) for key in order]
        misses = [key for key, doc in zip(order, cached, strict=True) if doc is None]
        fresh = (parse_document(path, self._spec_bytes(oid)) for path, oid in misses)
        parsed: list[ParsedFile] = []
        for key, doc in zip(order, cached, strict=True):
            if doc is None:
                doc = next(fresh)
                self._parsed[key] = doc
            parsed.append(doc)
        return parsed

    def _spec_bytes(self, oid: str) -> bytes:
        """A spec blob's content, read straight from the object database (no ``Blob`` object to build)."""
        try:
            kind, data = self._repo.odb.read(oid)
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise GitError(f"no object {oid}") from exc
        if kind != ObjectType.BLOB:
            raise GitError(f"object {oid} is not a blob")
        return bytes(data)

    def _write_tree(self, tree: pygit2.Tree, dest: Path) -> None:
        for entry in tree:
            name = entry.name
            if not name or name in (".", "..", ".git") or "/" in name or "\\" in name or "\0" in name:
                raise GitError(f"unsafe path {name!r} in tree {tree.id}")
            target = dest / name
            mode = entry.filemode
            if mode == FileMode.TREE:
                sub = self._repo[entry.id]
                assert isinstance(sub, pygit2.Tree)
                target.mkdir(exist_ok=True)
                self._write_tree(sub, target)
            elif mode == FileMode.LINK:
                blob = self._repo[entry.id]
                assert isinstance(blob, pygit2.Blob)
                if target.is_symlink() or target.exists():
                    target.unlink()
                os.symlink(blob.data, target)
            elif mode in (FileMode.BLOB, FileMode.BLOB_EXECUTABLE):
                blob = self._repo[entry.id]
                assert isinstance(blob, pygit2.Blob)
                if target.is_symlink():
                    target.unlink()
                target.write_bytes(blob.data)
                target.chmod(0o755 if mode == FileMode.BLOB_EXECUTABLE else 0o644)
            # submodules (FileMode.COMMIT) have no content in this repository: skipped
