"""What a model's training run needs: its inputs at a commit, the environment and the runner it runs with.

The proposal reconciler (:mod:`controller.engine.proposals`) calls
:func:`read_run_inputs` for each model it plans, on proposals and on the
release branch alike (:class:`~controller.engine.identity.RunInputs` turns the
pieces into the cache key; a data input inside the repository is
fingerprinted by its git tree, anything else by
:func:`controller.backends.data.resolve`), and :func:`pipeline_runner` for
each run it starts: proposals train where the model's first stage runs
pipelines, as main defines it, and a run never falls back to another runner.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from controller.backends import data as data_inputs
from controller.backends.git import GitError, Repository
from controller.backends.pipelines import PipelineRunner, environment_hash
from controller.engine.identity import RunInputs, pipeline_identity
from controller.specs.types import Catalog, Environment, Model

__all__ = ["MissingRunner", "pipeline_environment", "pipeline_runner", "read_run_inputs"]


def read_run_inputs(repository: Repository, commit: str, model: Model, *, work_dir: Path) -> RunInputs:
    """``model``'s inputs at ``commit``; raises :class:`GitError` or ``DataError`` when one is missing."""
    pieces = repository.model_inputs(commit, model)
    if pieces.source_tree is None:
        raise GitError(f"source directory {model.source.path} does not exist at {commit[:10]}")
    requirements = repository.read_file(commit, model.source.requirements) or b""
    environment = environment_hash(
        requirements=requirements.decode("utf-8", "replace"), python=model.source.python
    )
    fingerprints = {}
    for data in model.data:
        path = data_inputs.local_path(data, base=Path(model.source.path))
        if path is not None and not data.uri.startswith("file:") and not data.digest:
            relative = (PurePosixPath(model.source.path) / data.uri).as_posix()
            tree = repository.tree_id(commit, os.path.normpath(relative))
            if tree is None:
                raise data_inputs.DataError(f"data input {data.name!r}: {relative} does not exist")
            fingerprints[data.name] = f"git:{tree}"
        else:
            fingerprints[data.name] = data_inputs.resolve(data, base=work_dir).fingerprint
    return RunInputs(
        model=model.name,
        source_tree=pieces.source_tree,
        requirements_blob=pieces.requirements_blob,
        params=dict(model.params),
        pipeline=pipeline_identity(model),
        data_fingerprints=fingerprints,
        environment_hash=environment,
    )


class MissingRunner(LookupError):
    """An environment names a pipeline runner this controller does not have."""


def pipeline_runner(
    environment: Environment | None, runners: Mapping[str, PipelineRunner]
) -> tuple[str, PipelineRunner]:
    """(name, runner) of the runner ``environment`` names (``local`` without an environment).

    Raises :class:`MissingRunner`, naming the environment and the runner, when
    this controller has none by that name: a run never falls back to another.
    """
    name = environment.runner if environment is not None else "local"
    runner = runners.get(name)
    if runner is None:
        where = f"environment {environment.name!r}" if environment is not None else "the model"
        have = ", ".join(sorted(runners)) or "none"
        raise MissingRunner(
            f"{where} names pipeline runner {name!r}, which this controller does not have (it has: {have})"
        )
    return name, runner


def pipeline_environment(model: Model, main_catalog: Catalog) -> Environment | None:
    """Proposals train where the model's first stage runs pipelines, as ``main`` defines it."""
    for stage in model.rollout.stages:
        environment = main_catalog.environments.get(stage.environment)
        if environment is not None:
            return environment
    return None
