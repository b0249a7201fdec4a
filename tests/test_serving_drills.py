"""Drills: the controller SIGKILLed around the launch of a model server or a router, then restarted.

Pinned down here, with :class:`LocalServing` and the stub custom server of
``test_serving.py``: a controller process deploys a version and is killed
(``SIGKILL``, by itself, so the moment is exact) right before or right after
it launches the router or the model server, or while its launcher runs,
before it learns whether the process started; a restarted controller deploys the same version, routes all
traffic to it and answers through the router. Then, whatever the moment:

* exactly one server runs for the version in the environment, and exactly one
  router for the environment (a psutil scan of this test's processes);
* the router answers our admin token (routing worked, and ``GET /-/routes``
  with the recorded token is 200), also on an explicit port;
* the process launched before the crash was adopted, not doubled: after a
  kill right after the launch, its pid is the one serving;
* a launch whose record was replaced by a later intent, and that still runs,
  is stopped (it carries a token the record superseded), and a server counts
  as ours only when the process on its port carries the recorded token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from controller.backends.local.processes import is_alive
from controller.backends.serving import ServedVersion
from controller.backends.serving.local import LocalServing
from controller.backends.serving.server import ProcessRecord, foreign_answer, free_port
from controller.clock import SYSTEM_CLOCK
from controller.specs.types import Environment
from tests.test_serving import Client, stub_version

pytestmark = pytest.mark.integration

# The controller that dies: deploys one version, and SIGKILLs itself before, during (5 ms into the
# short-lived launcher's run) or right after the launch of the router or of the server (the real
# launch, its pid not yet known to the caller).
CRASHING_CONTROLLER = r'''
import json, os, signal, sys, threading
from pathlib import Path
from controller.backends.serving import ServedVersion, local, routers
from controller.backends.python_env import PythonEnvironment
from controller.clock import SYSTEM_CLOCK
from controller.specs.types import Environment, Serving

state, target, moment, port, version = sys.argv[1:6]
module = local if target == "server" else routers
real_launch = module.launch

def crashing_launch(*args, **kwargs):
    if moment == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    if moment == "during":
        threading.Timer(0.005, os.kill, (os.getpid(), signal.SIGKILL)).start()
    pid = real_launch(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    return pid

module.launch = crashing_launch
spec = json.loads(version)
spec["serving"] = Serving(**spec["serving"])
environment = Environment(name="staging", spec_path="environments/staging.yaml", port=int(port) or None)
local.LocalServing(Path(state), ready_timeout_seconds=30, clock=SYSTEM_CLOCK).deploy(
    environment=environment, version=ServedVersion(**spec)
)
'''


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "serving"
    try:
        yield state
    finally:
        LocalServing(state, clock=SYSTEM_CLOCK).shutdown()
        for process in _ours(tmp_path):  # whatever the drill left behind, even what shutdown missed
            process.kill()


def _ours(tmp_path: Path) -> list[psutil.Process]:
    """The servers and routers this test started (each leads its own session, its children in it):
    their command line or environment names tmp_path."""
    found = []
    for process in psutil.process_iter():
        try:
            words = [*process.cmdline(), *process.environ().values()]
        except psutil.Error:
            continue
        leader = process.pid == _session(process.pid)
        if leader and process.pid != os.getpid() and any(str(tmp_path) in word for word in words):
            found.append(process)
    return found


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _servers(tmp_path: Path, version: str) -> list[int]:
    return sorted(p.pid for p in _ours(tmp_path) if p.environ().get("FLYWHEEL_MODEL_VERSION") == version)


def _routers(tmp_path: Path) -> list[int]:
    return sorted(p.pid for p in _ours(tmp_path) if "controller.backends.serving.router" in p.cmdline())


def _crash(state: Path, *, target: str, moment: str, port: int, version: ServedVersion) -> None:
    spec = {
        "model": version.model, "version": version.version, "artifact_uri": version.artifact_uri,
        "source_uri": version.source_uri,
        "serving": {"runtime": version.serving.runtime, "command": version.serving.command},
    }
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_CONTROLLER, str(state), target, moment, str(port), json.dumps(spec)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == -9, done.stderr  # it died by SIGKILL where the drill said, not of anything else


@pytest.mark.parametrize(
    ("target", "moment", "explicit"),
    [
        ("server", "after", False),
        ("server", "before", False),
        ("server", "during", False),
        ("router", "after", False),
        ("router", "during", True),
        ("router", "after", True),
        ("router", "before", True),
    ],
)
def test_a_controller_killed_around_a_launch_neither_doubles_nor_loses_the_process(
    state: Path, tmp_path: Path, target: str, moment: str, explicit: bool
) -> None:
    port = free_port() if explicit else 0
    environment = Environment(name="staging", spec_path="environments/staging.yaml", port=port or None)
    version = stub_version(tmp_path, "v1", knobs="STUB_READY_AFTER=0.3")
    _crash(state, target=target, moment=moment, port=port, version=version)
    launched = _servers(tmp_path, "v1") if target == "server" else _routers(tmp_path)
    if moment != "during":  # during: the launcher may or may not have had the time to start it
        assert len(launched) == (1 if moment == "after" else 0)

    restarted = LocalServing(state, ready_timeout_seconds=30, clock=SYSTEM_CLOCK)
    restarted.deploy(environment=environment, version=version)
    restarted.set_weights(environment=environment, model="m", weights={"v1": 100})

    servers, routers = _servers(tmp_path, "v1"), _routers(tmp_path)
    assert len(servers) == 1 and len(routers) == 1
    if moment == "after":  # adopted: the process launched before the crash is the one that serves
        assert (servers if target == "server" else routers) == launched
    router = ProcessRecord.load(state / "staging" / "router.json")
    assert router is not None and router.pid == routers[0]
    if explicit:
        assert router.port == port
    client = Client(router.port)
    try:
        assert client.infer("m") == (200, "v1")
        status, _, body = client.call("GET", "/-/routes", headers={"Authorization": f"Bearer {router.token}"})
        assert status == 200, body
        assert json.loads(body)["routes"]["m"]["versions"]["v1"]["weight"] == 100
    finally:
        client.close()


def test_a_launch_that_was_replaced_is_stopped_and_a_server_proves_itself_by_its_token(
    state: Path, tmp_path: Path
) -> None:
    environment = Environment(name="staging", spec_path="environments/staging.yaml")
    version = stub_version(tmp_path, "v1")
    backend = LocalServing(state, ready_timeout_seconds=30, clock=SYSTEM_CLOCK)
    backend.deploy(environment=environment, version=version)
    record_file = state / "staging" / "servers" / "m" / "v1" / "server.json"
    first = ProcessRecord.load(record_file)
    assert first is not None and first.pid is not None and _servers(tmp_path, "v1") == [first.pid]
    assert foreign_answer(first) is None
    impostor = dataclasses.replace(first, instance="0123456789abcdef")
    assert "not the server launched as 0123456789abcdef" in (foreign_answer(impostor) or "")

    # A later launch was recorded over the first one, which it superseded, and the controller was
    # killed before launching it: the first server is ours, but not the one the record intends.
    intent = dataclasses.replace(first, pid=None, process_start=None, instance="fedcba9876543210",
                                 superseded=(first.instance,))
    intent.save(record_file)
    restarted = LocalServing(state, ready_timeout_seconds=30, clock=SYSTEM_CLOCK)
    restarted.deploy(environment=environment, version=version)
    (server,) = _servers(tmp_path, "v1")
    assert server != first.pid and not is_alive(first.pid, first.process_start)  # a zombie at most
    relaunched = ProcessRecord.load(record_file)
    assert relaunched is not None and relaunched.pid == server
    assert relaunched.superseded == ("fedcba9876543210",)  # never found running: looked for once more
    assert [d.version for d in restarted.deployed(environment=environment, model="m")] == ["v1"]
    settled = ProcessRecord.load(record_file)
    assert settled is not None and settled.pid == server and settled.superseded == ()
