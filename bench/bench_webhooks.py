"""Benchmark of the GitHub webhook receiver: sustained signed deliveries per second into a SQLite inbox.

Starts ``webhooks.app.serve`` (uvicorn, as ``flywheel serve`` runs it) in a
child process on a loopback port, with a SQLite store (WAL) in a temporary
directory. This process is the load generator, and nothing else: it signs
the payload once, then keeps ``--concurrency`` keep-alive connections
(aiohttp, on uvloop when it is installed) busy back to back with signed
~28 KB ``pull_request`` deliveries (the real reference payload, or a
generated one of that size without it); 10% of them repeat the id of an
earlier delivery.

After ``--warmup`` seconds it measures a fixed window of ``--duration``
seconds: the sustained rate is the deliveries answered inside the window
divided by its length, and p50/p99 are the client's own timings (from
sending a request to reading the end of its answer) of those deliveries.
It reports the duplicates sent and the ones answered ``200 duplicate``,
checks that every answer was 2xx and that the inbox holds exactly one row
per unique delivery id sent, and shows the CPU time the receiver, the load
generator and everything else on the machine used during the window, so a
busy shared machine is visible in the figures. Targets: >= 1,000
deliveries/s sustained and p99 < 50 ms.

    python bench/bench_webhooks.py [--duration S] [--warmup S] [--concurrency C]
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
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from controller.clock import SYSTEM_CLOCK
from webhooks.github import sign

SECRET = "bench secret"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "github-webhooks"
TARGET_RATE = 1000.0
TARGET_P99_MS = 50.0
DUPLICATE_SHARE = 0.10
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def payload() -> bytes:
    real = REFERENCE / "pull_request.opened.payload.json"
    if real.is_file():
        return real.read_bytes()
    repo = {"id": 1, "full_name": "octo/models"}
    filler = {
        "action": "opened",
        "number": 1,
        "pull_request": {
            "number": 1,
            "state": "open",
            "merged": False,
            "merged_at": None,
            "updated_at": "2024-05-01T12:00:00Z",
            "user": {"login": "octocat"},
            "body": "x" * 27_000,
            "head": {"ref": "tune", "sha": "a" * 40, "repo": repo},
            "base": {"ref": "main", "repo": repo},
        },
    }
    return json.dumps(filler).encode()


def serve_child(state: str, port: int) -> None:
    from controller.backends.store import open_store
    from controller.settings import WebhookSettings
    from webhooks.app import serve

    serve(
        WebhookSettings(github_secrets=(SECRET,)),
        open_store(state, clock=SYSTEM_CLOCK),
        port=port,
        log_level="warning",
        access_log=False,
    )


# ------------------------------------------------------------------ CPU accounting (Linux /proc)


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far: by the whole machine (busy), the receiver process and this process."""

    machine_busy: float
    server: float
    client: float

    @classmethod
    def take(cls, server_pid: int) -> CpuSample | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = [int(value) for value in fields]
            idle = ticks[3] + ticks[4]  # idle + iowait
            stat = Path(f"/proc/{server_pid}/stat").read_text()
            server_ticks = stat[stat.rindex(")") + 2 :].split()
            server = (int(server_ticks[11]) + int(server_ticks[12])) / _TICK  # utime + stime
        except (OSError, ValueError, IndexError):
            return None
        times = os.times()
        return cls((sum(ticks[:8]) - idle) / _TICK, server, times.user + times.system)


# ------------------------------------------------------------------ load


@dataclass
class Load:
    """What was sent and answered over the whole run, and what was answered inside the window."""

    sent_ids: list[str] = field(default_factory=list)
    unique_ids: set[str] = field(default_factory=set)
    duplicates_sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    window_latencies: list[float] = field(default_factory=list)
    window_statuses: Counter[int] = field(default_factory=Counter)
    window_start: float = 0.0
    window_end: float = 0.0
    cpu: tuple[CpuSample | None, CpuSample | None] = (None, None)


async def run(url: str, body: bytes, *, concurrency: int, warmup: float, duration: float, pid: int) -> Load:
    rng = random.Random(7)
    signature = sign(body, SECRET)
    load = Load()

    def next_id() -> str:
        if load.sent_ids and rng.random() < DUPLICATE_SHARE:
            load.duplicates_sent += 1
            return rng.choice(load.sent_ids)
        delivery = str(uuid.UUID(int=rng.getrandbits(128)))
        load.sent_ids.append(delivery)
        load.unique_ids.add(delivery)
        return delivery

    async def worker(session: aiohttp.ClientSession, stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            headers = {
                "X-GitHub-Event": "pull_request",
                "X-GitHub-Delivery": next_id(),
                "X-Hub-Signature-256": signature,
                "Content-Type": "application/json",
            }
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
            ended = time.perf_counter()
            load.statuses[response.status] += 1
            if load.window_start <= ended <= load.window_end:
                load.window_latencies.append(ended - started)
                load.window_statuses[response.status] += 1

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, load.window_start - time.perf_counter()))
        first = CpuSample.take(pid)
        await asyncio.sleep(max(0.0, load.window_end - time.perf_counter()))
        load.cpu = (first, CpuSample.take(pid))

    # keep-alive: one connection per worker, opened before the clock starts
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        ping = {
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": "warm-up",
            "X-Hub-Signature-256": sign(b"{}", SECRET),
        }
        async with session.post(url, data=b"{}", headers=ping) as response:
            await response.read()
            if response.status != 202:
                raise RuntimeError(f"the receiver answered the warm-up ping {response.status}")
        began = time.perf_counter()
        load.window_start = began + warmup
        load.window_end = load.window_start + duration
        await asyncio.gather(sample_cpu(), *(worker(session, load.window_end) for _ in range(concurrency)))
    return load


def run_loop(main: Coroutine[Any, Any, Load]) -> tuple[Load, str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main), "asyncio"
    return uvloop.run(main), "uvloop"


def wait_for_port(port: int, child: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() > deadline or child.poll() is not None:
                return False
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the window")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--serve", nargs=2, metavar=("STATE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args.serve[0], int(args.serve[1]))
        return 0
    duration = min(max(args.duration, 1.0), 600.0)
    warmup = min(max(args.warmup, 0.0), 60.0)
    concurrency = min(max(args.concurrency, 1), 256)
    body = payload()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        child = subprocess.Popen([sys.executable, __file__, "--serve", tmp, str(port)], env=os.environ.copy())
        try:
            if not wait_for_port(port, child):
                print("the server did not start", file=sys.stderr)
                return 2
            url = f"http://127.0.0.1:{port}/hooks/github"
            load, loop_name = run_loop(
                run(url, body, concurrency=concurrency, warmup=warmup, duration=duration, pid=child.pid)
            )
        finally:
            child.terminate()
            child.wait(10)
        with sqlite3.connect(Path(tmp) / "state.db") as db:
            rows = db.execute(
                "SELECT count(*) FROM inbox_events WHERE kind = 'pull_request.opened'"
            ).fetchone()[0]

    answered = len(load.window_latencies)
    rate = answered / duration
    quantiles = statistics.quantiles(load.window_latencies, n=100) if answered >= 2 else [float("nan")] * 99
    p50, p90, p99 = quantiles[49] * 1000, quantiles[89] * 1000, quantiles[98] * 1000
    worst = max(load.window_latencies, default=float("nan")) * 1000
    accepted, duplicates = load.statuses.get(202, 0), load.statuses.get(200, 0)
    sent = load.statuses.total()
    print(
        f"payload {len(body):,} bytes, concurrency {concurrency} keep-alive connections, "
        f"SQLite WAL inbox, client loop {loop_name}"
    )
    print(
        f"sustained: {rate:,.0f} deliveries/s ({answered:,} answered in a {duration:.0f} s window "
        f"after {warmup:.0f} s warm-up; target >= {TARGET_RATE:,.0f})"
    )
    print(
        f"latency (client-side): p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms "
        f"(target p99 < {TARGET_P99_MS:.0f} ms)"
    )
    print(
        f"answers, whole run: {dict(sorted(load.statuses.items()))}; in the window: "
        f"{dict(sorted(load.window_statuses.items()))}"
    )
    print(
        f"duplicates: {load.duplicates_sent:,} sent, {duplicates:,} dropped (200); "
        f"unique ids {len(load.unique_ids):,} = accepted {accepted:,} = inbox rows {rows:,}"
    )
    first, last = load.cpu
    if first is not None and last is not None:
        server, client = last.server - first.server, last.client - first.client
        other = max(0.0, (last.machine_busy - first.machine_busy) - server - client)
        print(
            f"CPU in the window (of {os.cpu_count()} cores x {duration:.0f} s): receiver {server:.1f} s "
            f"({server / duration:.0%} of a core, {server / max(answered, 1) * 1e6:.0f} us/delivery), "
            f"load generator {client:.1f} s ({client / duration:.0%}), other processes {other:.1f} s "
            f"({other / duration:.0%})"
        )
    ok = (
        rate >= TARGET_RATE
        and p99 < TARGET_P99_MS
        and set(load.statuses) <= {200, 202}
        and accepted == len(load.unique_ids) == rows
        and duplicates == load.duplicates_sent
        and sent == len(load.sent_ids) + load.duplicates_sent
    )
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
