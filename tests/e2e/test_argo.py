"""End to end on the cluster home: proposals of the example model trained as Argo Workflows.

Pins down, on a repository made with ``flywheel init`` whose staging
environment runs pipelines on Argo (the stand-in Argo Server of
``tests/fakes/argo_server.py``, reached through the real SDK, with the token
the spec names), what ``flywheel run --once`` does: a param change is trained
in one Workflow and reported as the embedded home reports it (metrics, gates,
the comparison with production, the params changed); a crashing step's log
reaches the report; a controller killed mid-Workflow and started again
follows that Workflow and submits no second one; a newer head stops the older
head's Workflow; the same proposal trained on one machine and on Argo (its pods
in the virtualenv the embedded home built, standing for the image of the same
environment hash) has the same cache key and the same artifact digest. The step
pods check the proposal's commit out of the watched repository (its path here),
never the working tree's code. The controller is
the one ``flywheel run`` builds, given the fake image builder (the
composition root's ``images``) in place of a real one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.app import build_controller, run_controller
from controller.backends.images.fake import FakeImages
from controller.backends.store import Run, open_store
from controller.cli import main
from controller.clock import SYSTEM_CLOCK
from controller.settings import ArgoSettings, ControllerSettings, Settings
from tests.e2e.test_proposals import _review, _seed_production
from tests.e2e.test_proposals import _run_once as _run_embedded
from tests.e2e.test_proposals import venv_dir as shared_venv_dir
from tests.fakes.argo_server import FakeArgoServer
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.e2e

NAMESPACE = "ml-pipelines"
STAGING = """\
apiVersion: flywheel.dev/v1alpha1
kind: Environment
metadata:
  name: staging
spec:
  home: cluster
  pipeline:
    runner: argo
    namespace: {namespace}
    argo:
      server: {server}
      serviceAccount: flywheel-steps
      token: {{env: ARGO_TOKEN}}
  images:
    registry: registry.test:5000
    repository: ml
    baseImage: python:3.11-slim
  artifacts:
    pvc: {{claimName: flywheel-artifacts, mountPath: /artifacts}}
  serving:
    backend: local
"""

# `flywheel run --once` with the fake image builder, in a process of its own (so it can be killed)
CONTROLLER = """
import sys
from pathlib import Path
from controller.app import build_controller, run_controller
from controller.backends.images.fake import FakeImages
from controller.settings import ArgoSettings, ControllerSettings, Settings
repo, state, claims = sys.argv[1:4]
settings = Settings(
    controller=ControllerSettings(repo=repo, state_dir=Path(state)),
    argo=ArgoSettings(artifacts_dir=Path(claims)),
)
sys.exit(run_controller(settings, once=True, controller=build_controller(settings, images=FakeImages())))
"""


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "ml")])
    assert result.exit_code == 0, result.output
    return GitRepo(tmp_path / "ml")


@pytest.fixture
def argo(repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeArgoServer]:
    """The stand-in Argo Server, named by main's staging environment; its pods check the run's commit out."""
    monkeypatch.setenv("ARGO_TOKEN", "s3cret")
    with FakeArgoServer(token="s3cret") as server:
        repo.write("environments/staging.yaml", STAGING.format(namespace=NAMESPACE, server=server.url))
        repo.commit("Train on Argo")
        yield server


def _settings(repo: GitRepo, state: Path, argo: FakeArgoServer, *, promote: bool = True) -> Settings:
    return Settings(
        controller=ControllerSettings(repo=str(repo.path), state_dir=state, promote=promote),
        argo=ArgoSettings(artifacts_dir=argo.claim("flywheel-artifacts").parent),
    )


def _run_once(repo: GitRepo, state: Path, argo: FakeArgoServer, images: FakeImages) -> int:
    settings = _settings(repo, state, argo)
    return run_controller(settings, once=True, controller=build_controller(settings, images=images))


def _runs(state: Path, ref: str) -> list[Run]:
    store = open_store(state, clock=SYSTEM_CLOCK)
    try:
        return sorted(store.list_runs(model="iris", ref=ref), key=lambda run: run.id)
    finally:
        store.close()


def _workflows_of(argo: FakeArgoServer, run: Run) -> list[str]:
    """The Workflows the stand-in created for ``run`` (the release branch trains too, in its own)."""
    return [
        name
        for name in argo.created
        if argo.workflows[(NAMESPACE, name)]["metadata"]["labels"]["flywheel.dev/run"] == str(run.id)
    ]


def _submissions(argo: FakeArgoServer) -> int:
    """How many Workflows were submitted, created or refused as already there."""
    return sum(1 for method, path in argo.requests if method == "POST" and path.endswith(f"/{NAMESPACE}"))


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def test_a_param_change_is_trained_on_argo_and_reported_as_on_one_machine(
    repo: GitRepo, tmp_path: Path, argo: FakeArgoServer
) -> None:
    state = tmp_path / "state"
    _seed_production(state, accuracy=0.90)
    (state / "seed-artifact" / "production.txt").write_text("v1\n")  # production's model
    repo.branch("tune-c")
    repo.edit("specs/iris/model.yaml", "C: 1.0", "C: 0.5")
    head = repo.commit("Lower C")
    images = FakeImages()

    assert _run_once(repo, state, argo, images) == 0
    report = _review(state, "tune-c")
    assert "status: success" in report
    assert "production (v1)" in report
    assert "| **accuracy** |" in report and "| 0.9 |" in report
    assert "| `C` | `1.0` | `0.5` |" in report
    assert "| ✓ | `accuracy` | ≥ 0.85 |" in report
    assert "| ✓ | `accuracy` | regression ≤ 0.02 |" in report
    assert head[:10] in report

    (trained,) = _runs(state, "tune-c")
    [workflow] = _workflows_of(argo, trained)
    labels = argo.workflows[(NAMESPACE, workflow)]["metadata"]["labels"]
    assert labels["flywheel.dev/model"] == "iris"
    for template in argo.workflows[(NAMESPACE, workflow)]["spec"]["templates"][1:]:
        [code] = [a for a in template["inputs"]["artifacts"] if "git" in a]
        assert code["git"] == {"repo": str(repo.path.resolve()), "revision": head}  # the proposal's commit
        assert template["container"]["workingDir"] == "/flywheel/repo/specs/iris"
        # production's model, read-only where FLYWHEEL_BASELINE_MODEL_DIR says, as on one machine
        env = {e["name"]: e["value"] for e in template["container"]["env"]}
        assert env["FLYWHEEL_BASELINE_MODEL_DIR"] == "/flywheel/baseline"
        [mount] = [m for m in template["container"]["volumeMounts"] if m["mountPath"] == "/flywheel/baseline"]
        assert mount["readOnly"] is True
        assert (argo.claim("flywheel-artifacts") / mount["subPath"] / "production.txt").read_text() == "v1\n"
    assert trained.status == "succeeded" and trained.cache_key.startswith(labels["flywheel.dev/cache-key"])
    assert Path(trained.artifact_path or "").joinpath("model.joblib").is_file()  # brought home from the claim
    assert {r.model for r in images.requests} == {"iris"}
    assert _submissions(argo) == len(argo.created)


def test_a_crashing_step_reports_its_log(repo: GitRepo, tmp_path: Path, argo: FakeArgoServer) -> None:
    state = tmp_path / "state"
    repo.branch("broken-code")
    repo.edit(
        "specs/iris/train.py", "p = params()", 'p = params()\nraise RuntimeError("feature store unreachable")'
    )
    repo.commit("Break training")
    assert _run_once(repo, state, argo, FakeImages()) == 1
    status = _review(state, "broken-code", "--status-only")
    assert status.startswith("iris\terror\t") or status.startswith("iris\tfailure\t"), status
    report = _review(state, "broken-code")
    assert "RuntimeError: feature store unreachable" in report
    assert "Last lines of `train`'s log" in report


def test_a_controller_killed_mid_workflow_follows_it_when_started_again(
    repo: GitRepo, tmp_path: Path, argo: FakeArgoServer
) -> None:
    state = tmp_path / "state"
    repo.branch("slow")
    # slow enough that the Workflow still runs when the controller is killed, on a loaded machine too
    repo.edit("specs/iris/train.py", "p = params()", "import time\ntime.sleep(12)\np = params()")
    repo.commit("Train slowly")
    claims = argo.claim("flywheel-artifacts").parent
    first = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, str(repo.path), str(state), str(claims)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(
            lambda: [r for r in _runs(state, "slow") if _workflows_of(argo, r)],
            "the slow run's Workflow",
            timeout=180,  # a controller process starting under load
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    [run] = _runs(state, "slow")
    [workflow] = _workflows_of(argo, run)
    assert argo.workflows[(NAMESPACE, workflow)]["status"]["phase"] == "Running"

    assert _run_once(repo, state, argo, FakeImages()) == 0
    [again] = _runs(state, "slow")
    assert again.id == run.id and again.status == "succeeded"
    assert _workflows_of(argo, run) == [workflow] and argo.stopped == []
    # the Workflow was found by its labels, not submitted again (the release branch's run may have been
    # submitted by either controller: it is not the one this drill is about)
    assert argo.submitted.count(workflow) == 1
    assert "status: success" in _review(state, "slow")


def test_a_newer_head_stops_the_older_heads_workflow(
    repo: GitRepo, tmp_path: Path, argo: FakeArgoServer
) -> None:
    state = tmp_path / "state"
    repo.branch("tune")
    repo.edit("specs/iris/train.py", "p = params()", "import time\ntime.sleep(60)\np = params()")
    repo.edit("specs/iris/model.yaml", "C: 1.0", "C: 0.5")
    repo.commit("Train slowly")
    # proposals only: main's release run would take the slow code the stand-in's pods copy from the checkout
    controller = build_controller(_settings(repo, state, argo, promote=False), images=FakeImages())
    proposals = controller.proposals
    try:
        controller.repository.fetch()
        proposals.reconcile()
        _wait_for(lambda: any(_workflows_of(argo, r) for r in _runs(state, "tune")), "the first Workflow")
        repo.edit("specs/iris/train.py", "import time\ntime.sleep(60)\n", "")
        repo.commit("Train at the usual pace")
        controller.repository.fetch()
        proposals.reconcile()
        _wait_for(lambda: (proposals.collect(), not proposals.busy)[1], "both runs to end")
    finally:
        controller.close()
    older, newer = _runs(state, "tune")
    assert (older.status, newer.status) == ("cancelled", "succeeded")
    assert argo.stopped == _workflows_of(argo, older)
    assert len(_workflows_of(argo, newer)) == 1


venv_dir = shared_venv_dir  # the virtualenvs of the embedded home's runs (a module fixture)


def test_the_same_inputs_on_argo_and_on_one_machine_give_the_same_cache_key_and_artifact(
    repo: GitRepo, tmp_path: Path, venv_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The homes agree: one proposal trained on one machine, then on Argo in the image of the same env."""
    repo.branch("tune-c")
    repo.edit("specs/iris/model.yaml", "C: 1.0", "C: 0.5")
    repo.commit("Lower C")
    code, output = _run_embedded(repo, tmp_path / "embedded", venv_dir)
    assert code == 0, output
    (embedded,) = _runs(tmp_path / "embedded", "tune-c")

    # the image holds what the virtualenv holds: the stand-in's pods run the model in that environment
    [python] = [  # its virtualenv, env-<the start of its environment hash>
        p
        for p in venv_dir.glob("env-*/bin/python")
        if embedded.environment_hash.startswith(p.parent.parent.name.removeprefix("env-"))
    ]
    monkeypatch.setenv("ARGO_TOKEN", "s3cret")
    with FakeArgoServer(token="s3cret", python=python) as argo:
        repo.git("checkout", "-q", "main")
        repo.write("environments/staging.yaml", STAGING.format(namespace=NAMESPACE, server=argo.url))
        repo.commit("Train on Argo")
        assert _run_once(repo, tmp_path / "cluster", argo, FakeImages()) == 0
        (on_argo,) = _runs(tmp_path / "cluster", "tune-c")
        assert _workflows_of(argo, on_argo)  # it did train on Argo
    assert on_argo.status == embedded.status == "succeeded"
    assert on_argo.cache_key == embedded.cache_key
    assert on_argo.artifact_digest == embedded.artifact_digest and on_argo.artifact_digest
