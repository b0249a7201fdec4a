"""The KServe serving backend against a stand-in KServe that serves, through the real ``kubernetes`` client.

Pins down: a model's first version is created whole and serves all traffic;
a later one starts behind ``canaryTrafficPercent: 0`` and its smoke test goes
through its own tagged URL; canary weights move the percentage and real
requests through the InferenceService's URL split accordingly; promotion
removes the percentage (KServe then reports the new revision rolled out and
the old one previous); a rollback routes everything back and restores the
previous predictor, whose new revision serves the old version; repeating a
call starts nothing twice; a stale write is refused and worked out again;
a raw deployment (annotation or cluster default) refuses a canary; a
predictor that does not come up fails the deploy with KServe's reason; the
observation reports what KServe routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from kubernetes import client as k8s

from controller.backends.serving import ServedVersion, ServingError
from controller.backends.serving.kserve import KServeServing
from controller.backends.serving.kserve_status import read_service
from controller.backends.serving.server import free_port
from controller.clock import SYSTEM_CLOCK
from controller.specs.types import Serving
from tests.fixtures.kserve import ENV, Cluster, kserve_cluster

pytestmark = pytest.mark.integration

@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with kserve_cluster(tmp_path) as started:
        yield started


def routes(cluster: Cluster) -> dict[str, int]:
    """What KServe routes, as the backend observes it (revisions at 0% left out)."""
    observed = cluster.backend.observe(environment=ENV).routes.get("iris", {})
    return {version: weight for version, weight in observed.items() if weight > 0}


def test_a_first_version_is_deployed_whole_and_answers_through_the_services_url(cluster: Cluster) -> None:
    cluster.backend.deploy(environment=ENV, version=cluster.version("v1"))
    assert routes(cluster) == {"v1": 100}
    (deployed,) = cluster.backend.deployed(environment=ENV, model="iris")
    assert (deployed.version, deployed.weight) == ("v1", 100)
    cluster.backend.smoke_test(environment=ENV, model="iris", version="v1", inputs=[[5.1, 3.5, 1.4, 0.2]] * 3)
    assert cluster.answered_by(2) == ["iris-predictor-00001"] * 2
    assert (cluster.tmp / "claims/flywheel-artifacts/models/iris/v1/stub.json").is_file()
    observed = cluster.backend.observe(environment=ENV)
    assert observed.known and observed.live == {"iris": frozenset({"v1"})}
    cluster.backend.deploy(environment=ENV, version=cluster.version("v1"))  # again: nothing new
    assert cluster.kserve.started == ["iris-predictor-00001"]


def test_a_canary_moves_canary_traffic_percent_and_promotion_removes_it(cluster: Cluster) -> None:
    backend = cluster.backend
    backend.deploy(environment=ENV, version=cluster.version("v1"))
    backend.deploy(environment=ENV, version=cluster.version("v2"))
    assert routes(cluster) == {"v1": 100}
    assert {d.version: d.weight for d in backend.deployed(environment=ENV, model="iris")} == {
        "v1": 100,
        "v2": 0,
    }
    backend.smoke_test(environment=ENV, model="iris", version="v2", inputs=[[6.0, 2.2, 5.0, 1.5]])

    backend.set_weights(environment=ENV, model="iris", weights={"v2": 25, "v1": 75})
    assert routes(cluster) == {"v2": 25, "v1": 75}
    assert cluster.service()["spec"]["predictor"]["canaryTrafficPercent"] == 25  # type: ignore[index]
    answered = cluster.answered_by(8)
    assert answered.count("iris-predictor-00002") == 2 and answered.count("iris-predictor-00001") == 6
    patches = [method for method, _ in cluster.kube.requests].count("PATCH")
    backend.set_weights(environment=ENV, model="iris", weights={"v2": 25, "v1": 75})  # again: no write
    assert [method for method, _ in cluster.kube.requests].count("PATCH") == patches

    backend.set_weights(environment=ENV, model="iris", weights={"v2": 100})
    service = read_service(cluster.service())
    assert service.canary_percent is None and "canaryTrafficPercent" not in service.predictor
    assert (service.latest_rolled_out, service.previous_rolled_out) == (
        "iris-predictor-00002",
        "iris-predictor-00001",
    )
    assert routes(cluster) == {"v2": 100}
    backend.retire(environment=ENV, model="iris", version="v1")
    assert [d.version for d in backend.deployed(environment=ENV, model="iris")] == ["v2"]
    assert cluster.answered_by(3) == ["iris-predictor-00002"] * 3


def test_a_rollback_routes_everything_back_then_restores_the_previous_predictor(cluster: Cluster) -> None:
    backend = cluster.backend
    backend.deploy(environment=ENV, version=cluster.version("v1"))
    backend.deploy(environment=ENV, version=cluster.version("v2"))
    backend.set_weights(environment=ENV, model="iris", weights={"v2": 50, "v1": 50})
    with pytest.raises(ServingError, match="still gets 50% of traffic"):
        backend.retire(environment=ENV, model="iris", version="v2")

    backend.set_weights(environment=ENV, model="iris", weights={"v1": 100})
    assert cluster.service()["spec"]["predictor"]["canaryTrafficPercent"] == 0  # type: ignore[index]
    assert routes(cluster) == {"v1": 100}
    backend.retire(environment=ENV, model="iris", version="v2")
    service = read_service(cluster.service())
    assert service.version == "v1" and service.canary_percent is None
    assert service.predictor["containers"][0]["env"][0]["value"].endswith("/models/iris/v1")  # type: ignore[index]
    assert service.revisions["iris-predictor-00003"] == "v1"
    assert routes(cluster) == {"v1": 100}
    assert cluster.answered_by(2) == ["iris-predictor-00003"] * 2
    assert [d.version for d in backend.deployed(environment=ENV, model="iris")] == ["v1"]


def test_a_stale_write_is_refused_and_worked_out_again(cluster: Cluster) -> None:
    backend = cluster.backend
    backend.deploy(environment=ENV, version=cluster.version("v1"))
    stale = backend._get(ENV, "iris")
    assert stale is not None
    cluster.kserve.services[("ml-serving", "iris")].document["metadata"]["resourceVersion"] = "changed"
    assert backend._patch(ENV, stale, {"metadata": {"annotations": {"x": "y"}}}) is False
    backend.deploy(environment=ENV, version=cluster.version("v2"))  # reads again, then writes
    assert read_service(cluster.service()).version == "v2"


@pytest.mark.parametrize("where", ["annotation", "cluster default"])
def test_a_raw_deployment_refuses_a_canary(cluster: Cluster, where: str) -> None:
    backend = cluster.backend
    backend.deploy(environment=ENV, version=cluster.version("v1"))
    if where == "annotation":
        annotations = cluster.kserve.services[("ml-serving", "iris")].document["metadata"]["annotations"]
        annotations["serving.kserve.io/deploymentMode"] = "RawDeployment"
    else:
        cluster.kserve.default_mode = "Standard"
    with pytest.raises(ServingError) as refused:
        backend.deploy(environment=ENV, version=cluster.version("v2"))
    assert "mode, which ignores canaryTrafficPercent: refusing deploying v2 next to v1" in str(refused.value)
    assert routes(cluster) == {"v1": 100} and read_service(cluster.service()).version == "v1"


def test_a_predictor_that_does_not_come_up_fails_the_deploy_with_kserves_reason(cluster: Cluster) -> None:
    backend = cluster.backend
    broken = ServedVersion(
        model="iris",
        version="v1",
        serving=Serving(runtime="custom", command="exit 3"),
        artifact_uri=str(cluster.version("v1").artifact_uri),
    )
    with pytest.raises(
        ServingError, match=r"does not become ready: PredictorReady: Revision iris-predictor-00001"
    ):
        backend.deploy(environment=ENV, version=broken)
    assert backend.deployed(environment=ENV, model="iris") == ()


def test_an_environment_never_takes_over_another_ones_inference_service(cluster: Cluster) -> None:
    cluster.backend.deploy(environment=ENV, version=cluster.version("v1"))
    production = replace(ENV, name="production")  # the same namespace
    with pytest.raises(ServingError, match="serves environment 'staging', not 'production': give each"):
        cluster.backend.deploy(environment=production, version=cluster.version("v2"))
    assert read_service(cluster.service()).version == "v1"


def test_an_unreachable_kubernetes_api_is_unknown_to_observe_and_an_error_elsewhere(tmp_path: Path) -> None:
    configuration = k8s.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens
    configuration.retries = False
    with k8s.ApiClient(configuration) as api:
        backend = KServeServing(api=api, clock=SYSTEM_CLOCK, claim_dir=lambda pvc: tmp_path)
        observed = backend.observe(environment=ENV)
        assert not observed.known and observed.unknown is not None
        assert observed.unknown.startswith("InferenceServices in ml-serving: ")
        with pytest.raises(ServingError, match=r"^InferenceService ml-serving/iris: "):
            backend.deployed(environment=ENV, model="iris")
        with pytest.raises(ServingError, match=r"^InferenceService ml-serving/iris: "):
            backend.set_weights(environment=ENV, model="iris", weights={"v1": 100})
