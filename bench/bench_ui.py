"""The dashboard's model list with 10,000 models: time to render its first and a middle page.

Usage: python bench/bench_ui.py [--models N] [--repeat R] [--limit L] [--state DIR]

Builds a store of N models (default 10,000) under a temporary directory (or
DIR, reused when it already holds them): each with one to three versions,
and every tenth with a rollout that serves its latest version in production
(so a row reads the registry, the rollouts and the serving history as
``flywheel models`` does). It then asks the dashboard's app (through
Starlette's test client, in process: no network) for the first page of the
model list and for the page in the middle, L rows each (default 50),
R times each (default 20), and prints every page's median and worst
wall-clock time, with the CPU time beside it (the machine is shared).
Target: under 300 ms per page. Not run in CI.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from starlette.testclient import TestClient

from controller.backends.store import open_store
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.ui import create_app

TARGET_SECONDS = 0.3


def build(store: SqlStore, models: int) -> None:
    """``models`` models with 1-3 versions each; every tenth rolled out to production."""
    if store.page_models(limit=1).total >= models:
        return
    for n in range(models):
        name = f"model-{n:05d}"
        with store.transaction():
            for version in range(1 + n % 3):
                run = store.create_run(
                    model=name, ref="main", commit=f"{n:032d}{version:08d}", cache_key=f"{n}/{version}"
                )
                store.register_version(
                    model=name,
                    run_id=run.id,
                    commit=run.commit,
                    artifact_digest=f"sha256:{n:064d}",
                    artifact_uri=f"/artifacts/{name}/{version}",
                    environment_hash="sha256:env",
                    metrics={"accuracy": 0.9},
                )
            if n % 10 == 0:
                latest = 1 + n % 3
                store.create_rollout(model=name, version=latest, stages=("production",), state="succeeded")
                store.record_serving(environment="production", model=name, version=latest, weight=100)


def timed(client: TestClient, url: str, repeat: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        answer = client.get(url)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if answer.status_code != 200 or "model-" not in answer.text:
            raise SystemExit(f"{url} answered {answer.status_code}")
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--state", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        state = args.state or Path(scratch) / "state"
        store = open_store(state, clock=SYSTEM_CLOCK)
        try:
            started = time.perf_counter()
            build(store, args.models)
            print(f"store of {args.models} models ready in {time.perf_counter() - started:.1f} s ({state})")
            client = TestClient(create_app(models=store, history=store, clock=SYSTEM_CLOCK))
            client.get("/")  # templates compiled, connections opened
            middle = (args.models // 2 // args.limit) * args.limit
            worst = 0.0
            for label, url in (
                ("first page", f"/?limit={args.limit}"),
                ("middle page", f"/?limit={args.limit}&offset={middle}"),
                ("middle page by -latest", f"/?limit={args.limit}&offset={middle}&sort=-latest"),
                ("search 'model-0999'", f"/?limit={args.limit}&q=model-0999"),
            ):
                walls, cpus = timed(client, url, args.repeat)
                median = statistics.median(walls)
                worst = max(worst, median)
                print(
                    f"{label:<24} median {median * 1000:7.1f} ms  max {max(walls) * 1000:7.1f} ms  "
                    f"cpu median {statistics.median(cpus) * 1000:7.1f} ms  ({args.repeat} runs)"
                )
            verdict = "meets" if worst < TARGET_SECONDS else "MISSES"
            print(
                f"{verdict} the target of {TARGET_SECONDS * 1000:.0f} ms per page "
                f"(worst median {worst * 1000:.1f} ms)"
            )
        finally:
            store.close()


if __name__ == "__main__":
    main()
