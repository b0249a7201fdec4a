"""Ports, identity and environment of the embedded home's routers and model servers.

Pinned down here, with :class:`LocalServing` and the stub custom server of
``test_serving.py``:

* two state directories (two repositories) with default environments, which
  name no port, serve side by side, each on a port chosen once and kept
  across a controller restart and a stop/start;
* an explicit port another process holds is one :class:`ServingError`
  (one line) naming the port, the holder's pid and its command line; no router
  is left running, and nothing is written in the routes;
* a foreign router answering on our recorded port is never adopted and gets
  none of our admin calls: with a chosen port the router moves (and says so),
  with an explicit one it is an error naming the holder; a router launched
  just before a crash (its intent recorded, no pid yet) is adopted only when
  it echoes the recorded identity;
* a model server is taken for ours only when its process holds the port and
  its metadata names our model and version;
* a router and a custom server see none of the controller's secrets (their
  ``/proc/<pid>/environ``), only the allow-list and the serving contract;
* stop keeps routes and ports; start (or the next call that needs the
  router) brings the router and the routed servers back on the same ports.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.backends.local.processes import is_alive
from controller.backends.serving import ServingError
from controller.backends.serving.local import LocalServing, ServerState
from controller.backends.serving.server import (
    PortInUse,
    ProcessRecord,
    foreign_answer,
    free_port,
    http_json,
    port_holder,
)
from controller.clock import SYSTEM_CLOCK
from controller.specs.types import Environment
from tests.test_serving import INFER_BODY, Client, Processes, stub_version

pytestmark = pytest.mark.integration
ENV = Environment(name="staging", spec_path="environments/staging.yaml")  # no port: chosen per state dir

SECRETS = {
    "FLYWHEEL_WEBHOOK_SECRET": "webhook-secret",
    "FLYWHEEL_GITHUB_WEBHOOK_SECRET": "gh-webhook-secret",
    "FLYWHEEL_GITHUB_TOKEN": "ghp_secret",
    "FLYWHEEL_GITHUB_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----",
    "FLYWHEEL_SLACK_BOT_TOKEN": "xoxb-secret",
    "FLYWHEEL_SLACK_SIGNING_SECRET": "slack-signing-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "AWS_ACCESS_KEY_ID": "AKIASECRET",
    "DATABASE_URL": "postgresql://user:password@db/flywheel",
}


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[LocalServing]]:
    """LocalServing objects a test makes; everything they recorded is stopped at the end."""
    made: list[LocalServing] = []
    try:
        yield made
    finally:
        for backend in made:
            backend.shutdown()


def _serving(backends: list[LocalServing], state: Path) -> LocalServing:
    backend = LocalServing(state, ready_timeout_seconds=20, stop_grace_seconds=2, clock=SYSTEM_CLOCK)
    backends.append(backend)
    return backend


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def _infer(url: str) -> tuple[int, dict[str, object]]:
    client = Client(_port(url))
    try:
        headers = {"Content-Type": "application/json"}
        status, _, body = client.call("POST", "/v2/models/m/infer", INFER_BODY, headers)
    finally:
        client.close()
    return status, json.loads(body)


def _hold_port(procs: Processes) -> tuple[int, subprocess.Popen[bytes]]:
    """A plain process listening on a free port (as a second application would): its port and process."""
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, "port-holder"], stdout=subprocess.PIPE)
    procs.procs.append(proc)
    assert proc.stdout is not None
    with proc.stdout:
        port = int(proc.stdout.readline())
    return port, proc


def _router(state: Path) -> ProcessRecord:
    record = ProcessRecord.load(state / "staging" / "router.json")
    assert record is not None
    return record


def _servers(backend: LocalServing) -> dict[str, ServerState]:
    """The running servers of model ``m`` in ``ENV``, by version."""
    (status,) = backend.status(ENV.name)
    return {s.version: s for s in status.servers if s.model == "m" and s.running}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


# --------------------------------------------------------------------- ports


def test_two_state_directories_with_default_environments_serve_side_by_side(
    backends: list[LocalServing], tmp_path: Path
) -> None:
    first, second = _serving(backends, tmp_path / "a"), _serving(backends, tmp_path / "b")
    for backend, tag in ((first, "a"), (second, "b")):
        backend.deploy(environment=ENV, version=stub_version(tmp_path, "v1", knobs=f"STUB_TAG={tag}"))
        backend.set_weights(environment=ENV, model="m", weights={"v1": 100})
    endpoints = [b.endpoint(environment=ENV, model="m") for b in (first, second)]
    assert endpoints[0] != endpoints[1]
    for endpoint, tag in zip(endpoints, "ab", strict=True):
        status, answer = _infer(endpoint)
        assert (status, answer["tag"]) == (200, tag)

    restarted = _serving(backends, tmp_path / "a")  # a controller restart keeps the endpoint
    assert restarted.endpoint(environment=ENV, model="m") == endpoints[0]
    first.stop()
    assert not first.status()[0].running
    started = first.start()
    assert started[0].endpoint and endpoints[0].startswith(started[0].endpoint)  # same port after a stop
    status, answer = _infer(endpoints[0])  # the router and the server it routes to are back
    assert (status, answer["tag"]) == (200, "a")


def test_an_explicit_port_held_by_another_process_is_one_clear_error(
    backends: list[LocalServing], procs: Processes, tmp_path: Path
) -> None:
    port, holder = _hold_port(procs)
    fixed = Environment(name="staging", spec_path="environments/staging.yaml", port=port)
    backend = _serving(backends, tmp_path / "serving")
    with pytest.raises(ServingError) as caught:
        backend.deploy(environment=fixed, version=stub_version(tmp_path, "v1"))
    message = str(caught.value)
    assert isinstance(caught.value, PortInUse) and caught.value.port == port
    assert f"port {port} is held by pid {holder.pid}" in message
    assert "port-holder" in message  # its command line
    assert "environments/staging.yaml" in message and "\n" not in message
    assert not (tmp_path / "serving" / "staging" / "router.json").exists()  # no router of ours left
    assert backend.status()[0].router_pid is None and backend.status()[0].routes == {}
    holder.kill()
    holder.wait(10)
    backend.deploy(environment=fixed, version=stub_version(tmp_path, "v1"))  # the port is free: it works
    assert backend.endpoint(environment=fixed, model="m") == f"http://127.0.0.1:{port}/v2/models/m"


def test_moving_to_a_held_port_keeps_the_router_on_its_old_port(
    backends: list[LocalServing], procs: Processes, tmp_path: Path
) -> None:
    state = tmp_path / "serving"
    backend = _serving(backends, state)
    backend.deploy(environment=ENV, version=stub_version(tmp_path, "v1"))
    backend.set_weights(environment=ENV, model="m", weights={"v1": 100})
    endpoint = backend.endpoint(environment=ENV, model="m")
    port, holder = _hold_port(procs)
    moved = Environment(name="staging", spec_path="environments/staging.yaml", port=port)
    with pytest.raises(PortInUse, match=rf"port {port} is held by pid {holder.pid}"):
        backend.endpoint(environment=moved, model="m")  # the spec now names a port someone holds
    assert _infer(endpoint)[0] == 200  # still served where it was
    holder.kill()
    holder.wait(10)
    assert backend.endpoint(environment=moved, model="m") == f"http://127.0.0.1:{port}/v2/models/m"
    assert _infer(f"http://127.0.0.1:{port}/v2/models/m")[0] == 200


def test_port_holder_names_pid_and_command_or_says_it_is_free(procs: Processes) -> None:
    port, holder = _hold_port(procs)
    found = port_holder(port)
    assert found is not None and found.pid == holder.pid and "port-holder" in found.command
    holder.kill()
    holder.wait(10)
    assert port_holder(port) is None


# ------------------------------------------------------------------ identity


def test_a_foreign_router_on_our_chosen_port_is_never_adopted(
    backends: list[LocalServing], procs: Processes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "serving"
    backend = _serving(backends, state)
    backend.deploy(environment=ENV, version=stub_version(tmp_path, "v1"))
    ours = _router(state)
    os.kill(ours.pid or 0, 9)
    foreign_state = tmp_path / "other" / "routes.json"
    foreign = procs.router(ours.port, foreign_state, token="theirs")  # another Flywheel took the port
    with caplog.at_level(logging.WARNING, logger="flywheel.serving"):
        backend.set_weights(environment=ENV, model="m", weights={"v1": 100})
    moved = _router(state)
    assert moved.port != ours.port and moved.pid != foreign.pid
    assert f"moves to port {moved.port}: port {ours.port} is held by pid {foreign.pid}" in caplog.text
    assert _infer(backend.endpoint(environment=ENV, model="m"))[0] == 200
    assert not foreign_state.exists()  # the foreign router never got a route from us
    assert json.loads((state / "staging" / "endpoint.json").read_text()) == {"port": moved.port}


def test_a_foreign_router_on_our_explicit_port_is_an_error_naming_it(
    backends: list[LocalServing], procs: Processes, tmp_path: Path
) -> None:
    port = free_port()
    fixed = Environment(name="staging", spec_path="environments/staging.yaml", port=port)
    state = tmp_path / "serving"
    backend = _serving(backends, state)
    backend.deploy(environment=fixed, version=stub_version(tmp_path, "v1"))
    os.kill(_router(state).pid or 0, 9)
    foreign_state = tmp_path / "other" / "routes.json"
    foreign = procs.router(port, foreign_state, token="theirs")
    for _ in range(2):  # the same answer each time; never the foreign router's 401
        with pytest.raises(PortInUse, match=rf"port {port} is held by pid {foreign.pid} \(.*router"):
            backend.set_weights(environment=fixed, model="m", weights={"v1": 100})
    assert not foreign_state.exists()
    assert foreign.poll() is None  # and it was not stopped either


def test_a_router_launched_before_a_crash_is_adopted_only_with_our_identity(
    backends: list[LocalServing], tmp_path: Path
) -> None:
    state = tmp_path / "serving"
    backend = _serving(backends, state)
    backend.deploy(environment=ENV, version=stub_version(tmp_path, "v1"))
    launched = _router(state)
    intent = ProcessRecord(**{**launched.__dict__, "pid": None, "process_start": None})
    intent.save(state / "staging" / "router.json")  # as if the controller died right after the launch
    restarted = _serving(backends, state)
    restarted.endpoint(environment=ENV, model="m")
    assert _router(state).pid == launched.pid  # adopted: it echoed the recorded identity

    impostor = ProcessRecord(
        **{**launched.__dict__, "pid": None, "process_start": None, "instance": "not-it"}
    )
    impostor.save(state / "staging" / "router.json")
    restarted = _serving(backends, state)
    endpoint = restarted.endpoint(environment=ENV, model="m")
    assert _router(state).pid != launched.pid and _port(endpoint) != launched.port
    assert is_alive(launched.pid, launched.process_start)  # not ours to stop: left alone
    os.kill(launched.pid or 0, 9)


def test_healthz_echoes_the_identity_the_router_was_started_with(
    backends: list[LocalServing], tmp_path: Path
) -> None:
    state = tmp_path / "serving"
    _serving(backends, state).endpoint(environment=ENV, model="m")
    record = _router(state)
    status, answer = http_json(record.url, "/healthz")
    assert status == 200
    expected = {"status": "ok", "environment": "staging", "instance": record.instance, "pid": record.pid}
    assert answer == expected
    assert re.fullmatch(r"[0-9a-f]{16}", record.instance)


def test_a_server_counts_as_ours_only_when_it_holds_the_port_and_names_our_version(
    procs: Processes,
) -> None:
    url = procs.server("v2")  # model m, version v2, started by the test
    port = _port(url)
    pid = next(p.pid for p in procs.procs)
    record = ProcessRecord(pid=pid, process_start=None, port=port, started_at=0.0, model="m", version="v2")
    assert foreign_answer(record) is None
    other_version = ProcessRecord(**{**record.__dict__, "version": "v1"})
    assert foreign_answer(other_version) == f"port {port} answers for versions ['v2'] of m, not v1"
    unrelated = procs.start([sys.executable, "-c", "import time; time.sleep(60)"], {}, "sleep.log")
    not_our_process = ProcessRecord(**{**record.__dict__, "pid": unrelated.pid})
    holder = port_holder(port)
    assert holder is not None and holder.pid == pid
    assert foreign_answer(not_our_process) == f"port {port} is held by pid {pid} ({holder.command})"


# --------------------------------------------------------------- environment


def test_routers_and_custom_servers_see_no_secret(
    backends: list[LocalServing], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # not for a model's own code
    state = tmp_path / "serving"
    backend = _serving(backends, state)
    backend.deploy(environment=ENV, version=stub_version(tmp_path, "v1"))  # executed directly, no shell
    (server,) = _servers(backend).values()
    assert server.pid is not None
    router = _router(state)
    assert router.pid is not None
    server_env, router_env = _environ(server.pid), _environ(router.pid)
    for env in (server_env, router_env):
        leaked = {name for name in SECRETS if name in env}
        assert not leaked
        assert not any(value in env.values() for value in SECRETS.values())
        assert env["PATH"] == os.environ["PATH"] and env["LC_ALL"] == "C.UTF-8"
    assert {"FLYWHEEL_HOST", "FLYWHEEL_PORT", "FLYWHEEL_MODEL_DIR", "FLYWHEEL_MODEL_NAME",
            "FLYWHEEL_MODEL_VERSION"} <= server_env.keys()
    assert server_env["FLYWHEEL_PORT"] == str(_port(server.url))
    assert "PYTHONPATH" not in server_env and "FLYWHEEL_ROUTER_TOKEN" not in server_env
    assert router_env["FLYWHEEL_ROUTER_TOKEN"] == router.token
    recorded = json.loads((state / "staging" / "servers" / "m" / "v1" / "server.json").read_text())
    assert not any(value in json.dumps(recorded) for value in SECRETS.values())


# ------------------------------------------------------------------ stop, start


def test_the_next_call_that_needs_a_stopped_router_or_server_starts_it_again(
    backends: list[LocalServing], tmp_path: Path
) -> None:
    state = tmp_path / "serving"
    backend = _serving(backends, state)
    backend.deploy(environment=ENV, version=stub_version(tmp_path, "v1"))
    backend.set_weights(environment=ENV, model="m", weights={"v1": 100})
    backend.deploy(environment=ENV, version=stub_version(tmp_path, "v2"))  # deployed, no traffic yet
    before = _servers(backend)
    endpoint = backend.endpoint(environment=ENV, model="m")
    stopped = backend.stop("staging")
    assert stopped[0].running and all(server.running for server in stopped[0].servers)  # what ran before
    assert not any(is_alive(d.pid, None) for d in before.values())
    assert backend.deployed(environment=ENV, model="m") == ()
    assert backend.status()[0].routes == {"m": {"v1": 100}}  # routes kept

    restarted = _serving(backends, state)
    restarted.set_weights(environment=ENV, model="m", weights={"v1": 50, "v2": 50})  # e.g. a canary step
    after = _servers(restarted)
    assert {v: d.url for v, d in after.items()} == {v: d.url for v, d in before.items()}  # same ports
    assert all(after[v].pid != before[v].pid for v in after)  # new processes
    assert restarted.endpoint(environment=ENV, model="m") == endpoint
    assert _infer(endpoint)[0] == 200

    restarted.stop()
    metrics = _serving(backends, state).metrics_url(environment=ENV)  # e.g. the next canary analysis
    assert metrics == endpoint.replace("/v2/models/m", "/metrics")
    assert {d.version for d in restarted.deployed(environment=ENV, model="m")} == {"v1", "v2"}
    assert _infer(endpoint)[0] == 200
