"""``flywheel serving ls|url|stop|start`` through click's CliRunner, on a real router and stub servers.

Pinned down: ``ls`` (text and ``--json``) shows each environment's endpoint,
whether its router runs and the models it routes with their weights; ``url``
prints an environment's or a model's URL; ``stop`` stops the routers and
servers, says what that means for the store and for rollouts, and leaves the
routes; ``start`` brings them back on the same ports; on a state directory
where nothing served they say so and create nothing; a bad name is one line
and exit status 1. The README's ``curl`` example, run as printed (with
``flywheel`` and ``curl``) against a router, is answered by the model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from controller.backends.local.processes import is_alive
from controller.backends.serving import inference_request
from controller.backends.serving.local import LocalServing
from controller.cli import main
from controller.clock import SYSTEM_CLOCK
from controller.specs.types import Environment
from tests.fixtures.required import program
from tests.test_serving import stub_version

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[1] / "README.md"
STAGING = Environment(name="staging", spec_path="environments/staging.yaml")
PRODUCTION = Environment(name="production", spec_path="environments/production.yaml")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state directory whose staging serves m v1 (100%) and v2 (0%), and production m v1."""
    state = tmp_path / "state"
    backend = LocalServing(
        state / "serving", ready_timeout_seconds=20, stop_grace_seconds=2, clock=SYSTEM_CLOCK
    )
    try:
        for label in ("v1", "v2"):
            backend.deploy(environment=STAGING, version=stub_version(tmp_path, label))
        backend.set_weights(environment=STAGING, model="m", weights={"v1": 100, "v2": 0})
        backend.deploy(environment=PRODUCTION, version=stub_version(tmp_path, "v1"))
        backend.set_weights(environment=PRODUCTION, model="m", weights={"v1": 100})
        yield state
    finally:
        backend.shutdown()


def _flywheel(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _listing(state: Path) -> dict[str, dict[str, object]]:
    document = json.loads(_flywheel("serving", "ls", "--json", "--state-dir", str(state)))
    return {entry["environment"]: entry for entry in document}


def test_ls_shows_endpoints_routers_and_routed_models(state: Path) -> None:
    listing = _listing(state)
    assert set(listing) == {"staging", "production"}
    staging = listing["staging"]
    endpoint = staging["endpoint"]
    assert isinstance(endpoint, str) and re.fullmatch(r"http://127\.0\.0\.1:\d+", endpoint)
    assert staging["models"] == {"m": {"url": f"{endpoint}/v2/models/m", "weights": {"v1": 100, "v2": 0}}}
    router = staging["router"]
    assert isinstance(router, dict) and router["running"] and is_alive(router["pid"], None)
    assert listing["production"]["endpoint"] != endpoint

    text = _flywheel("serving", "ls", "--state-dir", str(state))
    assert re.search(rf"staging\s+{endpoint}\s+router running \(pid {router['pid']}\)", text)
    assert re.search(rf"m\s+{endpoint}/v2/models/m\s+v1 100% \(running\), v2 0% \(running\)", text)

    assert _flywheel("serving", "url", "staging", "--state-dir", str(state)).strip() == endpoint
    assert _flywheel("serving", "url", "staging", "m", "--state-dir", str(state)).strip() == (
        f"{endpoint}/v2/models/m"
    )


def test_stop_and_start_keep_routes_and_ports_and_say_what_stopping_means(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _listing(state)
    pids = [server["pid"] for entry in before.values() for server in entry["servers"]]  # type: ignore[attr-defined]
    output = _flywheel("serving", "stop", "--env", "staging", "--state-dir", str(state))
    assert f"stopped staging: its router on {before['staging']['endpoint']}, 2 model server(s)" in output
    assert "The store is unchanged" in output and "holds rather than promote" in output
    after = _listing(state)
    assert after["staging"]["router"] == {"running": False, "pid": None}
    assert after["staging"]["models"] == before["staging"]["models"]  # the routes are kept
    assert after["production"]["router"] == before["production"]["router"]  # --env: only staging
    assert "router stopped" in _flywheel("serving", "ls", "--state-dir", str(state))

    monkeypatch.chdir(state.parent)  # the default is a relative state directory (.flywheel)
    output = _flywheel("serving", "start", "--state-dir", state.name)
    assert f"staging serves on {before['staging']['endpoint']} (2 model server(s) running)" in output
    started = _listing(state)
    assert started["staging"]["endpoint"] == before["staging"]["endpoint"]
    assert started["staging"]["router"]["running"]  # type: ignore[index]
    body = json.dumps(inference_request([[5.1, 3.5, 1.4, 0.2]])).encode()
    url = f"{started['staging']['endpoint']}/v2/models/m/infer"
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # routed as before the stop
        assert json.loads(response.read())["model_version"] == "v1"

    _flywheel("serving", "stop", "--state-dir", str(state))
    assert not any(is_alive(pid, None) for pid in pids)
    assert not any(entry["router"]["running"] for entry in _listing(state).values())  # type: ignore[index]
    assert "nothing was running" in _flywheel("serving", "stop", "--state-dir", str(state))


def test_commands_on_a_state_directory_where_nothing_served(tmp_path: Path) -> None:
    state = tmp_path / "none"
    assert "nothing has served" in _flywheel("serving", "ls", "--state-dir", str(state))
    assert _flywheel("serving", "ls", "--json", "--state-dir", str(state)).strip() == "[]"
    assert "nothing was running" in _flywheel("serving", "stop", "--state-dir", str(state))
    result = CliRunner().invoke(main, ["serving", "url", "staging", "--state-dir", str(state)])
    assert result.exit_code == 1 and "staging has no endpoint" in result.output
    assert not state.exists()
    result = CliRunner().invoke(main, ["serving", "stop", "--env", "../x", "--state-dir", str(state)])
    assert result.exit_code == 1
    error = "Error: '../x' is not a valid environment, model or version name here"
    assert result.output.strip().splitlines() == [error]


def readme_curl(state: Path, *, model: str = "iris") -> dict[str, Any]:
    """The answer to the README's serving example run as printed on ``state`` (``iris`` made ``model``)."""
    block = re.search(r"```sh\n(flywheel serving ls.*?)```", README.read_text(), re.DOTALL)
    assert block is not None, "the serving section's example is gone from README.md"
    command = block.group(1).replace("iris", model)
    assert "/infer" in command and '"datatype": "FP64"' in command
    program("curl")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # flywheel of this environment
    env = {**os.environ, "PATH": path, "FLYWHEEL_STATE_DIR": str(state)}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_the_readme_curl_example_is_answered_through_the_router(state: Path) -> None:
    answer = readme_curl(state, model="m")  # the stub answers any body; MLServer checks the tensor
    assert answer["model_name"] == "m" and answer["model_version"] == "v1" and answer["outputs"]
