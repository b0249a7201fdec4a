"""Parts the composition root (:func:`controller.app.build_controller`) assembles from the settings.

:func:`cluster_images` builds models' images with BuildKit Jobs when the
release branch's environments run pipelines on Argo; :func:`trigger_engine` makes
the trigger engine, whose retrains become branches here or pull requests on
GitHub.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.backends.data_versions import DataVersions
from controller.backends.forge.github_retrain import GitHubRetrainBranches
from controller.backends.git import Repository
from controller.backends.git.branches import LocalRetrainBranches
from controller.backends.images import BuiltImage, ImageBuilder, ImageError, ImageRequest
from controller.backends.store.sql import SqlStore
from controller.clock import Clock
from controller.engine.retrain import RetrainBranches, RetrainProposer
from controller.engine.triggers import TriggerEngine
from controller.settings import Settings, SettingsError
from controller.specs.types import Catalog


def cluster_images(
    catalog: Catalog,
    settings: Settings,
    state_dir: Path,
    clock: Clock,
    store: SqlStore,
    closing: list[Callable[[], object]],
) -> ImageBuilder:
    """BuildKit image builds for the runs on Argo.

    The build Jobs go through the Kubernetes API of ``FLYWHEEL_KUBECONFIG``
    (else the pod's in-cluster config), each in its environment's pipeline
    namespace; the registry is asked with the credentials of
    ``FLYWHEEL_REGISTRY_AUTH_FILE``. When ``catalog`` (the release branch's)
    already runs pipelines on Argo they are opened now, and neither readable is
    one :class:`SettingsError` line naming the environment (the store closed).
    Otherwise they are opened when the first run on Argo asks (an Argo
    Environment merged while the controller runs needs no restart), and
    neither readable fails that run with the same reason. What the controller
    closes when it stops is added to ``closing``.
    """
    argo = sorted((e for e in catalog.environments.values() if e.runner == "argo"), key=lambda e: e.name)

    def make() -> ImageBuilder:
        return _buildkit(settings, state_dir, clock, closing)

    if not argo:
        later = _LaterImages(make)
        closing.append(later.close)
        return later
    try:
        return make()
    except ImageError as exc:
        store.close()
        raise SettingsError(
            f"{argo[0].spec_path}: environment {argo[0].name!r} runs pipelines on Argo: {exc}"
        ) from None


def _buildkit(
    settings: Settings, state_dir: Path, clock: Clock, closing: list[Callable[[], object]]
) -> ImageBuilder:
    from controller.backends.images.buildkit import BuildKitImages, kube_client
    from controller.backends.images.registry import read_docker_config

    auth_file = settings.argo.registry_auth_file
    try:
        api = kube_client(settings.argo.kubeconfig)
        docker_config = read_docker_config(auth_file) if auth_file is not None else None
    except ImageError as exc:
        hint = "" if settings.argo.kubeconfig else " (set FLYWHEEL_KUBECONFIG outside the cluster)"
        raise ImageError(f"{exc}{hint}") from None
    builder = BuildKitImages(
        api=api,
        namespace="default",  # each build runs in its request's namespace: its pipeline's
        clock=clock,
        logs_dir=state_dir / "logs" / "images",
        docker_config=docker_config,
    )
    closing += [builder.close, api.close]
    return builder


class _LaterImages:
    """An :class:`ImageBuilder` made when first asked; after a failure, asked again (it may be mended)."""

    def __init__(self, make: Callable[[], ImageBuilder]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._builder: ImageBuilder | None = None

    def _get(self) -> ImageBuilder:
        with self._lock:
            if self._builder is None:
                self._builder = self._make()
            return self._builder

    def ensure(self, request: ImageRequest) -> BuiltImage:
        return self._get().ensure(request)

    def manifests(self, request: ImageRequest) -> list[dict[str, Any]]:
        return self._get().manifests(request)

    def close(self) -> None:
        """Nothing of its own: what it made was added to the controller's closing list."""


def trigger_engine(
    settings: Settings,
    repository: Repository,
    store: SqlStore,
    catalog: Callable[[], Catalog],
    release_branch: str,
    clock: Clock,
) -> tuple[TriggerEngine, list[Callable[[], object]]]:
    """The trigger engine: retrains proposed as branches here, or as pull requests on GitHub."""
    versions = DataVersions()
    closers: list[Callable[[], object]] = [versions.close]
    branches: RetrainBranches
    if settings.github is not None:
        github = GitHubRetrainBranches(settings.github, release_branch=release_branch)
        branches = github
        closers.append(github.close)
    else:
        branches = LocalRetrainBranches(repository, release_branch=release_branch, clock=clock)
    proposer = RetrainProposer(repository=repository, branches=branches, release_branch=release_branch)
    engine = TriggerEngine(
        records=store,
        catalog=catalog,
        proposer=proposer,
        versions=versions,
        clock=clock,
        data_check_seconds=settings.controller.data_check_seconds,
    )
    return engine, closers
