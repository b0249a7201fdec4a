"""What an idle controller costs: 1,000 models with triggers, no work to do, at the default intervals.

Run from the repository root: ``python bench/bench_idle.py [--models N] [--seconds S] [--warmup S]``.

It writes a git repository of N models (default 1,000), each the example
iris spec with ``triggers.schedule`` (``0 3 * * 1``) and
``triggers.dataChange`` on a local CSV file of its own, builds the controller
``flywheel run`` builds (its runners replaced by the fake one, so the first
pass over main trains nothing for real, and a fake serving backend), and runs
its loop (``controller.app._loop``, at the default ``--interval`` and tick)
in a thread. After the warm-up (the first pass over every model and the
first read of every data input, default 20 s), it measures the process's CPU
seconds (``resource.getrusage``: every thread) per wall-clock second over S
seconds (default 30), and prints it as a percent of one core. Target: < 2%.
The data checks happen every ``FLYWHEEL_DATA_CHECK_SECONDS`` (300 s by
default), so a 30 s window holds at most one round of them, and usually none.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.app import _loop, build_controller  # noqa: E402
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep  # noqa: E402
from controller.backends.serving.fake import FakeServing  # noqa: E402
from controller.settings import ControllerSettings, Settings  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def generate(repo: Path, data: Path, models: int) -> None:
    template = (ROOT / "specs/iris/model.yaml").read_text()
    for path in ("policies/default.yaml", "environments/staging.yaml", "environments/production.yaml"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text((ROOT / path).read_text())
    data.mkdir(parents=True, exist_ok=True)
    for i in range(models):
        name = f"model-{i:04d}"
        csv = data / f"{name}.csv"
        csv.write_text(f"x,y\n{i},0\n")
        spec = template.replace("name: iris\n", f"name: {name}\n", 1)
        fresh = f'      version: "1"\n    - name: fresh\n      uri: {csv.as_uri()}\n'
        spec = spec.replace('      version: "1"\n', fresh, 1)
        spec += '  triggers:\n    dataChange: true\n    schedule: "0 3 * * 1"\n'
        base = repo / "specs" / name
        base.mkdir(parents=True)
        (base / "model.yaml").write_text(spec)
        for code in ("train.py", "evaluate.py", "requirements.txt"):
            source = ROOT / "specs/iris" / code
            if source.exists():
                (base / code).write_text(source.read_text())
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    commands = (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "models"])
    for command in commands:
        subprocess.run(command, cwd=repo, check=True, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=20.0, help="at least this long before measuring")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flywheel-idle-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        generate(work / "repo", work / "data", args.models)
        print(f"generated {args.models} models with schedule and dataChange triggers "
              f"in {time.perf_counter() - started:.1f} s")
        settings = Settings(controller=ControllerSettings(repo=str(work / "repo"), state_dir=work / "state",
                                                          promote=False))
        controller = build_controller(settings, serving=FakeServing())
        scripted = ScriptedStep(metrics={"accuracy": 0.97, "f1_macro": 0.96, "log_loss": 0.1})
        controller.proposals.runners = {"local": FakeRunner({"evaluate": scripted})}
        stop = threading.Event()
        loop = threading.Thread(target=_loop, args=(controller, settings.controller),
                                kwargs={"stop": stop, "once": False}, daemon=True)
        loop.start()
        try:
            started = time.perf_counter()
            time.sleep(args.warmup)
            while controller.proposals.busy:
                time.sleep(1.0)
            print(f"warm-up: {time.perf_counter() - started:.1f} s (the first pass over every model)")
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            time.sleep(args.seconds)
            cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        finally:
            stop.set()
            loop.join(timeout=60)
            controller.close()
    interval = settings.controller
    share = 100.0 * cpu / wall
    print(f"idle: {cpu:.2f} CPU s in {wall:.1f} s wall (interval {interval.interval_seconds:g} s, tick "
          f"{interval.tick_seconds:g} s, data checks every {interval.data_check_seconds:g} s): "
          f"{share:.2f}% of one core (target < 2%) {'ok' if share < 2.0 else 'OVER'}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0 if share < 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
