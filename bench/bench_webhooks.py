"""Benchmark of the GitHub webhook receiver: sustained signed deliveries per second into a SQLite inbox.

Starts ``webhooks.app.serve`` (uvicorn) in a child process on a loopback
port, with a SQLite store (WAL) in a temporary directory, then sends N signed
``pull_request`` deliveries of a real ~28 KB payload (a generated one of that
size without the reference data) over keep-alive connections with some
concurrency; 10% of them repeat an earlier delivery id. Prints deliveries/s,
p50/p99 latency, and checks that the inbox holds exactly one row per unique
id. Targets: >= 1,000 deliveries/s and p99 < 50 ms.

    python bench/bench_webhooks.py [--deliveries N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from webhooks.github import sign

SECRET = "bench secret"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "github-webhooks"
TARGET_RATE = 1000.0
TARGET_P99_MS = 50.0


def payload() -> bytes:
    real = REFERENCE / "pull_request.opened.payload.json"
    if real.is_file():
        return real.read_bytes()
    filler = {
        "action": "opened",
        "number": 1,
        "pull_request": {"body": "x" * 27_000, "head": {"sha": "a" * 40}},
    }
    return json.dumps(filler).encode()


def serve_child(state: str, port: int) -> None:
    from controller.backends.store import open_store
    from webhooks.app import serve
    from webhooks.settings import WebhookSettings

    serve(
        WebhookSettings(github_secrets=(SECRET,)),
        open_store(state),
        port=port,
        log_level="warning",
        access_log=False,
    )


async def run(
    url: str, body: bytes, deliveries: int, concurrency: int
) -> tuple[float, list[float], dict[int, int]]:
    rng = random.Random(7)
    ids: list[str] = []
    for _ in range(deliveries):
        ids.append(
            rng.choice(ids) if ids and rng.random() < 0.10 else str(uuid.UUID(int=rng.getrandbits(128)))
        )
    signature = sign(body, SECRET)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[str] = asyncio.Queue()
    for delivery in ids:
        queue.put_nowait(delivery)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            delivery = queue.get_nowait()
            headers = {
                "X-GitHub-Event": "pull_request",
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signature,
                "Content-Type": "application/json",
            }
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
            latencies.append(time.perf_counter() - started)
            statuses[response.status] = statuses.get(response.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)  # keep-alive, one connection per worker
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = {
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": "warm-up",
            "X-Hub-Signature-256": sign(b"{}", SECRET),
        }
        async with session.post(url, data=b"{}", headers=warm) as response:
            await response.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--serve", nargs=2, metavar=("STATE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args.serve[0], int(args.serve[1]))
        return 0
    deliveries = max(1, min(args.deliveries, 100_000))
    body = payload()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        child = subprocess.Popen([sys.executable, __file__, "--serve", tmp, str(port)], env=os.environ.copy())
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or child.poll() is not None:
                        print("the server did not start", file=sys.stderr)
                        return 2
                    time.sleep(0.05)
            url = f"http://127.0.0.1:{port}/hooks/github"
            elapsed, latencies, statuses = asyncio.run(run(url, body, deliveries, args.concurrency))
        finally:
            child.terminate()
            child.wait(10)
        with sqlite3.connect(Path(tmp) / "state.db") as db:
            rows = db.execute(
                "SELECT count(*) FROM inbox_events WHERE kind = 'pull_request.opened'"
            ).fetchone()[0]
    rate = deliveries / elapsed
    quantiles = statistics.quantiles(latencies, n=100)
    p50, p99 = quantiles[49] * 1000, quantiles[98] * 1000
    accepted, duplicates = statuses.get(202, 0), statuses.get(200, 0)
    print(
        f"payload {len(body):,} bytes, {deliveries:,} deliveries, concurrency {args.concurrency}, SQLite WAL"
    )
    print(f"answers: {statuses}")
    print(f"sustained: {rate:,.0f} deliveries/s over {elapsed:.2f} s (target >= {TARGET_RATE:,.0f})")
    print(f"latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms (target p99 < {TARGET_P99_MS:.0f} ms)")
    print(
        f"duplicates dropped: {duplicates:,}; inbox rows {rows:,} = accepted {accepted:,}: {rows == accepted}"
    )
    ok = (
        rate >= TARGET_RATE
        and p99 < TARGET_P99_MS
        and rows == accepted
        and accepted + duplicates == deliveries
    )
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
