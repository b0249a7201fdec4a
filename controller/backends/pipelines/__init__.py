"""The pipeline runner interface: run one model's steps for one run, report each step.

The engine calls :meth:`PipelineRunner.start` with a :class:`RunRequest` and
gets a :class:`RunHandle` back; the run goes on in the background, reports
progress through ``RunRequest.on_event`` and ends in a :class:`RunResult`.
A request names the model, its code, its inputs and its environment (by
:func:`environment_hash`), never how a home builds or runs them.
:mod:`.local` implements the Protocol for the embedded home (each step a
subprocess in the model's virtualenv) and :mod:`.fake` plays back scripted
results for engine tests; the cluster home will plug in behind the same
Protocol. The step contract (environment variables, working directory,
metrics file) is the one README.md documents, the same in every home.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from controller.backends.python_env import PythonEnvironment
from controller.specs.types import Environment, Model

__all__ = [
    "EventKind",
    "PipelineRunner",
    "RunHandle",
    "RunRequest",
    "RunResult",
    "RunStatus",
    "StepEvent",
    "StepResult",
    "StepStatus",
    "environment_hash",
    "ignore_event",
]

RunStatus = Literal["succeeded", "failed", "error", "cancelled"]
"""``failed``: a step exited non-zero, timed out or wrote bad metrics.
``error``: the runner could not do its part (environment build, command not found, bad DAG)."""

StepStatus = Literal["succeeded", "failed", "error", "skipped", "cancelled"]
"""``skipped``: never started (a step it needs did not succeed, or the run stopped first)."""

EventKind = Literal["started", "finished", "retrying"]


@dataclass(frozen=True)
class StepEvent:
    """Progress of one step, for the CLI and the engine's log.

    ``elapsed_seconds`` counts from the start of the run for ``started``, and
    from the start of the attempt for ``finished`` and ``retrying``.
    """

    run_id: str
    step: str
    kind: EventKind
    attempt: int
    elapsed_seconds: float
    status: StepStatus | None = None  # set on "finished"
    message: str = ""


def ignore_event(event: StepEvent) -> None:
    """The default progress callback: does nothing."""


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """Everything a runner needs to run one model's pipeline once.

    ``source_dir`` is the model's code directory, already exported from git by
    the caller. ``data`` maps each data input's name (``DataInput.name``) to a
    local path or URI. The runner owns ``run_dir``: the shared workdir, the
    model directory, the metrics and the step logs are created under it.
    ``environment_hash`` names the model's environment (:func:`environment_hash`);
    a runner builds it, or finds it built, and fails the run with ``error``
    when the model's requirements give another one.
    """

    run_id: str
    model: Model
    source_dir: Path
    run_dir: Path
    params: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)
    baseline_model_dir: Path | None = None
    environment_hash: str | None = None
    max_parallel: int = 2
    on_event: Callable[[StepEvent], None] = ignore_event
    environment: Environment | None = None  # where the run trains (a cluster home's runner needs it)
    cache_key: str | None = None  # the run's cache key, for the labels a cluster home puts on it
    commit: str | None = None  # the commit the code was exported at (a cluster home's pods check it out)


@dataclass(frozen=True)
class StepResult:
    name: str
    status: StepStatus
    exit_code: int | None = None
    attempts: int = 0
    duration_seconds: float = 0.0
    log_path: Path | None = None
    log_tail: str = ""  # the last lines of the log, filled when the step did not succeed
    message: str = ""  # why it failed, in words (timeout, bad metrics, command not found, ...)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: RunStatus
    steps: tuple[StepResult, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)  # merged across steps
    model_dir: Path | None = None
    reference_data: Path | None = None  # the sample the train step wrote to FLYWHEEL_REFERENCE_DATA
    environment_hash: str | None = None
    image: str | None = None  # reference@digest of the image the steps ran in (cluster home)
    error: str = ""  # set when status is not "succeeded"
    duration_seconds: float = 0.0

    def step(self, name: str) -> StepResult | None:
        return next((s for s in self.steps if s.name == name), None)


class RunHandle(Protocol):
    """A started run."""

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run ends; raises ``TimeoutError`` if ``timeout`` passes first."""
        ...

    def cancel(self) -> None:
        """Stop the run promptly: kill every running step; the run ends ``cancelled``."""
        ...

    def done(self) -> bool: ...


class PipelineRunner(Protocol):
    def start(self, request: RunRequest) -> RunHandle:
        """Start the run in the background and return at once."""
        ...


def environment_hash(*, requirements: str, python: str) -> str:
    """The name of a model's environment in every home: its virtualenv here, the tag of a cluster's image.

    The engine puts it in the run's cache key; runners build (or find) the
    environment it names.
    """
    return PythonEnvironment(requirements=requirements, python=python).hash
