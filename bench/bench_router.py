"""Benchmark the embedded home's weighted router: latency it adds over calling a model server directly.

Starts, on loopback only, one model server and the environment's router
through :class:`controller.backends.serving.local.LocalServing` (exactly as the
controller does), routes 100% of the model's traffic to the server, then sends
bounded numbers of OIP v2 ``/infer`` requests:

* sequentially over one keep-alive connection, alternating blocks straight to
  the server and through the router (so noise from other load on the machine
  hits both alike), reporting p50/p99 latency and throughput of each;
* with some concurrency (an aiohttp client, ``--concurrency`` requests in
  flight), reporting throughput and latency of each.

It ends with the p50 latency the router adds in the sequential runs and
PASS/MISS against the target of under 1 ms.

The server is a minimal aiohttp OIP v2 server run as a ``custom`` runtime (so
the figure is the router's own overhead), or with ``--mlserver`` the real
MLServer serving specs/iris (trained here; its virtualenv is built or reused
from the VenvCache under ``$FLYWHEEL_VENV_CACHE`` or ``~/.cache/flywheel/venvs``).

Run: ``python bench/bench_router.py [--requests N] [--concurrency C] [--mlserver]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from controller.backends.local.venvs import VenvCache
from controller.backends.python_env import PythonEnvironment
from controller.backends.serving import ServedVersion
from controller.backends.serving.local import LocalServing
from controller.clock import SYSTEM_CLOCK
from controller.settings import default_venv_cache
from controller.specs.types import Environment, Serving

ROOT = Path(__file__).resolve().parents[1]
TARGET_ADDED_P50_MS = 1.0

FAST_SERVER = r'''
import os
from aiohttp import web

name, version = os.environ["FLYWHEEL_MODEL_NAME"], os.environ["FLYWHEEL_MODEL_VERSION"]
answer = ('{"model_name":"%s","model_version":"%s","outputs":[{"name":"predict","shape":[2,1],'
          '"datatype":"INT64","data":[0,2]}]}' % (name, version)).encode()

async def ready(request):
    return web.Response(body=b"{}", content_type="application/json")

async def infer(request):
    await request.read()
    return web.Response(body=answer, content_type="application/json")

app = web.Application()
app.router.add_get("/v2/health/ready", ready)
app.router.add_get("/v2/models/{name}/ready", ready)
app.router.add_post("/v2/models/{name}/infer", infer)
web.run_app(app, host=os.environ["FLYWHEEL_HOST"], port=int(os.environ["FLYWHEEL_PORT"]),
            print=None, access_log=None)
'''

BODY = json.dumps(
    {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                 "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}
).encode()
HEADERS = {"Content-Type": "application/json"}


def _fast_version(work: Path) -> ServedVersion:
    (work / "src").mkdir()
    (work / "src" / "serve.py").write_text(FAST_SERVER)
    (work / "artifact").mkdir()
    return ServedVersion(
        model="bench", version="v1", artifact_uri=str(work / "artifact"), source_uri=str(work / "src"),
        serving=Serving(runtime="custom", command=f"{shlex.quote(sys.executable)} serve.py"),
    )


def _iris_version(work: Path) -> ServedVersion:
    iris = ROOT / "specs" / "iris"
    (work / "params.json").write_text(json.dumps({"C": 1.0, "max_iter": 200, "test_size": 0.3, "seed": 7}))
    (work / "work").mkdir()
    env = {**os.environ, "FLYWHEEL_PARAMS": str(work / "params.json"), "FLYWHEEL_WORKDIR": str(work / "work"),
           "FLYWHEEL_MODEL_DIR": str(work / "model"), "FLYWHEEL_METRICS": str(work / "metrics.json")}
    subprocess.run([sys.executable, "train.py"], cwd=iris, env=env, check=True, capture_output=True)
    return ServedVersion(
        model="bench", version="v1", artifact_uri=str(work / "model"), serving=Serving(runtime="sklearn"),
        environment=PythonEnvironment(requirements=(iris / "requirements.txt").read_text(), python="3.11"),
    )


def _sequential(port: int, path: str, count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            connection.request("POST", path, body=BODY, headers=HEADERS)
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise SystemExit(f"POST {path} on port {port} answered {response.status}")
    finally:
        connection.close()
    return latencies


async def _concurrent(url: str, count: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    remaining = count
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(url, data=BODY, headers=HEADERS) as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"POST {url} answered {response.status}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _row(label: str, latencies: list[float], elapsed: float) -> str:
    p50, p99 = _percentile(latencies, 50) * 1e3, _percentile(latencies, 99) * 1e3
    return f"  {label:<28} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   {len(latencies) / elapsed:8.0f} req/s"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement (max 50000)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks in the sequential runs")
    parser.add_argument("--mlserver", action="store_true", help="serve specs/iris with MLServer")
    args = parser.parse_args()
    count = max(100, min(args.requests, 50_000))
    concurrency = max(1, min(args.concurrency, 256))

    with tempfile.TemporaryDirectory(prefix="flywheel-bench-router-") as tmp:
        work = Path(tmp)
        venvs = VenvCache(default_venv_cache())
        serving = LocalServing(work / "state", venvs=venvs, ready_timeout_seconds=300, clock=SYSTEM_CLOCK)
        environment = Environment(name="bench", spec_path="environments/bench.yaml")
        try:
            version = _iris_version(work) if args.mlserver else _fast_version(work)
            started = time.perf_counter()
            serving.deploy(environment=environment, version=version)
            print(f"server ({'MLServer' if args.mlserver else 'aiohttp stub'}) and router ready in "
                  f"{time.perf_counter() - started:.2f}s")
            serving.set_weights(environment=environment, model="bench", weights={"v1": 100})
            (deployed,) = serving.deployed(environment=environment, model="bench")
            direct_port = int(deployed.url.rsplit(":", 1)[1])
            router_url = serving.endpoint(environment=environment, model="bench") + "/infer"
            router_port = int(router_url.split(":")[2].split("/")[0])
            path = "/v2/models/bench/infer"

            for port in (direct_port, router_port):  # warm up both paths
                _sequential(port, path, 200)
            direct: list[float] = []
            routed: list[float] = []
            block = max(1, count // args.blocks)
            elapsed = {"direct": 0.0, "router": 0.0}
            for _ in range(args.blocks):
                for name, port, into in (("direct", direct_port, direct), ("router", router_port, routed)):
                    t0 = time.perf_counter()
                    into.extend(_sequential(port, path, block))
                    elapsed[name] += time.perf_counter() - t0
            print(f"sequential, one keep-alive connection, {len(direct)} requests each:")
            print(_row("straight to the server", direct, elapsed["direct"]))
            print(_row("through the router", routed, elapsed["router"]))

            print(f"concurrent, {concurrency} in flight, {count} requests each:")
            for label, url in (("straight to the server", f"{deployed.url}{path}"),
                               ("through the router", router_url)):
                latencies, took = asyncio.run(_concurrent(url, count, concurrency))
                print(_row(label, latencies, took))

            added = (statistics.median(routed) - statistics.median(direct)) * 1e3
            verdict = "PASS" if added < TARGET_ADDED_P50_MS else "MISS"
            print(f"added p50 latency through the router: {added:.3f} ms "
                  f"(target < {TARGET_ADDED_P50_MS:g} ms): {verdict}")
            return 0 if verdict == "PASS" else 1
        finally:
            serving.shutdown()


if __name__ == "__main__":
    sys.exit(main())
