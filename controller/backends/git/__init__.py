"""The git backend: the one place that reads the repository Flywheel watches.

The engine calls :class:`Repository` to list branches and their heads, load
the validated :class:`~controller.specs.types.Catalog` of any commit, find
which models a commit range changed, and take the pieces of a model's
identity (source tree id, requirements and spec blob ids). The pipeline
runner calls :meth:`Repository.export_tree` to materialise a model's source
directory for its steps.

Everything is read from git objects: no checkout, and the user's work tree
and index are never touched. A local path (work tree or bare repository) is
read in place; a remote URL is kept as a bare mirror under ``mirror_root``
and brought up to date by :meth:`Repository.fetch`.

Reading stays cheap on large repositories:

* spec files are found by walking only ``specs/*/``, ``policies/`` and
  ``environments/``; a model directory whose tree id was seen before is not
  read again;
* parsed documents are cached by (path, blob id), so the catalog of a commit
  that differs from a loaded one in a single spec re-parses that one file
  (in this process: a helper process parsing a share of a large load saved
  no wall-clock time on a 2-core machine, 0.94-1.03x in
  ``bench/bench_specs.py``, for 1.09-1.26x the CPU);
  a catalog is cached by commit and by the exact set of spec blobs, so a
  commit that changed only code reuses the catalog outright;
* :meth:`Repository.changed_models` diffs the two trees (libgit2 skips equal
  subtrees) and looks each changed path and its ancestors up in a per-catalog
  index from path to model names, so its cost follows what changed, not the
  size of the repository.
"""

from __future__ import annotations

from controller.backends.git.mirrors import GitError, is_remote
from controller.backends.git.repository import ChangedModels, ModelInputs, Repository

__all__ = [
    "ChangedModels",
    "GitError",
    "ModelInputs",
    "Repository",
    "is_remote",
]
