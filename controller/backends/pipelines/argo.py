"""The cluster home's pipeline runner: one run, one Argo Workflow, through the Argo Server.

:class:`ArgoRunner` implements :class:`~controller.backends.pipelines.PipelineRunner`.
For each run its handle's thread asks the injected
:class:`~controller.backends.images.ImageBuilder` for the model's image (built
only when the registry lacks its tag), renders the Workflow
(:mod:`.argo_workflow`) with the pinned image and the model's code checked
out of ``repository`` at the run's commit, and submits it with the
``argo-workflows`` SDK's ``WorkflowServiceApi`` — unless a Workflow of the run
already exists (found by its labels, or the server answers 409 to the name
derived from the run id): a restarted controller follows that one instead of
submitting another. It follows the Workflow through the ``workflow-events``
watch, resumed from the last resource version seen and falling back to
``get`` when the watch fails; node phases become
:class:`~controller.backends.pipelines.StepEvent` and
:class:`~controller.backends.pipelines.StepResult`, each step's ``metrics``
output parameter is checked and merged like the embedded home's metrics file,
each step's log is fetched into ``<run_dir>/logs/<step>.log`` (its tail in a
failed step's result), and with a PersistentVolumeClaim the model directory is
copied from where the controller sees the claim (``artifacts_dir``) into
``<run_dir>/model``. ``cancel()`` stops the Workflow (a newer head supersedes
the run). Built by the composition root with the settings it read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from argo_workflows.api.workflow_service_api import WorkflowServiceApi
from argo_workflows.api_client import ApiClient
from argo_workflows.configuration import Configuration
from argo_workflows.exceptions import ApiException
from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow import IoArgoprojWorkflowV1alpha1Workflow
from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow_create_request import (
    IoArgoprojWorkflowV1alpha1WorkflowCreateRequest,
)
from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow_stop_request import (
    IoArgoprojWorkflowV1alpha1WorkflowStopRequest,
)
from argo_workflows.model_utils import validate_and_convert_types

from controller.backends.images import ImageBuilder, ImageError
from controller.backends.pipelines import (
    RunRequest,
    RunResult,
    RunStatus,
    StepResult,
    StepStatus,
)
from controller.backends.pipelines.argo_artifacts import ArtifactsError, RunArtifacts, run_artifacts
from controller.backends.pipelines.argo_workflow import (
    LABEL_MODEL,
    LABEL_RUN,
    image_request,
    label_value,
    render_workflow,
    task_name,
    workflow_inputs,
)
from controller.backends.pipelines.contract import HandleBase, log_tail, read_metrics
from controller.settings import ArgoSettings
from controller.specs.types import ArgoSpec

__all__ = ["ArgoRunHandle", "ArgoRunner"]

log = logging.getLogger(__name__)

_FINAL = {"Succeeded", "Failed", "Error"}
_STEP_STATUS: dict[str, StepStatus] = {
    "Succeeded": "succeeded",
    "Failed": "failed",
    "Error": "error",
    "Omitted": "skipped",
    "Skipped": "skipped",
}


class ArgoRunner:
    """Runs pipelines as Argo Workflows.

    One runner serves every argo Environment: each run's request names its
    Environment, whose ``pipeline.argo`` says which Argo Server to talk to.
    ``repository`` is where the step pods check the run's commit out: the
    repository the controller watches (a URL, or a path the stand-in reads).
    ``token`` gives the bearer token for it (read from the variable or file it
    names, at each run, so a rotated token is picked up; ``None``: no token;
    it raises, saying why, when it cannot read one). ``settings`` says where
    the controller sees the artifacts PersistentVolumeClaims, to bring a run's
    model directory home.
    """

    def __init__(
        self,
        *,
        images: ImageBuilder,
        repository: str,
        token: Callable[[ArgoSpec], str | None] = lambda spec: None,
        settings: ArgoSettings | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.images = images
        self.repository = repository
        self.token = token
        self.settings = settings or ArgoSettings()
        self.poll_seconds = poll_seconds

    def start(self, request: RunRequest) -> ArgoRunHandle:
        handle = ArgoRunHandle(request, self)
        handle._thread.start()
        return handle


class _RunError(Exception):
    """A problem of the runner's side: the run ends ``error``."""


def _api(spec: ArgoSpec, token: str | None) -> WorkflowServiceApi:
    configuration = Configuration(host=spec.server.rstrip("/"))
    configuration.verify_ssl = not spec.insecure_skip_verify
    if spec.ca_file:
        configuration.ssl_ca_cert = spec.ca_file
    client = ApiClient(configuration)
    if token:
        client.set_default_header("Authorization", f"Bearer {token}")
    return WorkflowServiceApi(client)


class ArgoRunHandle(HandleBase):
    """One run's Workflow, followed; see :class:`~controller.backends.pipelines.RunHandle`."""

    def __init__(self, request: RunRequest, runner: ArgoRunner) -> None:
        super().__init__(request)
        self.runner = runner
        self._cancel = threading.Event()
        self._thread = threading.Thread(
            target=self._follow, name=f"flywheel-argo-{request.run_id}", daemon=True
        )
        self._api: WorkflowServiceApi | None = None
        self._name = ""
        self._namespace = ""
        self._seen: dict[str, str] = {}  # task -> phase last announced
        self._started = time.monotonic()
        self._stopping = threading.Lock()
        self._stopped = False
        self._image: str | None = None  # reference@digest the steps run in, once ensured
        self._store: RunArtifacts | None = None  # where the run's model is kept (claim or bucket)

    # ------------------------------------------------------------ RunHandle

    def cancel(self) -> None:
        self._cancel.set()
        if self._api is not None and self._name:  # submitted: stop it now (the watch may be quiet)
            threading.Thread(target=self._stop, daemon=True, name=f"flywheel-argo-stop-{self._name}").start()

    def _stop(self) -> None:
        with self._stopping:
            if self._stopped:
                return
            self._stopped = True
        stop = IoArgoprojWorkflowV1alpha1WorkflowStopRequest(name=self._name, namespace=self._namespace)
        try:
            self._call(
                lambda api: api.stop_workflow(self._namespace, self._name, stop, _check_return_type=False)
            )
        except Exception as exc:
            log.warning("run %s: cannot stop Workflow %s: %s", self.request.run_id, self._name, exc)

    # ------------------------------------------------------------- follower

    def _follow(self) -> None:
        request = self.request
        workflow: dict[str, Any] = {}
        try:
            workflow = self._submit()
            workflow = self._until_done(workflow)
            self._finish(workflow)
        except _RunError as exc:
            self._end("error", str(exc), workflow)
        except Exception as exc:  # a bug or an unexpected answer: still end the run, say why
            log.exception("run %s: argo runner failed", request.run_id)
            self._end("error", f"argo runner failed: {exc}", workflow)

    def _submit(self) -> dict[str, Any]:
        request = self.request
        env = request.environment
        if env is None or env.argo is None:
            raise _RunError("the argo runner needs an environment with pipeline.argo")
        if env.images is None:
            raise _RunError(f"environment {env.name!r} has no images")
        if not request.commit:
            raise _RunError("the argo runner needs the run's commit: the step pods check the code out at it")
        try:
            wanted = image_request(request, env)
            image = self.runner.images.ensure(wanted)
        except ImageError as exc:
            raise _RunError(f"image of {request.model.name}: {exc}") from exc
        self._image = image.pinned
        inputs = workflow_inputs(request, env, image=image.pinned, repository=self.runner.repository)
        if inputs.baseline:
            assert request.baseline_model_dir is not None
            try:
                self._artifacts().put_baseline(inputs.name, request.baseline_model_dir)
            except ArtifactsError as exc:
                raise _RunError(f"give the steps production's model: {exc}") from exc
        rendered = render_workflow(inputs)
        self._name, self._namespace = inputs.name, inputs.namespace
        try:
            token = self.runner.token(env.argo)
        except Exception as exc:  # unset, empty or unreadable: the message names the variable or file
            raise _RunError(f"environment {env.name!r}: no Argo Server token: {exc}") from exc
        self._api = _api(env.argo, token)
        selector = f"{LABEL_RUN}={label_value(request.run_id)},{LABEL_MODEL}={request.model.name}"
        existing = self._call(
            lambda api: api.list_workflows(
                self._namespace, list_options_label_selector=selector, _check_return_type=False
            )
        )
        for item in existing.get("items") or []:
            log.info("run %s: following its Workflow %s", request.run_id, item["metadata"]["name"])
            self._name = item["metadata"]["name"]
            return dict(item)
        body = IoArgoprojWorkflowV1alpha1WorkflowCreateRequest(
            workflow=validate_and_convert_types(
                rendered, (IoArgoprojWorkflowV1alpha1Workflow,), ["workflow"], True, True, Configuration()
            ),
            _check_type=False,
        )
        try:
            return self._call(
                lambda api: api.create_workflow(self._namespace, body, _check_return_type=False)
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        log.info("run %s: Workflow %s exists; following it", request.run_id, self._name)
        return self._get()

    def _call(self, call: Callable[[WorkflowServiceApi], Any]) -> dict[str, Any]:
        assert self._api is not None
        try:
            answer = call(self._api)
        except ApiException:
            raise
        except Exception as exc:
            raise _RunError(f"Argo Server {self._api.api_client.configuration.host}: {exc}") from exc
        if hasattr(answer, "to_dict"):
            return dict(self._api.api_client.sanitize_for_serialization(answer))
        return dict(answer)

    def _get(self) -> dict[str, Any]:
        return self._call(lambda api: api.get_workflow(self._namespace, self._name, _check_return_type=False))

    def _until_done(self, workflow: dict[str, Any]) -> dict[str, Any]:
        while True:
            self._announce(workflow)
            if workflow.get("status", {}).get("phase") in _FINAL:
                return workflow
            if self._cancel.is_set():
                self._stop()
            version = workflow.get("metadata", {}).get("resourceVersion", "")
            try:
                for event in self._watch(version):
                    workflow = event
                    self._announce(workflow)
                    if self._cancel.is_set() and not self._stopped:
                        break
                    if workflow.get("status", {}).get("phase") in _FINAL:
                        return workflow
            except Exception as exc:  # the watch broke: get tells where the Workflow is
                log.info("run %s: watch of %s ended (%s); reading it", self.request.run_id, self._name, exc)
            workflow = self._get()
            if workflow.get("status", {}).get("phase") not in _FINAL and not self._cancel.is_set():
                self._cancel.wait(self.runner.poll_seconds)

    def _watch(self, version: str) -> Iterator[dict[str, Any]]:
        assert self._api is not None
        response = self._api.watch_workflows(
            self._namespace,
            list_options_field_selector=f"metadata.name={self._name}",
            list_options_resource_version=version,
            _preload_content=False,
        )
        try:
            buffer = b""
            for chunk in response.stream(4096):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        result = json.loads(line).get("result") or {}
                        if result.get("object"):
                            yield result["object"]
        finally:
            response.release_conn()

    # ---------------------------------------------------------------- nodes

    def _tasks(self, workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Task name -> its node (the Retry node, or the Pod itself without retries)."""
        name = workflow.get("metadata", {}).get("name", self._name)
        out: dict[str, dict[str, Any]] = {}
        for node in (workflow.get("status", {}).get("nodes") or {}).values():
            task = node.get("name", "").removeprefix(f"{name}.")
            if task != node.get("name") and "(" not in task:
                out[task] = node
        return out

    def _announce(self, workflow: dict[str, Any]) -> None:
        tasks = self._tasks(workflow)
        for step in self.request.model.steps:
            node = tasks.get(task_name(step.name))
            phase = node.get("phase", "") if node else ""
            before = self._seen.get(step.name, "")
            if not phase or phase == before or phase == "Pending":
                continue
            self._seen[step.name] = phase
            attempts = max(1, len(node.get("children") or []) if node else 1)
            if phase == "Running" and not before:
                self._emit(step.name, "started", 1, time.monotonic() - self._started)
            elif phase in _STEP_STATUS and phase != "Omitted":
                status = _STEP_STATUS[phase]
                if not before:
                    self._emit(step.name, "started", 1, time.monotonic() - self._started)
                self._emit(step.name, "finished", attempts, 0.0, status, (node or {}).get("message", ""))

    def _finish(self, workflow: dict[str, Any]) -> None:
        tasks = self._tasks(workflow)
        logs = self.request.run_dir / "logs"
        metrics_dir = self.request.run_dir / "metrics"
        logs.mkdir(parents=True, exist_ok=True)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        results: list[StepResult] = []
        merged: dict[str, float] = {}
        for step in self.request.model.steps:
            node = tasks.get(task_name(step.name))
            if node is None:
                status: StepStatus = "cancelled" if self._cancel.is_set() else "skipped"
                results.append(StepResult(name=step.name, status=status))
                continue
            status = _STEP_STATUS.get(node.get("phase", ""), "error")
            message = node.get("message", "")
            if status == "failed" and self._cancel.is_set():
                status = "cancelled"
            pods = [node["id"]] if not node.get("children") else list(node["children"])
            log_path = logs / f"{task_name(step.name)}.log"
            if status != "skipped":
                log_path.write_text("".join(self._pod_log(pod) for pod in pods))
            if status == "succeeded":
                metrics_path = metrics_dir / f"{task_name(step.name)}.json"
                metrics_path.write_text(_parameter(node, "metrics") or "")
                try:
                    merged.update(read_metrics(metrics_path))
                except ValueError as exc:
                    status, message = "failed", f"invalid metrics in FLYWHEEL_METRICS: {exc}"
            tail = "" if status == "succeeded" or not log_path.exists() else log_tail(log_path)
            results.append(
                StepResult(
                    name=step.name,
                    status=status,
                    attempts=len(pods),
                    log_path=log_path if log_path.exists() else None,
                    log_tail=tail,
                    message=message,
                )
            )
        phase = workflow.get("status", {}).get("phase", "")
        run_status: RunStatus = "succeeded"
        error = ""
        if self._cancel.is_set() and phase != "Succeeded":
            run_status, error = "cancelled", "the run was cancelled"
        elif phase != "Succeeded" or any(r.status != "succeeded" for r in results):
            failed = next((r for r in results if r.status in ("failed", "error")), None)
            run_status = "error" if failed is not None and failed.status == "error" else "failed"
            error = (
                f"step {failed.name}: {failed.message}"
                if failed
                else workflow["status"].get("message", phase)
            )
        (self.request.run_dir / "metrics.json").write_text(json.dumps(merged, indent=2, sort_keys=True))
        model_dir = None
        reference: Path | None = None
        if run_status == "succeeded":
            model_dir, reference = self.request.run_dir / "model", self.request.run_dir / "reference-data"
            try:
                self._artifacts().bring_model(self._name, model_dir)
                if not self._artifacts().bring_reference(self._name, reference):
                    reference = None
            except ArtifactsError as exc:
                run_status, error, model_dir, reference = "error", f"bring the model home: {exc}", None, None
        self._result = RunResult(
            run_id=self.request.run_id,
            status=run_status,
            steps=tuple(results),
            metrics=merged,
            model_dir=model_dir,
            reference_data=reference,
            environment_hash=self.request.environment_hash,
            image=self._image,
            error=error,
            duration_seconds=time.monotonic() - self._started,
        )
        self._done.set()

    def _pod_log(self, pod: str) -> str:
        assert self._api is not None
        try:
            response = self._api.pod_logs(
                self._namespace, self._name, pod, log_options_container="main", _preload_content=False
            )
            lines = []
            for raw in response.data.splitlines():
                if raw.strip():
                    lines.append((json.loads(raw).get("result") or {}).get("content", ""))
            return "".join(f"{line}\n" for line in lines)
        except Exception as exc:
            return f"==> flywheel: the log of pod {pod} could not be read: {exc}\n"

    def _artifacts(self) -> RunArtifacts:
        env = self.request.environment
        assert env is not None and env.artifacts is not None
        if self._store is None:
            self._store = run_artifacts(env.artifacts, self.runner.settings)
        return self._store

    def _end(self, status: RunStatus, error: str, workflow: dict[str, Any]) -> None:
        steps = tuple(StepResult(name=s.name, status="skipped") for s in self.request.model.steps)
        self._result = RunResult(
            run_id=self.request.run_id,
            status=status,
            steps=steps,
            environment_hash=self.request.environment_hash,
            image=self._image,
            error=error,
            duration_seconds=time.monotonic() - self._started,
        )
        self._done.set()


def _parameter(node: dict[str, Any], name: str) -> str | None:
    for parameter in (node.get("outputs") or {}).get("parameters") or []:
        if parameter.get("name") == name:
            value = parameter.get("value")
            return None if value is None else str(value)
    return None
