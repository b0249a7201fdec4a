"""The composition root has kserve exactly when the release branch serves on KServe; analysis finds revisions.

Pins down: without an Environment served by KServe the controller has no
kserve backend (and asks nothing of Kubernetes); with one, it reaches the
Kubernetes API of ``FLYWHEEL_KUBECONFIG`` (a kubeconfig for the stand-in
here) and serves kserve environments through :class:`KServeServing`; with
neither a kubeconfig nor an in-cluster config it refuses to start in one line
naming the environment. The revision lookup the Prometheus source gets names
the revision serving a version on KServe, says why when none is known, and
stays out of the way (None) elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from controller.app import build_controller
from controller.backends.images.fake import FakeImages
from controller.backends.metrics.prometheus import Revision
from controller.backends.serving.drift_source import ClusterDrift
from controller.backends.serving.fake import FakeServing
from controller.backends.serving.kserve import KServeServing
from controller.clock import SYSTEM_CLOCK
from controller.cluster_serving import drift_logging, revision_lookup
from controller.drift.profile import build_profile, write_profile
from controller.scaffold import scaffold
from controller.settings import ArgoSettings, ControllerSettings, DriftLoggerSettings, Settings, SettingsError
from controller.specs.types import Catalog
from tests.e2e.test_argo import STAGING
from tests.fixtures.kserve import ENV, Cluster, kserve_cluster
from tests.fixtures.required import reference as reference_data
from tests.gitrepo import GitRepo


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with kserve_cluster(tmp_path) as started:
        yield started


KSERVE_STAGING = STAGING.format(namespace="ml-pipelines", server="http://127.0.0.1:2746").replace(
    "  serving:\n    backend: local\n",
    "  serving:\n    backend: kserve\n    namespace: ml-serving\n"
    "  metrics:\n    source: prometheus\n    prometheusUrl: http://127.0.0.1:9\n",
)


@pytest.mark.integration
def test_an_environment_on_kserve_without_a_kubernetes_api_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a cluster: no in-cluster config
    repo = GitRepo(tmp_path / "ml")
    scaffold(repo.path)
    assert "backend: kserve" in KSERVE_STAGING
    repo.write("environments/staging.yaml", KSERVE_STAGING)
    repo.commit("Serve on KServe")
    options = ControllerSettings(repo=str(repo.path), state_dir=tmp_path / "state")
    with pytest.raises(SettingsError) as refused:
        build_controller(Settings(controller=options), serving=FakeServing(), images=FakeImages())
    message = str(refused.value)
    assert message.startswith(
        "environments/staging.yaml: environment 'staging' is served by KServe: no Kubernetes API: "
        "the in-cluster config: "
    )
    assert message.endswith("(set FLYWHEEL_KUBECONFIG outside the cluster)") and "\n" not in message


@pytest.mark.integration
def test_a_controller_has_kserve_when_the_release_branch_serves_on_it(
    cluster: Cluster, tmp_path: Path
) -> None:
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
    settings = Settings(controller=options, argo=ArgoSettings(kubeconfig=kubeconfig))
    plain = build_controller(settings, serving=FakeServing())
    try:
        assert sorted(plain.serving.backends) == ["local"]  # type: ignore[attr-defined]
    finally:
        plain.close()
    repo.write("environments/staging.yaml", KSERVE_STAGING)
    repo.commit("Serve on KServe")
    before = len(cluster.kube.requests)
    controller = build_controller(settings, serving=FakeServing(), images=FakeImages())
    try:
        kserve = controller.serving.backends["kserve"]  # type: ignore[attr-defined]
        assert isinstance(kserve, KServeServing)
        cluster.backend.deploy(environment=ENV, version=cluster.version("v1"))
        staging = dataclasses.replace(ENV, spec_path="environments/staging.yaml")
        assert controller.serving.endpoint(environment=staging, model="iris") == cluster.backend.endpoint(
            environment=ENV, model="iris"
        )
        assert len(cluster.kube.requests) > before  # through the stand-in the kubeconfig names
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


@pytest.mark.integration
def test_with_the_loggers_url_each_inference_service_logs_to_the_webhook_service_and_is_watched(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Drift in the cluster: the predictor's logger posts to /drift/{model}/{env}; the version is watched."""
    token = "t" * 24
    settings = DriftLoggerSettings.from_env(
        {
            "FLYWHEEL_DRIFT_LOGGER_URL": "http://flywheel-webhooks.flywheel.svc:8080",
            "FLYWHEEL_DRIFT_TOKEN": token,
        }
    )
    drift = ClusterDrift(tmp_path / "drift", now=SYSTEM_CLOCK.monotonic, wall=SYSTEM_CLOCK.timestamp)
    drift_logging({"kserve": cluster.backend}, settings, drift)
    version = cluster.version("v1")
    reference = tmp_path / "reference.csv"
    reference.write_text("a,b\n" + "".join(f"{i % 7},{i % 3}\n" for i in range(200)))
    write_profile(build_profile(reference), Path(version.artifact_uri))  # as the judge keeps it

    cluster.backend.deploy(environment=ENV, version=version)
    logger = cluster.service()["spec"]["predictor"]["logger"]
    assert logger == {
        "mode": "all",
        "url": f"http://flywheel-webhooks.flywheel.svc:8080/drift/iris/{ENV.name}?token={token}",
    }
    schema = Draft202012Validator(
        json.loads(reference_data("kserve-inferenceservice-v1beta1.schema.json").read_text())
    )
    assert [e.message for e in schema.iter_errors(cluster.service())] == []
    assert drift.environment(ENV.name).watches("iris", "v1")  # the controller's windows take its events


@pytest.mark.unit
def test_the_loggers_url_needs_the_webhook_services_token() -> None:
    assert DriftLoggerSettings.from_env({}).url is None
    with pytest.raises(SettingsError, match=r"^FLYWHEEL_DRIFT_LOGGER_URL needs FLYWHEEL_DRIFT_TOKEN"):
        DriftLoggerSettings.from_env({"FLYWHEEL_DRIFT_LOGGER_URL": "http://hooks:8080"})
    with pytest.raises(SettingsError, match=r"^FLYWHEEL_DRIFT_LOGGER_URL is 'hooks:8080': give the webhook"):
        DriftLoggerSettings.from_env(
            {"FLYWHEEL_DRIFT_LOGGER_URL": "hooks:8080", "FLYWHEEL_DRIFT_TOKEN": "x" * 16}
        )
