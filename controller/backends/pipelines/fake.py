"""A pipeline runner for engine tests and the demo: scripted step results, no subprocesses.

:class:`FakeRunner` implements :class:`~controller.backends.pipelines.PipelineRunner`.
Each step's outcome comes from a :class:`ScriptedStep`, looked up by
``"<model>/<step>"`` first and then by ``"<step>"``; unscripted steps succeed
with no metrics. The DAG rules are the local runner's: a step runs only when
every step it needs succeeded, and after a failure nothing new starts, so the
rest are ``skipped``. Like a real run, the fake writes the model files, the
step logs and ``metrics.json`` under ``RunRequest.run_dir`` and reports
progress through ``on_event``, so code that digests artifacts or shows
progress can be tested with it.

Runs finish inside ``start()`` unless the runner was made with ``hold=True``:
then they wait until :meth:`FakeRunHandle.release` (or
:meth:`FakeRunner.release_all`) or ``cancel()``, which lets a test look at a
run in progress or cancel it. Every request is kept in ``FakeRunner.requests``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.backends.pipelines import (
    RunRequest,
    RunResult,
    RunStatus,
    StepResult,
    StepStatus,
)
from controller.backends.pipelines.contract import HandleBase
from controller.specs.types import Step

__all__ = ["FakeRunHandle", "FakeRunner", "ScriptedStep"]


@dataclass(frozen=True)
class ScriptedStep:
    status: StepStatus = "succeeded"  # succeeded | failed | error
    metrics: Mapping[str, float] = field(default_factory=dict)
    exit_code: int | None = None  # default: 0 when succeeded, 1 when failed, None on error
    attempts: int = 1
    duration_seconds: float = 0.01
    log: str = ""
    message: str = ""
    model_files: Mapping[str, bytes] = field(default_factory=dict)  # written into the model dir


class FakeRunner:
    def __init__(self, script: Mapping[str, ScriptedStep] | None = None, *, hold: bool = False) -> None:
        self.script: dict[str, ScriptedStep] = dict(script or {})
        self.hold = hold
        self.requests: list[RunRequest] = []
        self.handles: list[FakeRunHandle] = []

    def start(self, request: RunRequest) -> FakeRunHandle:
        self.requests.append(request)
        handle = FakeRunHandle(request, self._script_for(request))
        self.handles.append(handle)
        if not self.hold:
            handle.release()
        return handle

    def release_all(self) -> None:
        for handle in self.handles:
            handle.release()

    def _script_for(self, request: RunRequest) -> dict[str, ScriptedStep]:
        model = request.model.name
        return {
            step.name: self.script.get(f"{model}/{step.name}", self.script.get(step.name, ScriptedStep()))
            for step in request.model.steps
        }


class FakeRunHandle(HandleBase):
    def __init__(self, request: RunRequest, script: dict[str, ScriptedStep]) -> None:
        super().__init__(request)
        self._script = script
        self._lock = threading.Lock()

    def release(self) -> None:
        """Let a held run play out its script and finish."""
        self._settle(cancelled=False)

    def cancel(self) -> None:
        self._settle(cancelled=True)

    def _settle(self, *, cancelled: bool) -> None:
        with self._lock:
            if self._result is not None:
                return
            self._result = self._cancelled() if cancelled else self._play()
            self._done.set()

    def _cancelled(self) -> RunResult:
        steps = tuple(StepResult(name=step.name, status="skipped") for step in self.request.model.steps)
        return RunResult(
            run_id=self.request.run_id, status="cancelled", steps=steps, error="the run was cancelled"
        )

    def _play(self) -> RunResult:
        request = self.request
        run_dir = request.run_dir
        model_dir, logs = run_dir / "model", run_dir / "logs"
        for directory in (run_dir / "work", model_dir, logs):
            directory.mkdir(parents=True, exist_ok=True)
        (run_dir / "params.json").write_text(json.dumps(dict(request.params), sort_keys=True))
        outcome: dict[str, StepStatus] = {}
        results: dict[str, StepResult] = {}
        metrics: dict[str, float] = {}
        status: RunStatus = "succeeded"
        error = ""
        for step in _in_dependency_order(request):
            scripted = self._script[step.name]
            if status != "succeeded" or any(outcome.get(need) != "succeeded" for need in step.needs):
                outcome[step.name] = "skipped"
                results[step.name] = StepResult(name=step.name, status="skipped")
                continue
            self._emit(step.name, "started", 1, 0.0)
            log_path = logs / f"{step.name}.log"
            log_path.write_text(scripted.log)
            for name, content in scripted.model_files.items():
                (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (model_dir / name).write_bytes(content)
            exit_code = scripted.exit_code
            if exit_code is None and scripted.status != "error":
                exit_code = 0 if scripted.status == "succeeded" else 1
            message = scripted.message or (
                "" if scripted.status == "succeeded" else f"step {scripted.status}"
            )
            outcome[step.name] = scripted.status
            results[step.name] = StepResult(
                name=step.name,
                status=scripted.status,
                exit_code=exit_code,
                attempts=scripted.attempts,
                duration_seconds=scripted.duration_seconds,
                log_path=log_path,
                log_tail="" if scripted.status == "succeeded" else scripted.log,
                message=message,
            )
            self._emit(step.name, "finished", scripted.attempts, scripted.duration_seconds, scripted.status)
            if scripted.status == "succeeded":
                metrics.update(scripted.metrics)
            else:
                status = "error" if scripted.status == "error" else "failed"
                error = f"step {step.name}: {message}"
        (run_dir / "metrics.json").write_text(json.dumps(metrics, sort_keys=True))
        return RunResult(
            run_id=request.run_id,
            status=status,
            steps=tuple(results[step.name] for step in request.model.steps),
            metrics=metrics,
            model_dir=model_dir,
            environment_hash=request.environment_hash,
            error=error,
            duration_seconds=sum(r.duration_seconds for r in results.values()),
        )


def _in_dependency_order(request: RunRequest) -> list[Step]:
    """The steps, each after the steps it needs, otherwise in declaration order.

    Steps caught in a cycle or needing an unknown step come last; their needs
    never succeed, so they are skipped.
    """
    ordered: list[Step] = []
    placed: set[str] = set()
    pending = list(request.model.steps)
    while pending:
        ready = [s for s in pending if all(n in placed for n in s.needs)]
        if not ready:
            return ordered + pending
        for step in ready:
            ordered.append(step)
            placed.add(step.name)
        pending = [s for s in pending if s.name not in placed]
    return ordered
