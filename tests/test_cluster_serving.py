"""The composition root has kserve exactly when Kubernetes is configured, and analysis finds revisions.

Pins down: ``FLYWHEEL_KSERVE_KUBECONFIG`` is ``in-cluster`` or an absolute
kubeconfig path (anything else is one line naming the variable); without it
the controller has no kserve backend, with it (a kubeconfig for the
stand-in Kubernetes API) it serves kserve environments through
:class:`KServeServing`; the revision lookup the Prometheus source gets names
the revision serving a version on KServe, says why when none is known, and
stays out of the way (None) elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.app import build_controller
from controller.backends.metrics.prometheus import Revision
from controller.backends.serving.fake import FakeServing
from controller.backends.serving.kserve import KServeServing
from controller.cluster_serving import revision_lookup
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, KServeSettings, Settings, SettingsError
from controller.specs.types import Catalog
from tests.fixtures.kserve import ENV, Cluster, kserve_cluster
from tests.gitrepo import GitRepo


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with kserve_cluster(tmp_path) as started:
        yield started


@pytest.mark.unit
def test_the_kubeconfig_setting_is_in_cluster_or_an_absolute_path() -> None:
    assert KServeSettings.from_env({}).kubeconfig is None
    for value in ("in-cluster", "/etc/kube/config"):
        assert KServeSettings.from_env({"FLYWHEEL_KSERVE_KUBECONFIG": value}).kubeconfig == value
    with pytest.raises(SettingsError, match=r"^FLYWHEEL_KSERVE_KUBECONFIG is 'kube/config': give in-cluster"):
        KServeSettings.from_env({"FLYWHEEL_KSERVE_KUBECONFIG": "kube/config"})


@pytest.mark.integration
def test_a_controller_has_kserve_when_kubernetes_is_configured(cluster: Cluster, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: stand-in, cluster: {{server: '{cluster.kube.url}'}}}}]\n"
        "users: [{name: flywheel, user: {}}]\n"
        "contexts: [{name: stand-in, context: {cluster: stand-in, user: flywheel}}]\n"
        "current-context: stand-in\n"
    )
    options = ControllerSettings(repo=str(repo.path), state_dir=tmp_path / "state")
    plain = build_controller(Settings(controller=options), serving=FakeServing())
    try:
        assert sorted(plain.serving.backends) == ["local"]  # type: ignore[attr-defined]
    finally:
        plain.close()
    settings = Settings(controller=options, kserve=KServeSettings(kubeconfig=str(kubeconfig)))
    controller = build_controller(settings, serving=FakeServing())
    try:
        kserve = controller.serving.backends["kserve"]  # type: ignore[attr-defined]
        assert isinstance(kserve, KServeServing)
        cluster.backend.deploy(environment=ENV, version=cluster.version("v1"))
        staging = dataclasses.replace(ENV, spec_path="environments/staging.yaml")
        assert controller.serving.endpoint(environment=staging, model="iris") == cluster.backend.endpoint(
            environment=ENV, model="iris"
        )
    finally:
        controller.close()


@pytest.mark.integration
def test_the_revision_lookup_names_the_serving_revision_on_kserve_only(cluster: Cluster) -> None:
    local = dataclasses.replace(ENV, name="dev", serving_backend="local")
    catalog = Catalog(environments={"staging": ENV, "dev": local})
    lookup = revision_lookup({"kserve": cluster.backend}, lambda: catalog)
    assert lookup("dev", "iris", "v1") is None
    with pytest.raises(LookupError, match="no KServe revision of iris v1 is known in staging"):
        lookup("staging", "iris", "v1")
    cluster.backend.deploy(environment=ENV, version=cluster.version("v1"))
    assert lookup("staging", "iris", "v1") == Revision(namespace="ml-serving", name="iris-predictor-00001")
    without = revision_lookup({}, lambda: catalog)
    with pytest.raises(LookupError, match="is served by kserve, which this controller lacks"):
        without("staging", "iris", "v1")
