"""Benchmark the local pipeline runner's overhead per step.

Prints:

1. per-step overhead of :class:`controller.backends.pipelines.local.LocalRunner`:
   a 3-step chain (``python -c pass``, each step needing the one before) run
   through the runner in a warm virtualenv, against the same three commands
   run one after the other with :func:`subprocess.run` in the same
   virtualenv; the median over N repetitions of (runner - direct) / 3, in ms.
   Target: under 150 ms per step.
2. the same 3-step pipeline under Kubeflow Pipelines' local runner
   (``kfp.local.SubprocessRunner``, with ``use_venv=False`` and ``True``), as a
   ratio of its wall time per step to LocalRunner's. kfp is installed into a
   throwaway virtualenv in a temporary directory (it is not a Flywheel
   dependency) and driven there by a small generated script; when it cannot
   be installed the line says why and is skipped.
3. the wall time of a cache-hit re-run of a 3-step pipeline: a proposal
   commit that leaves the model's inputs alone, reconciled by a fresh
   controller (store and repository opened, planned, result reused, report
   published) and by a running one. Target: under 300 ms.

Run: ``python bench/bench_runner.py [--reps N] [--kfp-reps N] [--no-kfp]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from controller.backends.local.venvs import VenvCache, find_uv
from controller.backends.pipelines import RunRequest
from controller.backends.pipelines.local import LocalRunner
from controller.backends.python_env import PythonEnvironment
from controller.clock import SYSTEM_CLOCK
from controller.specs.types import Model, Source, Step

TARGET_MS = 150.0
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
STEPS = 3


def chain_model() -> Model:
    steps = tuple(
        Step(name=f"s{i}", run="python -c pass", needs=(f"s{i - 1}",) if i else ()) for i in range(STEPS)
    )
    return Model(
        name="bench",
        spec_path="specs/bench/model.yaml",
        source=Source(path="specs/bench", requirements="specs/bench/requirements.txt", python=PY),
        steps=steps,
    )


def time_runner(runner: LocalRunner, model: Model, source: Path, run_dir: Path) -> float:
    request = RunRequest(run_id=run_dir.name, model=model, source_dir=source, run_dir=run_dir)
    began = time.perf_counter()
    result = runner.start(request).wait(timeout=60)
    elapsed = time.perf_counter() - began
    if result.status != "succeeded":
        raise SystemExit(f"benchmark run failed: {result}")
    return elapsed


def time_direct(venv: Path, source: Path) -> float:
    python = str(venv / "bin" / "python")
    began = time.perf_counter()
    for _ in range(STEPS):
        subprocess.run([python, "-c", "pass"], cwd=source, check=True)
    return time.perf_counter() - began


def bench_overhead(tmp: Path, reps: int) -> float:
    """Returns the runner's median wall time per step, in seconds."""
    began = time.perf_counter()
    venv = VenvCache(tmp / "venvs").ensure(PythonEnvironment(requirements="", python=PY))
    print(f"warm virtualenv built in {time.perf_counter() - began:.2f}s: {venv}")
    source = tmp / "src"
    source.mkdir()
    model, runner = chain_model(), LocalRunner(venv=venv)
    time_runner(runner, model, source, tmp / "runs" / "warmup")
    time_direct(venv, source)
    runs, directs, overheads = [], [], []
    for i in range(reps):
        direct = time_direct(venv, source)
        run = time_runner(runner, model, source, tmp / "runs" / f"r{i}")
        runs.append(run)
        directs.append(direct)
        overheads.append((run - direct) / STEPS)
    per_step_ms = statistics.median(overheads) * 1000
    verdict = "OK" if per_step_ms < TARGET_MS else "OVER TARGET"
    print(
        f"(1) LocalRunner overhead per step: median {per_step_ms:.1f} ms over {reps} runs of a "
        f"{STEPS}-step chain (runner {statistics.median(runs) * 1000:.0f} ms, direct "
        f"{statistics.median(directs) * 1000:.0f} ms per run); target < {TARGET_MS:.0f} ms: {verdict}"
    )
    return statistics.median(runs) / STEPS


KFP_SCRIPT = textwrap.dedent(
    """
    import json, statistics, sys, time
    from kfp import dsl, local

    use_venv, reps, root = sys.argv[1] == "1", int(sys.argv[2]), sys.argv[3]

    @dsl.component(base_image="python:3.11")
    def noop():
        pass

    @dsl.pipeline
    def chain():
        a = noop()
        b = noop().after(a)
        noop().after(b)

    local.init(runner=local.SubprocessRunner(use_venv=use_venv), pipeline_root=root)
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        chain()
        times.append(time.perf_counter() - began)
    print("RESULT " + json.dumps(statistics.median(times)))
    """
)


def kfp_python(tmp: Path) -> tuple[str | None, str]:
    """An interpreter that can import kfp, installing it into a throwaway venv if needed."""
    try:
        import kfp  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        pass
    else:
        return sys.executable, "kfp from the current environment"
    uv = find_uv()
    venv = tmp / "kfp-venv"
    if uv:
        steps = [
            [uv, "venv", "--quiet", "--seed", "--python", sys.executable, str(venv)],
            [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "kfp"],
        ]
    else:
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "kfp"],
        ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
            return None, f"cannot install kfp: {tail}"
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import kfp; print(kfp.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return str(venv / "bin" / "python"), f"kfp {version} in a throwaway virtualenv"


def bench_kfp(tmp: Path, local_per_step: float, reps: int) -> None:
    python, how = kfp_python(tmp)
    if python is None:
        print(f"(2) Kubeflow Pipelines local runner: skipped ({how})")
        return
    script = tmp / "kfp_chain.py"
    script.write_text(KFP_SCRIPT)
    for use_venv in (False, True):
        n = reps if not use_venv else 1  # use_venv=True pip-installs kfp into a venv per task
        done = subprocess.run(
            [python, str(script), "1" if use_venv else "0", str(n), str(tmp / f"kfp-root-{int(use_venv)}")],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp,
            timeout=1800,
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        label = f"kfp.local.SubprocessRunner(use_venv={use_venv})"
        if done.returncode != 0 or line is None:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
            print(f"(2) {label}: failed ({tail})")
            continue
        per_step = json.loads(line.split(" ", 1)[1]) / STEPS
        print(
            f"(2) {label} ({how}): {per_step * 1000:.0f} ms per step, median of {n}; "
            f"{per_step / local_per_step:.1f}x LocalRunner's {local_per_step * 1000:.0f} ms"
        )


THREE_STEPS = """  pipeline:
    steps:
      - name: prepare
        run: python -c pass
      - name: train
        run: python -c pass
        needs: [prepare]
      - name: evaluate
        run: >-
          python -c 'import json, os; json.dump({"accuracy": 0.9, "f1_macro": 0.9, "log_loss": 0.2},
          open(os.environ["FLYWHEEL_METRICS"], "w"))'
        needs: [train]
"""


def bench_cache_hit(tmp: Path, reps: int) -> None:
    """(3) A proposal commit whose model inputs are unchanged: one reconcile pass that reuses the result."""
    import re
    import subprocess as sp

    from controller.backends.forge.local import LocalForge
    from controller.backends.git import Repository
    from controller.backends.store import open_store
    from controller.engine.proposals import ProposalReconciler
    from controller.scaffold import scaffold

    repo = tmp / "cache-repo"
    scaffold(repo)
    spec = repo / "specs/iris/model.yaml"
    text = re.sub(r"  pipeline:\n    steps:\n(?:      .*\n|        .*\n)+", THREE_STEPS, spec.read_text())
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    sp.run([*git, "checkout", "-q", "-b", "proposal"], cwd=repo, check=True)
    spec.write_text(text)
    sp.run([*git, "commit", "-qam", "three trivial steps"], cwd=repo, check=True)

    def reconciler(state: Path) -> ProposalReconciler:
        store = open_store(state, clock=SYSTEM_CLOCK)
        return ProposalReconciler(
            repository=Repository.open(str(repo), mirror_root=state / "mirrors"),
            store=store,
            forge=LocalForge(store),
            runners={"local": LocalRunner()},
            work_dir=state, clock=SYSTEM_CLOCK
        )

    state = tmp / "cache-state"
    first = reconciler(state)
    assert len(first.reconcile().started) == 1
    while first.busy:
        first.collect()
        time.sleep(0.01)
    assert first.finished and first.finished[0].state == "success", first.finished

    warm, cold = [], []
    for i in range(reps):
        (repo / "NOTES.md").write_text(f"note {i}\n")
        sp.run([*git, "add", "NOTES.md"], cwd=repo, check=True)
        sp.run([*git, "commit", "-qm", f"note {i}"], cwd=repo, check=True)
        began = time.perf_counter()
        summary = first.reconcile()
        warm.append(time.perf_counter() - began)
        assert len(summary.reused) == 1 and not summary.started, summary
        # A new controller process: nothing cached in memory, only the store on disk.
        (repo / "NOTES.md").write_text(f"note {i} again\n")
        sp.run([*git, "commit", "-qam", f"note {i} again"], cwd=repo, check=True)
        began = time.perf_counter()
        fresh = reconciler(state)
        summary = fresh.reconcile()
        cold.append(time.perf_counter() - began)
        assert len(summary.reused) == 1 and not summary.started, summary
        fresh.store.close()
    first.store.close()
    w, c = statistics.median(warm) * 1000, statistics.median(cold) * 1000
    verdict = "PASS" if c < 300 else "MISS"
    print(
        f"(3) cache-hit re-run of a 3-step pipeline: {c:.0f} ms from a fresh controller "
        f"(open store + repository, plan, reuse, report), {w:.0f} ms in a running one; "
        f"median of {reps}; target < 300 ms: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=20, help="repetitions of the LocalRunner comparison")
    parser.add_argument("--kfp-reps", type=int, default=3, help="repetitions of kfp's use_venv=False run")
    parser.add_argument("--no-kfp", action="store_true", help="skip the Kubeflow Pipelines comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-runner-") as name:
        tmp = Path(name)
        local_per_step = bench_overhead(tmp, args.reps)
        if args.no_kfp:
            print("(2) Kubeflow Pipelines local runner: skipped (--no-kfp)")
        else:
            bench_kfp(tmp, local_per_step, args.kfp_reps)
        bench_cache_hit(tmp, 5)


if __name__ == "__main__":
    main()
