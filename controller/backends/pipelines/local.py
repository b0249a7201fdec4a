"""The embedded home's pipeline runner: each step a subprocess in the model's virtualenv.

:class:`LocalRunner` implements :class:`~controller.backends.pipelines.PipelineRunner`.
The engine starts a run; one supervisor thread per run schedules the steps as
a DAG (a step starts when every step it ``needs`` succeeded, independent steps
in parallel up to ``RunRequest.max_parallel``), and one small thread per
running step blocks in ``waitpid`` and reports the exit. The supervisor sleeps
on a queue until a step exits, the run is cancelled or the nearest timeout is
due, so no time is lost polling.

Each step, per the step contract (README.md):

* runs in ``RunRequest.source_dir`` in its own session (its own process group,
  which is what timeouts and ``cancel()`` kill: SIGTERM, then SIGKILL after
  ``kill_grace_seconds``), recorded before and after its launch
  (:mod:`.orphans`, with ``FLYWHEEL_INSTANCE`` in its environment), so a run
  started again after the controller was killed first ends the steps the
  killed one left running, and never runs a step twice at once;
* gets ``FLYWHEEL_PARAMS``, ``FLYWHEEL_DATA_<NAME>``, ``FLYWHEEL_WORKDIR``,
  ``FLYWHEEL_MODEL_DIR``, ``FLYWHEEL_METRICS``, ``FLYWHEEL_REFERENCE_DATA`` and, when there is a baseline,
  ``FLYWHEEL_BASELINE_MODEL_DIR``, with the virtualenv's ``bin`` first on
  ``PATH``, ``VIRTUAL_ENV`` and ``PYTHONUNBUFFERED=1`` set (``PYTHONHOME`` is dropped, ``PYTHONPATH``
  holds only :mod:`controller.steplib`); a step's own ``env`` is applied under these;
* writes stdout and stderr straight into ``<run_dir>/logs/<step>.log`` (the
  runner never holds a log in memory; a failed step's result carries the
  last 50 lines);
* gets a fresh metrics file per attempt, ``<run_dir>/metrics/<step>.<n>.json``.
  After the step exits 0 the file (if the step wrote one) must be a JSON
  object of finite numbers, or the step fails saying why. The steps' metrics
  are merged in pipeline order into ``RunResult.metrics`` and
  ``<run_dir>/metrics.json``.

The command: ``run`` is split with :func:`shlex.split` and executed directly,
with the program looked up on the step's PATH (so ``python train.py`` is the
virtualenv's python) — unless it uses shell syntax (``| & ; < > ( ) $ `` ` ``
``* ? ~``, a newline, a leading ``VAR=value`` or a shell builtin such as
``cd``), in which case it runs as ``/bin/sh -c run`` with the same
environment. A program that cannot be found or started is a runner-side
``error``; so is a virtualenv that cannot be built.

Retries re-run a failed attempt (non-zero exit, timeout, bad metrics) up to
``Step.retries`` times, each attempt announced in the log. After a step fails
for good no new step starts; running ones finish; the steps that were never
started are ``skipped``.

Layout of ``run_dir``: ``params.json``, ``work/`` (FLYWHEEL_WORKDIR),
``model/`` (FLYWHEEL_MODEL_DIR), ``reference-data`` (FLYWHEEL_REFERENCE_DATA), ``logs/``, ``metrics/``,
``metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from controller import steplib
from controller.backends.local.processes import INSTANCE_ENV, ProcessError, scrubbed_environment, uses_shell
from controller.backends.local.venvs import VenvBuildError, VenvCache, model_environment
from controller.backends.pipelines import (
    RunRequest,
    RunResult,
    RunStatus,
    StepResult,
    StepStatus,
)
from controller.backends.pipelines.contract import HandleBase, log_tail, read_metrics
from controller.backends.pipelines.orphans import StepRecords
from controller.specs.types import Step

__all__ = ["LocalRunHandle", "LocalRunner", "step_may_see"]

log = logging.getLogger(__name__)

REFERENCE = "reference-data"  # in run_dir: FLYWHEEL_REFERENCE_DATA
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")


class LocalRunner:
    """Runs pipelines as local subprocesses.

    ``venvs`` builds (or reuses) the virtualenv of each run's model. ``venv``
    instead names one already built virtualenv that every run uses as it is
    (benchmarks, tests). Without either, steps run in the controller's own
    environment (``sys.prefix``), which suits tests and demos only.
    """

    def __init__(
        self, *, venvs: VenvCache | None = None, venv: Path | None = None, kill_grace_seconds: float = 5.0
    ) -> None:
        self.venvs = venvs
        self.venv = venv
        self.kill_grace_seconds = kill_grace_seconds

    def start(self, request: RunRequest) -> LocalRunHandle:
        handle = LocalRunHandle(
            request, venvs=self.venvs, venv=self.venv, kill_grace_seconds=self.kill_grace_seconds
        )
        handle._thread.start()
        return handle


def step_may_see(name: str) -> bool:
    """Whether a pipeline step inherits the controller's variable ``name``: all but Flywheel's own
    (``FLYWHEEL_*``: tokens and secrets among them) and those that would break the virtualenv."""
    return name not in _DROPPED_ENV and not name.startswith("FLYWHEEL_")


class _RunError(Exception):
    """A runner-side problem that ends the run with status ``error``."""


@dataclass
class _Attempt:
    step: Step
    number: int
    proc: subprocess.Popen[bytes]
    started: float
    deadline: float
    metrics_path: Path
    kill_at: float | None = None
    timed_out: bool = False
    cancelled: bool = False


@dataclass
class _StepState:
    first_started: float = 0.0
    attempts: int = 0
    result: StepResult | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class LocalRunHandle(HandleBase):
    """One run in progress; see :class:`~controller.backends.pipelines.RunHandle`."""

    def __init__(
        self, request: RunRequest, *, venvs: VenvCache | None, venv: Path | None, kill_grace_seconds: float
    ) -> None:
        super().__init__(request)
        self._venvs = venvs
        self._venv = venv
        self._grace = kill_grace_seconds
        self._inbox: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._cancel_requested = False
        self._records = StepRecords(request.run_dir)
        self._thread = threading.Thread(
            target=self._supervise, name=f"flywheel-run-{request.run_id}", daemon=True
        )
        # Filled by _prepare.
        self._env: dict[str, str] = {}
        self._environment_hash = request.environment_hash
        run_dir = request.run_dir
        self._workdir = run_dir / "work"
        self._model_dir = run_dir / "model"
        self._logs = run_dir / "logs"
        self._metrics_dir = run_dir / "metrics"

    # ------------------------------------------------------------ RunHandle

    def cancel(self) -> None:
        self._cancel_requested = True
        self._inbox.put(("cancel", 0))

    # ----------------------------------------------------------- supervisor

    def _supervise(self) -> None:
        started = time.monotonic()
        states = {step.name: _StepState() for step in self.request.model.steps}
        running: dict[str, _Attempt] = {}
        error = ""
        status: RunStatus = "succeeded"
        try:
            graph = _check_dag(self.request.model.steps)
            try:
                self._records.end_orphans(grace_seconds=self._grace)
            except ProcessError as exc:
                raise _RunError(f"a step left running by a stopped controller: {exc}") from exc
            self._prepare()
            status, error = self._schedule(graph, states, running, started)
        except _RunError as exc:
            status, error = "error", str(exc)
        except Exception:  # a bug of ours: still end the run, kill what runs, say why
            log.exception("run %s: runner failed", self.request.run_id)
            status, error = "error", f"runner failed:\n{traceback.format_exc(limit=5)}"
            for attempt in running.values():
                _kill_group(attempt.proc, signal.SIGKILL)
        finally:
            self._finish(states, status, error, started)

    def _prepare(self) -> None:
        request = self.request
        for directory in (self._workdir, self._model_dir, self._logs, self._metrics_dir):
            directory.mkdir(parents=True, exist_ok=True)
        params_path = request.run_dir / "params.json"
        try:
            params_path.write_text(json.dumps(dict(request.params), indent=2, sort_keys=True))
        except (TypeError, ValueError) as exc:
            raise _RunError(f"params are not JSON-serialisable: {exc}") from exc
        venv = self._resolve_venv()
        env = scrubbed_environment(keep=step_may_see, venv=venv)
        for data_input in request.model.data:
            env[data_input.env_name] = request.data.get(data_input.name, data_input.uri)
        env["FLYWHEEL_PARAMS"] = str(params_path)
        env["FLYWHEEL_WORKDIR"] = str(self._workdir)
        env["FLYWHEEL_MODEL_DIR"] = str(self._model_dir)
        env["FLYWHEEL_REFERENCE_DATA"] = str(request.run_dir / REFERENCE)
        env["PYTHONPATH"] = str(Path(steplib.__file__).parent)  # flywheel_reference, stdlib only
        if request.baseline_model_dir is not None:
            env["FLYWHEEL_BASELINE_MODEL_DIR"] = str(request.baseline_model_dir)
        self._env = env

    def _resolve_venv(self) -> Path:
        request = self.request
        if self._venv is not None:
            if not (self._venv / "bin" / "python").exists():
                raise _RunError(f"virtualenv {self._venv} has no bin/python")
            return self._venv
        if self._venvs is None:
            return Path(sys.prefix)
        try:
            spec = model_environment(request.model, request.source_dir)
            if request.environment_hash is not None and request.environment_hash != spec.hash:
                raise _RunError(
                    f"environment hash {request.environment_hash} was asked for, but the model's "
                    f"requirements and Python give {spec.hash}"
                )
            self._environment_hash = spec.hash
            return self._venvs.ensure(spec)
        except VenvBuildError as exc:
            raise _RunError(f"cannot build the model's virtualenv: {exc}") from exc

    def _schedule(
        self,
        graph: TopologicalSorter[str],
        states: dict[str, _StepState],
        running: dict[str, _Attempt],
        run_started: float,
    ) -> tuple[RunStatus, str]:
        """Start each step once every step it needs succeeded (``graph`` is told as each one does)."""
        steps = self.request.model.steps
        by_name = {step.name: step for step in steps}
        position = {step.name: index for index, step in enumerate(steps)}
        ready: list[str] = []  # free to start, not started yet: started in pipeline order
        limit = max(1, self.request.max_parallel)
        stopping = ""  # why no new step may start
        outcome: RunStatus = "succeeded"
        while True:
            if self._cancel_requested and outcome != "cancelled":
                outcome, stopping = "cancelled", "the run was cancelled"
                self._terminate_all(running)
            if not stopping:
                ready = sorted([*ready, *graph.get_ready()], key=position.__getitem__)
                while ready and len(running) < limit:
                    step = by_name[ready.pop(0)]
                    state = states[step.name]
                    self._emit(step.name, "started", 1, time.monotonic() - run_started)
                    state.first_started = time.monotonic()
                    failure = self._launch(step, 1, state, running)
                    if failure is not None:
                        outcome, stopping = "error", failure
                        break
            if not running:
                break
            message = self._next_message(running)
            if message is None:
                continue
            kind, value = message
            if kind == "cancel":
                continue
            name = next(n for n, a in running.items() if a.proc.pid == value)
            attempt = running.pop(name)
            failure_kind = self._on_exit(attempt, states[attempt.step.name], running, retry=not stopping)
            if _succeeded(states[name]):
                graph.done(name)
            if failure_kind is not None and not stopping:
                outcome = failure_kind
                settled = states[name].result
                stopping = f"step {name}: {settled.message if settled else 'failed'}"
        for step in steps:
            if states[step.name].result is None:
                states[step.name].result = StepResult(name=step.name, status="skipped")
        if outcome == "succeeded":
            return outcome, ""
        return outcome, stopping

    def _next_message(self, running: dict[str, _Attempt]) -> tuple[str, int] | None:
        """Wait for a step to exit or a cancel; meanwhile enforce timeouts. None: a timer fired."""
        now = time.monotonic()
        due: list[float] = []
        for attempt in running.values():
            if not attempt.timed_out and not attempt.cancelled:
                if now >= attempt.deadline:
                    attempt.timed_out = True
                    attempt.kill_at = now + self._grace
                    _kill_group(attempt.proc, signal.SIGTERM)
                else:
                    due.append(attempt.deadline)
            if attempt.kill_at is not None:
                if now >= attempt.kill_at:
                    _kill_group(attempt.proc, signal.SIGKILL)
                    attempt.kill_at = None
                else:
                    due.append(attempt.kill_at)
        timeout = max(0.0, min(due) - now) if due else None
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def _terminate_all(self, running: dict[str, _Attempt]) -> None:
        kill_at = time.monotonic() + self._grace
        for attempt in running.values():
            attempt.cancelled = True
            attempt.kill_at = kill_at
            _kill_group(attempt.proc, signal.SIGTERM)

    def _launch(self, step: Step, number: int, state: _StepState, running: dict[str, _Attempt]) -> str | None:
        """Start one attempt; on a runner-side problem record the step as ``error`` and say why."""
        state.attempts = number
        safe = _safe_name(step.name)
        log_path = self._logs / f"{safe}.log"
        metrics_path = self._metrics_dir / f"{safe}.{number}.json"
        metrics_path.unlink(missing_ok=True)
        total = step.retries + 1
        with open(log_path, "ab") as log_file:
            log_file.write(f"==> flywheel: step {step.name}, attempt {number}/{total}: {step.run}\n".encode())
            log_file.flush()
            try:
                argv = self._argv(step.run)
                intent = self._records.intend(run_id=self.request.run_id, step=step.name, attempt=number)
                # A step's own env comes first; the contract's variables win over it.
                env = {
                    **dict(step.env),
                    **self._env,
                    "FLYWHEEL_METRICS": str(metrics_path),
                    INSTANCE_ENV: intent.instance,
                }
                proc = subprocess.Popen(
                    argv,
                    cwd=self.request.source_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except (_RunError, OSError, ValueError) as exc:
                self._records.finished(step.name)
                message = f"cannot start step {step.name}: {exc}"
                log_file.write(f"==> flywheel: {message}\n".encode())
                log_file.flush()
                state.result = StepResult(
                    name=step.name,
                    status="error",
                    attempts=number,
                    log_path=log_path,
                    duration_seconds=time.monotonic() - state.first_started,
                    log_tail=log_tail(log_path),
                    message=message,
                )
                self._emit(step.name, "finished", number, 0.0, "error", message)
                return message
        self._records.launched(intent, proc.pid)
        now = time.monotonic()
        running[step.name] = _Attempt(
            step=step,
            number=number,
            proc=proc,
            started=now,
            deadline=now + step.timeout_seconds,
            metrics_path=metrics_path,
        )
        name = f"flywheel-step-{proc.pid}"
        reaper = threading.Thread(target=self._reap, args=(proc, step.name), daemon=True, name=name)
        reaper.start()
        return None

    def _reap(self, proc: subprocess.Popen[bytes], step: str) -> None:
        proc.wait()  # blocking waitpid: no polling
        self._records.finished(step)
        self._inbox.put(("exit", proc.pid))

    def _argv(self, command: str) -> list[str]:
        if uses_shell(command):
            return ["/bin/sh", "-c", command]
        argv = shlex.split(command)
        if not argv:
            raise _RunError("the step's command is empty")
        program = argv[0]
        if "/" in program:
            path = Path(program) if os.path.isabs(program) else self.request.source_dir / program
            if not os.access(path, os.X_OK) or path.is_dir():
                raise _RunError(f"{program}: not found or not executable in {self.request.source_dir}")
            argv[0] = str(path)
        else:
            found = shutil.which(program, path=self._env["PATH"])
            if found is None:
                raise _RunError(f"command not found: {program}")
            argv[0] = found
        return argv

    def _on_exit(
        self, attempt: _Attempt, state: _StepState, running: dict[str, _Attempt], *, retry: bool
    ) -> RunStatus | None:
        """Record an attempt's end; retry it or settle the step. Returns the run's failure, if any."""
        step, proc = attempt.step, attempt.proc
        code = proc.returncode
        duration = time.monotonic() - attempt.started
        if attempt.timed_out or attempt.cancelled:
            _kill_group(proc, signal.SIGKILL)  # leftovers that ignored SIGTERM
        metrics: dict[str, float] = {}
        status: StepStatus
        if attempt.cancelled:
            status, message = "cancelled", "cancelled while running"
        elif attempt.timed_out:
            status, message = "failed", f"timed out after {step.timeout_seconds:g}s (timeout_seconds); killed"
        elif code != 0:
            status, message = "failed", f"exited with code {code}"
        else:
            try:
                metrics = read_metrics(attempt.metrics_path)
                status, message = "succeeded", ""
            except ValueError as exc:
                status, message = "failed", f"invalid metrics in FLYWHEEL_METRICS: {exc}"
        log_path = self._logs / f"{_safe_name(step.name)}.log"
        with open(log_path, "ab") as log_file:
            note = message or "succeeded"
            log_file.write(f"==> flywheel: attempt {attempt.number} {note} in {duration:.2f}s\n".encode())
        if status == "failed" and retry and attempt.number <= step.retries and not self._cancel_requested:
            self._emit(step.name, "retrying", attempt.number, duration, "failed", message)
            failure = self._launch(step, attempt.number + 1, state, running)
            return "error" if failure is not None else None
        state.metrics = metrics
        state.result = StepResult(
            name=step.name,
            status=status,
            exit_code=code,
            attempts=attempt.number,
            duration_seconds=time.monotonic() - state.first_started,
            log_path=log_path,
            log_tail="" if status == "succeeded" else log_tail(log_path),
            message=message,
        )
        self._emit(step.name, "finished", attempt.number, duration, status, message)
        if status == "succeeded":
            return None
        return "cancelled" if status == "cancelled" else "failed"

    def _finish(self, states: dict[str, _StepState], status: RunStatus, error: str, started: float) -> None:
        merged: dict[str, float] = {}
        results: list[StepResult] = []
        for step in self.request.model.steps:
            state = states[step.name]
            results.append(state.result or StepResult(name=step.name, status="skipped"))
            if state.result is not None and state.result.status == "succeeded":
                merged.update(state.metrics)
        if status == "succeeded" and any(r.status != "succeeded" for r in results):
            status, error = "error", "not every step succeeded"
        try:
            if self.request.run_dir.is_dir():
                merged_path = self.request.run_dir / "metrics.json"
                merged_path.write_text(json.dumps(merged, indent=2, sort_keys=True))
        except OSError as exc:
            log.warning("run %s: cannot write metrics.json: %s", self.request.run_id, exc)
        self._result = RunResult(
            run_id=self.request.run_id,
            status=status,
            steps=tuple(results),
            metrics=merged,
            model_dir=self._model_dir if self._model_dir.is_dir() else None,
            reference_data=reference if (reference := self.request.run_dir / REFERENCE).is_file() else None,
            environment_hash=self._environment_hash,
            error=error,
            duration_seconds=time.monotonic() - started,
        )
        self._done.set()


# ------------------------------------------------------------------ helpers


def _check_dag(steps: tuple[Step, ...]) -> TopologicalSorter[str]:
    """The steps' ``needs`` as a prepared graph to schedule from; a :class:`_RunError` if it is not a DAG."""
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise _RunError(f"duplicate step names in {names}")
    known = set(names)
    for step in steps:
        unknown = [n for n in step.needs if n not in known]
        if unknown:
            raise _RunError(f"step {step.name} needs unknown steps {unknown}")
    graph = TopologicalSorter({s.name: s.needs for s in steps})
    try:
        graph.prepare()
    except CycleError as exc:
        raise _RunError(f"the steps' needs form a cycle: {' -> '.join(exc.args[1])}") from None
    return graph


def _succeeded(state: _StepState) -> bool:
    return state.result is not None and state.result.status == "succeeded"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the step is its session's and group's leader: pgid == pid
