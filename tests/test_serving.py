"""Serving on the embedded home: the weighted router, LocalServing's process lifecycle, the fake.

Pinned down here:

* the router splits a model's traffic by weight (80/20 over 2,000 requests),
  new weights take effect at once, a version at weight 0 or without a route
  gets nothing, a pinned ``/versions/{v}/`` request goes to that version;
* its metrics count inference requests by environment, model, version and
  outcome, with a duration histogram; a non-2xx answer and an unreachable
  server count as errors; health probes are not counted;
* a request dropped on a pooled keep-alive connection is sent once more;
* its routes survive a ``kill -9`` and restart of the router; the admin
  routes need the token when one is set;
* :class:`LocalServing`, with a custom server command (a tiny aiohttp OIP v2
  server written by the test), deploys and returns only once the server is
  ready, sends it no traffic before ``set_weights``, is idempotent (deploy
  twice: one process), finds its servers and router again when re-created
  (a controller restart: same pids), replaces a server killed behind its
  back, reports a server that exits or never gets ready with its log tail,
  refuses to retire a version that still has traffic, and stops servers on
  retire and shutdown;
* :class:`FakeServing` keeps the same rules and counts real starts.

The real MLServer end to end is in ``test_serving_mlserver.py`` (slow).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import shlex
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.backends.local.processes import is_alive
from controller.backends.serving import ServedVersion, ServingError, check_weights
from controller.backends.serving.fake import FakeServing
from controller.backends.serving.local import LocalServing
from controller.backends.serving.router import TOKEN_ENV, VERSION_HEADER, RouteTable
from controller.backends.serving.server import free_port, http_status, is_ready
from controller.clock import SYSTEM_CLOCK
from controller.specs.types import Environment, Serving

pytestmark = pytest.mark.integration
# An OIP v2 server for one model version, honouring the custom-server contract. Test knobs:
# STUB_READY_AFTER (seconds before it answers ready), STUB_NEVER_READY, STUB_FAIL=always (500 on infer),
# STUB_FAIL=partial (500 when the input holds 6.7), STUB_TAG (echoed in every answer as "tag");
# a body containing "bad" gets 400. GET /v2/models/{name} answers the model's metadata.
STUB_SERVER = r'''
import os, sys, time
from aiohttp import web

name, version = os.environ["FLYWHEEL_MODEL_NAME"], os.environ["FLYWHEEL_MODEL_VERSION"]
tag = os.environ.get("STUB_TAG", "")
ready_after = float(os.environ.get("STUB_READY_AFTER", "0"))
never_ready = bool(os.environ.get("STUB_NEVER_READY"))
fail = os.environ.get("STUB_FAIL", "")
born = time.monotonic()
print(f"stub server {name} {version} starting", file=sys.stderr, flush=True)

def ready():
    return not never_ready and time.monotonic() - born >= ready_after

async def health(request):
    return web.json_response({}, status=200 if ready() else 503)

async def model_ready(request):
    if request.match_info["name"] != name:
        return web.json_response({"error": "no such model"}, status=404)
    return web.json_response({}, status=200 if ready() else 503)

async def infer(request):
    body = await request.read()
    if fail == "always" or (fail == "partial" and b"6.7" in body):
        return web.json_response({"error": "model raised"}, status=500)
    if b"bad" in body:
        return web.json_response({"error": "bad input"}, status=400)
    return web.json_response({"model_name": name, "model_version": version, "tag": tag, "outputs": [
        {"name": "echo", "shape": [1], "datatype": "INT64", "data": [len(body)]}]})

async def metadata(request):
    if request.match_info["name"] != name:
        return web.json_response({"error": "no such model"}, status=404)
    return web.json_response({"name": name, "versions": [version], "platform": "stub"})

app = web.Application()
app.router.add_get("/v2/models/{name}", metadata)
app.router.add_get("/v2/health/ready", health)
app.router.add_get("/v2/health/live", health)
app.router.add_get("/v2/models/{name}/ready", model_ready)
app.router.add_post("/v2/models/{name}/infer", infer)
web.run_app(app, host=os.environ.get("FLYWHEEL_HOST", "127.0.0.1"), port=int(os.environ["FLYWHEEL_PORT"]),
            print=None, access_log=None)
'''

INFER_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
).encode()


# ------------------------------------------------------------------ helpers


class Client:
    """A keep-alive HTTP client on loopback."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), data

    def infer(self, model: str, body: bytes = INFER_BODY, prefix: str = "") -> tuple[int, str]:
        status, headers, _ = self.call(
            "POST", f"{prefix}/v2/models/{model}/infer", body, {"Content-Type": "application/json"}
        )
        return status, headers.get(VERSION_HEADER, "")

    def close(self) -> None:
        self.connection.close()


def _wait(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


class Processes:
    """Processes a test starts directly; all stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stub = tmp_path / "stub_server.py"
        self.stub.write_text(STUB_SERVER)

    def start(self, argv: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / log, "ab") as out:
            proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def server(self, version: str, *, model: str = "m", **knobs: str) -> str:
        port = free_port()
        env = {"FLYWHEEL_PORT": str(port), "FLYWHEEL_MODEL_NAME": model, "FLYWHEEL_MODEL_VERSION": version}
        self.start([sys.executable, str(self.stub)], {**env, **knobs}, f"{model}-{version}.log")
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: is_ready(url, model))
        return url

    def router(self, port: int, state: Path, *, token: str = "") -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "controller.backends.serving.router", "--port", str(port),
                "--state", str(state), "--environment", "staging"]
        proc = self.start(argv, {TOKEN_ENV: token} if token else {}, "router.log")
        _wait(lambda: http_status(f"http://127.0.0.1:{port}", "/healthz") == 200)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def router(procs: Processes, tmp_path: Path) -> Iterator[Client]:
    port = free_port()
    procs.router(port, tmp_path / "routes.json")
    client = Client(port)
    try:
        yield client
    finally:
        client.close()


def put_routes(client: Client, model: str, versions: dict[str, tuple[str, int]], token: str = "") -> int:
    body = json.dumps({"versions": {v: {"url": u, "weight": w} for v, (u, w) in versions.items()}})
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    status, _, _ = client.call("PUT", f"/-/routes/{model}", body.encode(), headers)
    return status


def scrape(client: Client) -> dict[str, float]:
    """Samples of the flywheel_* metrics, keyed by :func:`series` (labels in sorted order)."""
    status, _, body = client.call("GET", "/metrics")
    assert status == 200
    samples = {}
    for line in body.decode().splitlines():
        if line.startswith("flywheel_"):
            key, value = line.rsplit(" ", 1)
            name, _, labels = key.partition("{")
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            samples[series(name, **pairs)] = float(value)
    return samples


def series(name: str, **labels: str) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# ------------------------------------------------------------------ route table


def test_smooth_weighted_round_robin_is_exact_and_interleaved() -> None:
    table = RouteTable()
    table.set("m", {"v1": ("http://a", 80), "v2": ("http://b", 20)})
    picks = [table.pick("m").version for _ in range(100)]  # type: ignore[union-attr]
    assert Counter(picks) == {"v1": 80, "v2": 20}
    assert max(len(run) for run in re.findall(r"(?:v1,)+", ",".join(picks) + ",")) // 3 <= 4
    table.set("m", {"v1": ("http://a", 0), "v2": ("http://b", 100)})
    assert {table.pick("m").version for _ in range(50)} == {"v2"}  # type: ignore[union-attr]
    table.set("m", {"v1": ("http://a", 0)})
    assert table.pick("m") is None
    assert table.pick("unknown") is None


def test_weights_must_be_percent_summing_to_100() -> None:
    assert check_weights({"v1": 80, "v2": 20}) == {"v1": 80, "v2": 20}
    assert check_weights({}) == {}
    for bad in ({"v1": 80}, {"v1": 120, "v2": -20}, {"v1": 50.0, "v2": 50}, {"v1": True, "v2": 99}):
        with pytest.raises(ServingError):
            check_weights(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ router process


def test_router_splits_traffic_by_weight(procs: Processes, router: Client) -> None:
    v1, v2 = procs.server("v1"), procs.server("v2")
    assert put_routes(router, "m", {"v1": (v1, 80), "v2": (v2, 20)}) == 200
    answers = Counter(router.infer("m") for _ in range(2000))
    assert set(answers) == {(200, "v1"), (200, "v2")}
    assert abs(answers[(200, "v1")] / 2000 - 0.8) <= 0.02


def test_router_weights_change_at_run_time(procs: Processes, router: Client) -> None:
    v1, v2 = procs.server("v1"), procs.server("v2")
    assert put_routes(router, "m", {"v1": (v1, 100), "v2": (v2, 0)}) == 200
    assert {router.infer("m") for _ in range(50)} == {(200, "v1")}  # weight 0: no traffic
    assert put_routes(router, "m", {"v1": (v1, 0), "v2": (v2, 100)}) == 200
    assert {router.infer("m") for _ in range(50)} == {(200, "v2")}
    assert put_routes(router, "m", {"v1": (v1, 50), "v2": (v2, 50)}) == 200
    assert Counter(router.infer("m") for _ in range(100)) == {(200, "v1"): 50, (200, "v2"): 50}


def test_router_without_a_route_answers_404_and_pins_versions(procs: Processes, router: Client) -> None:
    assert router.infer("m")[0] == 404
    v1, v2 = procs.server("v1"), procs.server("v2")
    assert put_routes(router, "m", {"v1": (v1, 100), "v2": (v2, 0)}) == 200
    assert router.infer("m", prefix="") == (200, "v1")
    status, headers, _ = router.call(
        "POST", "/v2/models/m/versions/v2/infer", INFER_BODY, {"Content-Type": "application/json"}
    )
    assert (status, headers[VERSION_HEADER]) == (200, "v2")
    assert router.call("POST", "/v2/models/m/versions/v9/infer", INFER_BODY)[0] == 404
    assert router.infer("other")[0] == 404
    assert router.call("GET", "/v2/models/m/ready")[0] == 200
    assert router.call("GET", "/v2/health/ready")[0] == 200


def test_router_rejects_bad_routes(router: Client) -> None:
    assert put_routes(router, "m", {"v1": ("http://127.0.0.1:1", 70)}) == 400
    assert put_routes(router, "m", {"v1": ("ftp://x", 100)}) == 400
    status, _, _ = router.call("PUT", "/-/routes/m", b"not json", {"Content-Type": "application/json"})
    assert status == 400


def test_router_metrics_count_by_outcome_and_labels(procs: Processes, router: Client) -> None:
    good, failing = procs.server("v1"), procs.server("v2", STUB_FAIL="always")
    assert put_routes(router, "m", {"v1": (good, 50), "v2": (failing, 50)}) == 200
    answers = Counter(router.infer("m") for _ in range(20))
    assert answers == {(200, "v1"): 10, (500, "v2"): 10}
    assert router.infer("m", body=b'{"bad": 1}')[0] in (400, 500)  # a 4xx counts as an error too
    router.call("GET", "/v2/models/m/ready")  # not inference: not counted
    samples = scrape(router)
    labels = {"environment": "staging", "model": "m"}
    total = "flywheel_requests_total"
    assert samples[series(total, **labels, version="v1", outcome="success")] == 10
    v1_errors = samples.get(series(total, **labels, version="v1", outcome="error"), 0)
    v2_errors = samples[series(total, **labels, version="v2", outcome="error")]
    assert v1_errors + v2_errors == 11
    assert series(total, **labels, version="v2", outcome="success") not in samples
    count = "flywheel_request_duration_seconds_count"
    assert samples[series(count, **labels, version="v1", outcome="success")] == 10
    bucket = series("flywheel_request_duration_seconds_bucket", **labels, version="v1", outcome="success",
                    le="+Inf")
    assert samples[bucket] == 10


def test_router_counts_an_unreachable_server_as_error(router: Client) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert put_routes(router, "m", {"v1": (dead, 100)}) == 200
    status, version = router.infer("m")
    assert (status, version) == (502, "v1")
    labels = {"environment": "staging", "model": "m", "version": "v1"}
    assert scrape(router)[series("flywheel_requests_total", **labels, outcome="error")] == 1


class _DroppingServer(socketserver.ThreadingTCPServer):
    """Answers every request with 200, except that it drops the first connection at its second request,
    as a server does that closes an idle keep-alive connection just as a request comes in."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _DroppingHandler)
        self.connections = 0


class _DroppingHandler(socketserver.StreamRequestHandler):
    server: _DroppingServer

    def handle(self) -> None:
        self.server.connections += 1
        first = self.server.connections == 1
        for served in itertools.count():
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                byte = self.rfile.read(1)
                if not byte:
                    return
                head += byte
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            self.rfile.read(int(length.group(1)) if length else 0)
            if first and served == 1:
                return  # close without answering
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            self.wfile.flush()


def test_router_retries_once_when_a_pooled_connection_is_dropped(router: Client) -> None:
    upstream = _DroppingServer()
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{upstream.server_address[1]}"
        assert put_routes(router, "m", {"v1": (url, 100)}) == 200
        assert router.infer("m") == (200, "v1")
        assert router.infer("m") == (200, "v1")  # dropped on the pooled connection, answered on a new one
        assert upstream.connections == 2
        labels = {"environment": "staging", "model": "m", "version": "v1"}
        samples = scrape(router)
        assert samples[series("flywheel_requests_total", **labels, outcome="success")] == 2
        assert series("flywheel_requests_total", **labels, outcome="error") not in samples
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join(5)


def test_router_routes_survive_a_restart(procs: Processes, tmp_path: Path) -> None:
    v1, v2 = procs.server("v1"), procs.server("v2")
    port, state = free_port(), tmp_path / "state" / "routes.json"
    first = procs.router(port, state)
    client = Client(port)
    assert put_routes(client, "m", {"v1": (v1, 80), "v2": (v2, 20)}) == 200
    client.close()
    procs.stop(first, signal.SIGKILL)
    procs.router(port, state)
    client = Client(port)
    try:
        _, _, body = client.call("GET", "/-/routes")
        routes = json.loads(body)["routes"]
        assert routes["m"]["versions"] == {"v1": {"url": v1, "weight": 80}, "v2": {"url": v2, "weight": 20}}
        assert Counter(client.infer("m") for _ in range(100)) == {(200, "v1"): 80, (200, "v2"): 20}
    finally:
        client.close()


def test_router_admin_needs_the_token(procs: Processes, tmp_path: Path) -> None:
    port = free_port()
    procs.router(port, tmp_path / "routes.json", token="s3cret")
    client = Client(port)
    try:
        url = f"http://127.0.0.1:{free_port()}"
        assert put_routes(client, "m", {"v1": (url, 100)}) == 401
        assert put_routes(client, "m", {"v1": (url, 100)}, token="wrong") == 401
        assert put_routes(client, "m", {"v1": (url, 100)}, token="s3cret") == 200
        assert client.call("GET", "/-/routes")[0] == 401
    finally:
        client.close()


# ------------------------------------------------------------------ LocalServing


ENV = Environment(name="staging", spec_path="environments/staging.yaml")


def stub_version(tmp_path: Path, label: str, *, model: str = "m", knobs: str = "") -> ServedVersion:
    """A version served by the stub server (``knobs``: ``NAME=value`` words put before the command)."""
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / "serve.py").write_text(STUB_SERVER)
    artifact = tmp_path / "artifacts" / model / label
    artifact.mkdir(parents=True, exist_ok=True)
    command = f"{knobs} {shlex.quote(sys.executable)} serve.py".strip()
    return ServedVersion(
        model=model, version=label, artifact_uri=str(artifact), source_uri=str(source),
        serving=Serving(runtime="custom", command=command),
    )


def server_pid(backend: LocalServing, label: str, model: str = "m") -> int:
    """The pid of the running server of ``label``, from the backend's own status (pids are its business)."""
    (status,) = backend.status(ENV.name)
    pids = {s.version: s.pid for s in status.servers if s.model == model and s.running}
    pid = pids[label]
    assert pid is not None
    return pid


def test_deploy_health_gates_and_routes_only_after_set_weights(serving: LocalServing, tmp_path: Path) -> None:
    version = stub_version(tmp_path, "v1", knobs="STUB_READY_AFTER=0.6")
    started = time.monotonic()
    serving.deploy(environment=ENV, version=version)
    assert time.monotonic() - started >= 0.6
    (deployed,) = serving.deployed(environment=ENV, model="m")
    assert (deployed.version, deployed.weight) == ("v1", 0)
    assert is_ready(deployed.url, "m")  # ready when deploy returned
    endpoint = serving.endpoint(environment=ENV, model="m")
    port = int(endpoint.split(":")[2].split("/")[0])
    client = Client(port)
    try:
        assert client.infer("m")[0] == 404  # deployed, but no traffic yet
        serving.set_weights(environment=ENV, model="m", weights={"v1": 100})
        assert client.infer("m") == (200, "v1")
        assert endpoint.endswith("/v2/models/m")
        assert serving.metrics_url(environment=ENV) == f"http://127.0.0.1:{port}/metrics"
        labels = {"environment": "staging", "model": "m", "version": "v1", "outcome": "success"}
        assert scrape(client)[series("flywheel_requests_total", **labels)] == 1
    finally:
        client.close()
    assert serving.deployed(environment=ENV, model="m")[0].weight == 100


def test_deploy_twice_and_after_a_controller_restart_reuses_the_process(
    serving: LocalServing, tmp_path: Path
) -> None:
    version = stub_version(tmp_path, "v1")
    serving.deploy(environment=ENV, version=version)
    pid = server_pid(serving, "v1")
    router_url = serving.endpoint(environment=ENV, model="m")
    serving.deploy(environment=ENV, version=version)
    serving.set_weights(environment=ENV, model="m", weights={"v1": 100})
    serving.set_weights(environment=ENV, model="m", weights={"v1": 100})
    assert server_pid(serving, "v1") == pid
    assert len(list((tmp_path / "serving" / "staging" / "servers" / "m").iterdir())) == 1

    # the controller came back
    restarted = LocalServing(tmp_path / "serving", ready_timeout_seconds=20, clock=SYSTEM_CLOCK)
    restarted.deploy(environment=ENV, version=version)
    assert server_pid(restarted, "v1") == pid
    assert restarted.endpoint(environment=ENV, model="m") == router_url
    assert [(d.version, d.weight) for d in restarted.deployed(environment=ENV, model="m")] == [("v1", 100)]
    port = int(router_url.split(":")[2].split("/")[0])
    client = Client(port)
    try:
        assert client.infer("m") == (200, "v1")
    finally:
        client.close()


def test_deploy_waits_for_a_server_still_starting_after_a_restart(
    serving: LocalServing, tmp_path: Path
) -> None:
    version = stub_version(tmp_path, "v1", knobs="STUB_READY_AFTER=1.5")
    record = tmp_path / "serving" / "staging" / "servers" / "m" / "v1" / "server.json"
    # The first controller starts the server, then "crashes" while it waits for readiness.
    crashed = threading.Thread(target=serving.deploy, kwargs={"environment": ENV, "version": version})
    crashed.start()
    _wait(lambda: record.exists() and json.loads(record.read_text())["pid"] is not None)  # past the intent
    pid = json.loads(record.read_text())["pid"]
    restarted = LocalServing(tmp_path / "serving", ready_timeout_seconds=20, clock=SYSTEM_CLOCK)
    restarted.deploy(environment=ENV, version=version)  # waits for that server; starts none
    assert is_ready(restarted.deployed(environment=ENV, model="m")[0].url, "m")
    assert server_pid(restarted, "v1") == pid
    crashed.join(10)


def test_a_killed_server_is_replaced(serving: LocalServing, tmp_path: Path) -> None:
    version = stub_version(tmp_path, "v1")
    serving.deploy(environment=ENV, version=version)
    pid = server_pid(serving, "v1")
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not is_alive(pid, None))
    assert serving.deployed(environment=ENV, model="m") == ()
    serving.deploy(environment=ENV, version=version)
    assert server_pid(serving, "v1") != pid


def test_a_server_that_exits_is_reported_with_its_log(serving: LocalServing, tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    version = ServedVersion(
        model="m", version="v1", artifact_uri=str(artifact),
        serving=Serving(runtime="custom", command="echo cannot load model.joblib >&2; exit 3"),
    )
    with pytest.raises(ServingError, match=r"(?s)exited before it was ready.*cannot load model\.joblib"):
        serving.deploy(environment=ENV, version=version)
    assert serving.deployed(environment=ENV, model="m") == ()


def test_a_server_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    backend = LocalServing(
        tmp_path / "serving", ready_timeout_seconds=1.0, stop_grace_seconds=2, clock=SYSTEM_CLOCK
    )
    try:
        version = stub_version(tmp_path, "v1", knobs="STUB_NEVER_READY=1")
        with pytest.raises(ServingError, match=r"(?s)not ready after 1s.*stub server m v1 starting"):
            backend.deploy(environment=ENV, version=version)
        assert backend.deployed(environment=ENV, model="m") == ()
        with pytest.raises(ServingError, match="not deployed"):
            backend.set_weights(environment=ENV, model="m", weights={"v1": 100})
    finally:
        backend.shutdown()


def test_retire_stops_the_server_and_refuses_while_it_has_traffic(
    serving: LocalServing, tmp_path: Path
) -> None:
    serving.deploy(environment=ENV, version=stub_version(tmp_path, "v1"))
    serving.deploy(environment=ENV, version=stub_version(tmp_path, "v2"))
    serving.set_weights(environment=ENV, model="m", weights={"v1": 80, "v2": 20})
    old = server_pid(serving, "v1")
    with pytest.raises(ServingError, match="still gets 80%"):
        serving.retire(environment=ENV, model="m", version="v1")
    serving.set_weights(environment=ENV, model="m", weights={"v1": 0, "v2": 100})
    serving.retire(environment=ENV, model="m", version="v1")
    serving.retire(environment=ENV, model="m", version="v1")  # again: nothing to do
    assert not is_alive(old, None)
    assert [(d.version, d.weight) for d in serving.deployed(environment=ENV, model="m")] == [("v2", 100)]
    with pytest.raises(ServingError, match="not deployed"):
        serving.set_weights(environment=ENV, model="m", weights={"v1": 50, "v2": 50})
    with pytest.raises(ServingError, match="sum to 100"):
        serving.set_weights(environment=ENV, model="m", weights={"v2": 50})


def test_shutdown_stops_servers_and_router(tmp_path: Path) -> None:
    backend = LocalServing(tmp_path / "serving", ready_timeout_seconds=20, clock=SYSTEM_CLOCK)
    backend.deploy(environment=ENV, version=stub_version(tmp_path, "v1"))
    server = server_pid(backend, "v1")
    router = json.loads((tmp_path / "serving" / "staging" / "router.json").read_text())["pid"]
    backend.shutdown()
    assert not is_alive(server, None)
    assert not is_alive(router, None)
    assert backend.deployed(environment=ENV, model="m") == ()


def test_names_that_are_not_path_safe_are_refused(serving: LocalServing, tmp_path: Path) -> None:
    with pytest.raises(ServingError, match="not a valid"):
        serving.deploy(environment=ENV, version=stub_version(tmp_path, "../v1"))


# ------------------------------------------------------------------ the fake


def test_fake_serving_is_idempotent_and_keeps_the_rules(tmp_path: Path) -> None:
    fake = FakeServing()
    version = stub_version(tmp_path, "v1")
    fake.deploy(environment=ENV, version=version)
    fake.deploy(environment=ENV, version=version)
    assert (fake.count("deploy", version="v1"), fake.starts) == (2, 1)
    with pytest.raises(ServingError):
        fake.set_weights(environment=ENV, model="m", weights={"v1": 50, "v2": 50})
    fake.set_weights(environment=ENV, model="m", weights={"v1": 100})
    fake.set_weights(environment=ENV, model="m", weights={"v1": 100})
    assert (fake.traffic("staging", "m"), fake.weight_changes) == ({"v1": 100}, 1)
    with pytest.raises(ServingError):
        fake.retire(environment=ENV, model="m", version="v1")
    fake.fail_deploy.add(("m", "v2"))
    with pytest.raises(ServingError):
        fake.deploy(environment=ENV, version=stub_version(tmp_path, "v2"))
    fake.set_weights(environment=ENV, model="m", weights={})
    fake.retire(environment=ENV, model="m", version="v1")
    fake.retire(environment=ENV, model="m", version="v1")
    assert (fake.stops, fake.deployed(environment=ENV, model="m")) == (1, ())
