"""The composition root: which backends, senders and inbox handlers a controller gets from its settings.

Pins down: Slack's sender only with a bot token; GitHub settings make GitHub
the forge, with its sender, trust gate and poller, and its reports name their
pull request; inbox events are handled by kind (a Slack press is decided, one
an older Flywheel decided already is not decided again); a pull request's
event reconciles that proposal only; ``flywheel run``'s modules import
nothing of the webhook service; the built-in metrics source reads the router
of the local serving backend an environment names, and says why for a
backend without one; an environment whose pipelines run on Argo needs an
image builder (the ``argo`` runner comes with one; without, one line says so).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from controller.app import ServingByName, build_controller
from controller.backends.images import ImageError
from controller.backends.images.buildkit import BuildKitImages
from controller.backends.images.fake import FakeImages
from controller.backends.notify.buttons import SLACK_ACTION_KIND, ButtonPress
from controller.backends.pipelines.argo import ArgoRunner
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.serving import ServingError
from controller.backends.serving.fake import FakeServing
from controller.backends.serving.local import LocalServing
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import ROLLBACK_EVENT
from controller.scaffold import scaffold
from controller.settings import (
    ArgoSettings,
    ControllerSettings,
    GitHubSettings,
    Settings,
    SettingsError,
    SlackSettings,
)
from controller.specs.types import Environment
from tests.fakes.github_api import pull_request_event
from tests.fakes.kube_api import FakeKube
from tests.gitrepo import GitRepo
from tests.test_images_buildkit import make_request

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    scaffold(tmp_path / "ml")
    return tmp_path / "ml"


def test_slack_sender_only_with_a_bot_token(repo: Path, tmp_path: Path) -> None:
    plain = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "a")),
        serving=FakeServing(),
    )
    with_slack = build_controller(
        Settings(
            controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "b"),
            slack=SlackSettings(token="xoxb-test"),
        ),
        serving=FakeServing(),
    )
    try:
        assert set(plain.senders) == {"console"}
        assert set(with_slack.senders) == {"console", "slack"}
    finally:
        plain.close()
        with_slack.close()


def test_inbox_events_are_handled_by_kind_and_unknown_kinds_recorded(repo: Path, tmp_path: Path) -> None:
    controller = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "s")),
        serving=FakeServing(),
    )
    store = controller.store
    try:
        press = ButtonPress(user_id="U0CAROL01", decision="approve", model="iris", version=1)
        store.put_event(source="slack", delivery_id="d1", kind=SLACK_ACTION_KIND, payload=press.to_payload())
        store.put_event(source="cli", delivery_id="d2", kind=ROLLBACK_EVENT, payload={"model": "nope"})
        store.put_event(source="mystery", delivery_id="d3", kind="mystery", payload={})
        decided_before = {"handled": True, "user": "U0CAROL01", "decision": "approve", "model": "iris"}
        store.put_event(source="slack", delivery_id="d4", kind=SLACK_ACTION_KIND, payload=decided_before)
        controller.handle_requests()
        events = {store.get_event(i).delivery_id: store.get_event(i) for i in (1, 2, 3, 4)}
        assert events["d1"].completed_at is not None and events["d1"].error is None
        assert "nope is not on main" in (events["d2"].error or "")
        assert "no handler" in (events["d3"].error or "")
        assert events["d4"].completed_at is not None and events["d4"].error is None
        assert store.claim_events(limit=10, worker="again") == []  # nothing left to retry blindly
        # The press was decided (refused: nobody maps that Slack user), once; the one decided before was not.
        assert [(e.action, e.detail["refusal"]) for e in store.audit()] == [("command.refused", "unmapped")]
    finally:
        controller.close()


def test_github_settings_make_github_the_forge_with_its_sender(repo: Path, tmp_path: Path) -> None:
    from controller.backends.forge.github import GitHubForge

    github = GitHubSettings(repository="octo/ml", token="ghp_test")
    controller = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "g"), github=github),
        serving=FakeServing(),
    )
    try:
        assert isinstance(controller.forge, GitHubForge)
        assert "github" in controller.senders
        assert controller.proposals.admit is not None  # outside contributors wait for ok-to-test
        assert [type(p).__name__ for p in controller.pollers] == ["GitHubPoller"]  # missed deliveries
    finally:
        controller.close()
    no_polling = build_controller(
        Settings(
            controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "h"),
            github=GitHubSettings("octo/ml", token="t", poll_seconds=0),
        ),
        serving=FakeServing(),
    )
    try:
        assert no_polling.pollers == []
    finally:
        no_polling.close()


def test_the_builtin_metrics_source_reads_the_router_of_the_local_serving_backend(tmp_path: Path) -> None:
    staging = Environment(name="staging", spec_path="environments/staging.yaml")
    local = LocalServing(tmp_path / "serving", clock=SYSTEM_CLOCK)
    try:
        url = ServingByName({"local": local}).router_metrics_url(staging)
        assert url == local.metrics_url(environment=staging) and url.endswith("/metrics")
    finally:
        local.shutdown()
    with pytest.raises(ServingError, match="'local', which has no router for the built-in metrics source"):
        ServingByName({"local": FakeServing()}).router_metrics_url(staging)


def test_a_pull_request_event_reconciles_that_proposal_only_and_its_reports_name_it(tmp_path: Path) -> None:
    work = GitRepo(tmp_path / "ml")
    scaffold(work.path)
    heads = {}
    for branch, value in (("tune-a", "3.0"), ("tune-b", "5.0")):
        work.branch(branch)
        work.edit("specs/iris/model.yaml", "    C: 1.0\n", f"    C: {value}\n")
        heads[branch] = work.commit(f"iris: C={value}")
    work.git("checkout", "-q", "main")
    controller = build_controller(
        Settings(
            controller=ControllerSettings(repo=str(work.path), state_dir=tmp_path / "s", promote=False),
            github=GitHubSettings("octo/ml", token="t", poll_seconds=0),
        ),
        serving=FakeServing(),
    )
    runner = FakeRunner({"evaluate": ScriptedStep(metrics={"accuracy": 0.9})})
    controller.proposals.runners = {"local": runner}
    store = controller.store
    try:
        event = pull_request_event(
            "opened", number=5, head_ref="tune-a", head_sha=heads["tune-a"], author="alice"
        )
        store.put_event(source="github", delivery_id="d1", kind="pull_request.opened", payload=event)
        controller.handle_requests()
        assert controller.requested == {"tune-a"}
        summary = controller.reconcile_requested()
        assert summary is not None and controller.requested == set()
        assert [(r.ref, r.commit) for r in store.list_runs()] == [("tune-a", heads["tune-a"])]  # not tune-b
        reports = [m.payload for m in store.due_messages(now=controller.clock.now() + timedelta(days=1))]
        assert {(p["kind"], p["proposal"], p.get("pr")) for p in reports if p["kind"] == "report"} == {
            ("report", "tune-a", 5)  # the number the event told: the sender need not ask GitHub
        }
        assert controller.reconcile_requested() is None  # nothing asked for since
    finally:
        controller.close()


def test_flywheel_runs_modules_import_nothing_of_the_webhook_service() -> None:
    code = (
        "import sys, controller.cli.run, controller.app\n"
        "controller.cli.run.run  # the command itself\n"
        "print(sorted(m for m in sys.modules if m == 'webhooks' or m.startswith('webhooks.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_an_argo_environment_without_a_kubernetes_api_is_refused_in_one_line(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a cluster: no in-cluster config
    git = GitRepo(repo)
    git.write("environments/staging.yaml", CLUSTER_STAGING)
    git.commit("Train on Argo")
    settings = Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "a"))
    with pytest.raises(SettingsError) as refused:
        build_controller(settings, serving=FakeServing())
    message = str(refused.value)
    assert message.startswith(
        "environments/staging.yaml: environment 'staging' runs pipelines on Argo: "
        "no Kubernetes API to build images in: the in-cluster config: "
    )
    assert message.endswith("(set FLYWHEEL_KUBECONFIG outside the cluster)") and "\n" not in message
    controller = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "b")),
        serving=FakeServing(),
        images=FakeImages(),
    )
    try:
        assert set(controller.proposals.runners) == {"local", "argo"}
    finally:
        controller.close()


def test_an_argo_environment_gets_buildkit_builds_through_the_kubeconfig(repo: Path, tmp_path: Path) -> None:
    git = GitRepo(repo)
    git.write("environments/staging.yaml", CLUSTER_STAGING)
    git.commit("Train on Argo")
    kube = FakeKube()
    kube.start()
    try:
        settings = Settings(
            controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "state"),
            argo=ArgoSettings(kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig")),
        )
        controller = build_controller(settings, serving=FakeServing())
        try:
            argo = controller.proposals.runners["argo"]
            assert isinstance(argo, ArgoRunner) and isinstance(argo.images, BuildKitImages)
            assert argo.images.api is not None and argo.images.api.configuration.host == kube.url
            assert argo.repository == str(repo.resolve())
        finally:
            controller.close()
    finally:
        kube.stop()


def test_an_argo_environment_merged_after_start_gets_builds_when_its_first_run_asks(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Argo Environment at start: the argo runner is there all the same, its builds made on first use."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    source = tmp_path / "src"
    source.mkdir()
    request = make_request(source)
    without = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "a")),
        serving=FakeServing(),
    )
    try:
        argo = without.proposals.runners["argo"]
        assert isinstance(argo, ArgoRunner)
        with pytest.raises(ImageError) as failed:  # the run fails with the reason; the controller runs on
            argo.images.ensure(request)
        assert "no Kubernetes API to build images in" in str(failed.value)
        assert str(failed.value).endswith("(set FLYWHEEL_KUBECONFIG outside the cluster)")
    finally:
        without.close()
    kube = FakeKube()
    kube.start()
    try:
        settings = Settings(
            controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "b"),
            argo=ArgoSettings(kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig")),
        )
        controller = build_controller(settings, serving=FakeServing())
        try:
            images = controller.proposals.runners["argo"].images  # type: ignore[attr-defined]
            config_map, job = images.manifests(request)
            assert (config_map["kind"], job["kind"]) == ("ConfigMap", "Job")
            assert kube.requests == []  # made, and nothing asked of the cluster yet
        finally:
            controller.close()
    finally:
        kube.stop()


def test_a_version_is_served_with_the_image_its_run_ran_in(repo: Path, tmp_path: Path) -> None:
    """What a serving backend is given names the image of the version's lineage (a custom server, KServe)."""
    controller = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "state")),
        serving=FakeServing(),
    )
    try:
        store = controller.store
        run = store.create_run(
            model="iris",
            ref="main",
            commit=GitRepo(repo).git("rev-parse", "HEAD").strip(),
            cache_key="k",
            status="succeeded",
        )
        pinned = "registry.example.com/ml/iris:abc-def@sha256:" + "1" * 64
        version = store.register_version(
            model="iris",
            run_id=run.id,
            commit=run.commit,
            artifact_digest="sha256:x",
            artifact_uri=str(tmp_path),
            environment_hash="h",
            metrics={},
            params={},
            image=pinned,
        )
        model = controller.repository.catalog("main").models["iris"]
        served = controller.rollouts.served_version(version, model)
        assert served.image == pinned and served.version == "v1"
    finally:
        controller.close()


CLUSTER_STAGING = """\
apiVersion: flywheel.dev/v1alpha1
kind: Environment
metadata: {name: staging}
spec:
  home: cluster
  pipeline:
    runner: argo
    namespace: ml-pipelines
    argo: {server: "http://127.0.0.1:2746"}
  images: {registry: "registry.test:5000", repository: ml, baseImage: "python:3.11-slim"}
  artifacts:
    pvc: {claimName: flywheel-artifacts}
  serving:
    backend: local
"""
