"""``deploy/``: the kustomize base and its example overlay render, every object validates, and the Role
grants exactly what the code asks of the Kubernetes API.

Renders with ``kubectl kustomize`` (Debian's ``kubernetes-client``; skipped without it on a developer's
machine, failed under ``FLYWHEEL_TEST_REQUIRE_ALL=1``) and validates every object with
``kubernetes-validate``. The code's calls are read from its source by :mod:`tests.kube_calls`; that
reader's mapping is pinned down here on calls the code does not make yet (Leases, custom objects).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.fixtures.required import program
from tests.kube_calls import UnknownCall, calls_in_source, calls_in_tree

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"
CONTROLLER_ROLE = "flywheel"
SERVICE_ACCOUNT = "flywheel"


def render(kustomization: Path) -> list[dict[str, Any]]:
    kubectl = program("kubectl", package="kubernetes-client")
    done = subprocess.run(
        [kubectl, "kustomize", str(kustomization)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(DEPLOY / "base")


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return render(DEPLOY / "overlays" / "example")


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of ``kind`` named ``name`` (a generated ConfigMap or Secret: ``name-<hash>``)."""
    generated = kind in ("ConfigMap", "Secret")
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (o["metadata"]["name"] == name or (generated and o["metadata"]["name"].startswith(name + "-")))
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_base_and_overlay_render_and_every_object_validates(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    for objects in (base, overlay):
        for document in objects:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    kinds = sorted({o["kind"] for o in base})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    assert {o["kind"] for o in overlay} == {*kinds, "Namespace", "Secret"}
    assert all(o["metadata"].get("namespace") == "flywheel" for o in overlay if o["kind"] != "Namespace")


def test_the_controller_is_two_replicas_electing_a_leader_by_lease(base: list[dict[str, Any]]) -> None:
    controller = one(base, "Deployment", "flywheel-controller")
    assert controller["spec"]["replicas"] == 2
    container = controller["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["run", "--repo", "$(FLYWHEEL_REPO)"]
    settings = one(base, "ConfigMap", "flywheel-settings")["data"]
    assert settings["FLYWHEEL_LEADER_ELECTION"] == "lease"
    assert settings["FLYWHEEL_LEASE_NAME"] == "flywheel-controller"
    assert settings["FLYWHEEL_LEASE_SECONDS"] == "15"
    sources = container["envFrom"]
    assert {
        "configMapRef": {"name": one(base, "ConfigMap", "flywheel-settings")["metadata"]["name"]}
    } in sources
    assert {"secretRef": {"name": "flywheel-secrets"}} in sources  # FLYWHEEL_DATABASE_URL and the tokens
    # the probes ask the controller's health endpoint, on the port the settings give it
    port = next(p for p in container["ports"] if p["name"] == "health")
    assert str(port["containerPort"]) == settings["FLYWHEEL_HEALTH_PORT"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_the_webhook_service_serves_and_is_reached_through_its_service(base: list[dict[str, Any]]) -> None:
    webhooks = one(base, "Deployment", "flywheel-webhooks")
    assert webhooks["spec"]["replicas"] == 2
    container = webhooks["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "serve" and "0.0.0.0" in container["args"]
    listen = container["args"][container["args"].index("--port") + 1]
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert str(port["containerPort"]) == listen
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = one(base, "Service", "flywheel-webhooks")
    assert service["spec"]["selector"].items() <= webhooks["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_every_pod_runs_as_non_root_on_a_read_only_root_with_writable_state(
    base: list[dict[str, Any]],
) -> None:
    for deployment in (o for o in base if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == SERVICE_ACCOUNT
        assert pod["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert container["resources"]["requests"] and container["resources"]["limits"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            settings = one(base, "ConfigMap", "flywheel-settings")["data"]
            for writable in (settings["FLYWHEEL_STATE_DIR"], "/tmp"):
                assert "emptyDir" in volumes[mounts[writable]], (deployment["metadata"]["name"], writable)


def test_the_role_is_bound_to_the_pods_service_account(base: list[dict[str, Any]]) -> None:
    binding = one(base, "RoleBinding", CONTROLLER_ROLE)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": CONTROLLER_ROLE,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT}]


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_role_grants_exactly_what_the_code_calls(base: list[dict[str, Any]]) -> None:
    used = calls_in_tree(ROOT / "controller", skip=["scaffold/template"])
    role = granted(one(base, "Role", CONTROLLER_ROLE))
    assert used, "no Kubernetes call found in the code: the reader is broken"
    assert sorted(used - role) == [], "the code calls these; grant them in deploy/base/role.yaml"
    assert sorted(role - used) == [], "deploy/base/role.yaml grants these; the code never calls them"


def test_the_call_reader_derives_verbs_and_resources_from_the_client() -> None:
    source = """
GROUP = "serving.kserve.io"
def f(api, coordination, batch, core, watcher, workflows):
    coordination.read_namespaced_lease("flywheel", "ns")
    coordination.replace_namespaced_lease("flywheel", "ns", body)
    api.patch_namespaced_custom_object(GROUP, "v1beta1", ns, "inferenceservices", name, body)
    api.get_namespaced_custom_object(
        group=GROUP, version="v1beta1", namespace=ns, plural="inferenceservices", name=n
    )
    watcher.stream(batch.list_namespaced_job, "ns")
    core.read_namespaced_secret("s", "ns")
    core.delete_collection_namespaced_pod("ns")
    core.list_namespaced_config_map("ns", watch=True)
    workflows.stop_workflow("ns", "wf", request)
"""
    assert sorted(calls_in_source(source, "example.py")) == [
        ("", "configmaps", "watch"),
        ("", "pods", "deletecollection"),
        ("", "secrets", "get"),
        ("argoproj.io", "workflows", "get"),
        ("argoproj.io", "workflows", "patch"),
        ("batch", "jobs", "watch"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "update"),
        ("serving.kserve.io", "inferenceservices", "get"),
        ("serving.kserve.io", "inferenceservices", "patch"),
    ]


def test_the_call_reader_refuses_a_call_it_cannot_place() -> None:
    unplaced = "def f(api, group):\n    api.create_namespaced_custom_object(group, 'v', 'ns', 'x', body)\n"
    with pytest.raises(UnknownCall, match=r"example.py:2: create_namespaced_custom_object: .*group"):
        list(calls_in_source(unplaced, "example.py"))
    unmapped = "def f(api):\n    api.resubmit_workflow('ns', 'wf', request)\n"
    with pytest.raises(UnknownCall, match=r"example.py:2: resubmit_workflow"):
        list(calls_in_source(unmapped, "example.py"))


def test_the_cluster_scaffold_fits_what_deploy_installs(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    """`flywheel init --home cluster`'s environments name what deploy/ makes, where the controller sees it."""
    namespace = one(overlay, "Namespace", "flywheel")["metadata"]["name"]
    controller = one(base, "Deployment", "flywheel-controller")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in controller["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in controller["containers"][0]["volumeMounts"]}
    for path in sorted((ROOT / "controller/scaffold/cluster/environments").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())["spec"]
        assert spec["pipeline"]["namespace"] == namespace, path.name
        one(base, "ServiceAccount", spec["pipeline"]["argo"]["serviceAccount"])
        claim = spec["artifacts"]["pvc"]
        one(base, "PersistentVolumeClaim", claim["claimName"])
        mounted = volumes[mounts[claim["mountPath"]]]
        assert mounted["persistentVolumeClaim"]["claimName"] == claim["claimName"], path.name
        # the Argo Server acts with the controller's own service-account token (client auth mode)
        assert spec["pipeline"]["argo"]["token"] == {
            "file": "/var/run/secrets/kubernetes.io/serviceaccount/token"
        }


def test_every_container_runs_a_flywheel_command_that_parses(base: list[dict[str, Any]]) -> None:
    """The image's entrypoint is `flywheel`; each Deployment's args, variables filled in, are a command."""
    import click

    from controller.cli import main

    settings = one(base, "ConfigMap", "flywheel-settings")["data"]
    for deployment in (o for o in base if o["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container["image"].split(":")[0] == "flywheel"  # the overlay's images: renames it
            args = [re.sub(r"\$\((\w+)\)", lambda m: settings[m.group(1)], a) for a in container["args"]]
            with click.Context(main) as context:
                command = main.get_command(context, args[0])
                assert command is not None, args
                command.make_context(args[0], args[1:])  # raises on an unknown option or a bad value


def test_the_call_reader_follows_constants_imported_from_the_package(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "serving").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "serving" / "__init__.py").write_text("")
    (package / "serving" / "names.py").write_text(
        'GROUP = "serving.kserve.io"\nPLURAL = "inferenceservices"\n'
    )
    (package / "serving" / "kserve.py").write_text(
        "from .names import GROUP\nfrom pkg.serving.names import PLURAL as THINGS\n"
        "def f(api, ns, name, body):\n"
        "    api.replace_namespaced_custom_object(GROUP, 'v1beta1', ns, THINGS, name, body)\n"
    )
    assert calls_in_tree(package) == {("serving.kserve.io", "inferenceservices", "update")}
