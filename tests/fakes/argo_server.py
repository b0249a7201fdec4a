"""A stand-in Argo Server that executes the Workflows submitted to it, for the argo runner's tests.

It answers the REST shapes of the Argo Server (v3.7.18's swagger) that the
``argo-workflows`` SDK calls: create (``POST /api/v1/workflows/{ns}``, 409
when the name is taken), get, list by label selector, stop, a pod's log
(newline-delimited ``{"result": {"content": …}}``) and the ``workflow-events``
watch (newline-delimited ``{"result": {"type", "object"}}``, from a
``resourceVersion`` on).

A created Workflow runs at once: its DAG's tasks start when the tasks in their
``depends`` succeeded (at most ``parallelism`` at a time); each task's
container command runs as a local subprocess with the container's ``env`` in a
temporary directory standing for the pod. Absolute paths the pod would see are
mapped into it: ``/flywheel/…`` into the pod's own directory, a
``volumeMount`` of a PersistentVolumeClaim into ``claims[claimName]`` (shared
by every pod, as a volume is), of an ``emptyDir`` into the pod's own. The image holds no code: a ``git`` input
artifact is cloned from its ``repo`` (a local path or ``file://`` URL here)
and checked out at its ``revision`` at its path, as Argo's init container
does, and the command runs in the container's ``workingDir``. Raw input
artifacts are written, ``s3`` ones downloaded from the bucket (a key, or the
files under ``key/`` for a directory) and output ``s3`` artifacts uploaded the
same way (``archive: none``), with the ``AWS_*`` credentials of the test
process standing for the Secret; output parameters are read from their paths
(their ``default`` when absent), ``retryStrategy.limit`` retries, a template's
``activeDeadlineSeconds`` kills an attempt and ``stop`` kills what runs. Pods
are named after their node id (the ``v1`` pod-name format the Workflows ask
for).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DONE = ("Succeeded", "Failed", "Error")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeArgoServer:
    """The stand-in; use as a context manager (started on enter, stopped and cleaned on exit)."""

    def __init__(self, *, token: str | None = None, python: Path | None = None) -> None:
        self.token = token
        # the "image": the Python whose bin/ a step's PATH starts with (default: the tests' own)
        self.python = python or Path(sys.executable)
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[str] = []  # names, in order of creation (a refused duplicate is not counted)
        self.submitted: list[str] = []  # names of every create asked for, refused duplicates included
        self.stopped: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.claims: dict[str, Path] = {}
        self.logs: dict[str, bytes] = {}  # pod name -> its log
        self._root = Path(tempfile.mkdtemp(prefix="fake-argo-"))
        self._versions = itertools.count(1)
        self._changed = threading.Condition()
        self._stop_flags: dict[str, threading.Event] = {}
        self._runners: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def claim(self, name: str) -> Path:
        """The local directory standing for the PersistentVolumeClaim ``name``."""
        if name not in self.claims:
            self.claims[name] = self._root / "claims" / name
            self.claims[name].mkdir(parents=True)
        return self.claims[name]

    def start(self) -> FakeArgoServer:
        fake = self

        class Handler(_Handler):
            argo = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        for flag in self._stop_flags.values():
            flag.set()
        for runner in self._runners:
            runner.join(10)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> FakeArgoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_done(self, name: str, namespace: str = "default", timeout: float = 60) -> dict[str, Any]:
        """The Workflow once it has ended."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self.workflows[(namespace, name)]["status"].get("phase") in DONE, timeout
            )
            assert ok, f"workflow {name} still running"
            return copy.deepcopy(self.workflows[(namespace, name)])

    # ---------------------------------------------------------------- API

    def create(self, namespace: str, workflow: dict[str, Any]) -> tuple[int, Any]:
        name = workflow["metadata"]["name"]
        with self._changed:
            self.submitted.append(name)
            if (namespace, name) in self.workflows:
                return 409, {"code": 6, "message": f'workflows.argoproj.io "{name}" already exists'}
            workflow = copy.deepcopy(workflow)
            metadata = workflow["metadata"]
            metadata.update(
                namespace=namespace,
                uid=hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:32],
                creationTimestamp=_now(),
            )
            workflow["status"] = {"phase": "Running", "startedAt": _now(), "nodes": {}}
            self.workflows[(namespace, name)] = workflow
            self.created.append(name)
            self._touch(workflow)
            self._stop_flags[name] = threading.Event()
            answer = copy.deepcopy(workflow)
        runner = threading.Thread(target=self._execute, args=(namespace, name), daemon=True)
        self._runners.append(runner)
        runner.start()
        return 200, answer

    def _touch(self, workflow: dict[str, Any]) -> None:
        workflow["metadata"]["resourceVersion"] = str(next(self._versions))
        self._changed.notify_all()

    def list(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        with self._changed:
            return [
                copy.deepcopy(w)
                for (ns, _), w in self.workflows.items()
                if ns == namespace
                and all(w["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
            ]

    def request_stop(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._changed:
            workflow = self.workflows.get((namespace, name))
            if workflow is None:
                return None
            self.stopped.append(name)
            self._stop_flags[name].set()
            workflow["spec"]["shutdown"] = "Stop"
            self._touch(workflow)
            return copy.deepcopy(workflow)

    # ------------------------------------------------------------ executor

    def _execute(self, namespace: str, name: str) -> None:
        workflow = self.workflows[(namespace, name)]
        spec = workflow["spec"]
        templates = {t["name"]: t for t in spec["templates"]}
        tasks = {t["name"]: t for t in templates[spec["entrypoint"]]["dag"]["tasks"]}
        needs = {
            n: [d.strip() for d in t.get("depends", "").split("&&") if d.strip()] for n, t in tasks.items()
        }
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        stop = self._stop_flags[name]
        phases: dict[str, str] = {}
        lock = threading.Lock()
        slots = threading.Semaphore(int(spec.get("parallelism", 1 << 20)))
        threads: dict[str, threading.Thread] = {}

        def run_task(task: str) -> None:
            with slots:
                phase = self._run_task(
                    workflow, name, task, templates[tasks[task]["template"]], volumes, stop
                )
            with lock:
                phases[task] = phase

        while True:
            with lock:
                for task, deps in needs.items():
                    if task in threads or task in phases:
                        continue
                    if any(phases.get(d) in ("Failed", "Error", "Omitted") for d in deps) or stop.is_set():
                        phases[task] = "Omitted"
                        self._node(workflow, name, task, {"phase": "Omitted", "type": "Skipped"})
                    elif all(phases.get(d) == "Succeeded" for d in deps):
                        threads[task] = threading.Thread(target=run_task, args=(task,), daemon=True)
                        threads[task].start()
                if len(phases) == len(tasks):
                    break
            stop.wait(0.02)
        failed = [t for t, p in phases.items() if p in ("Failed", "Error")]
        with self._changed:
            status = workflow["status"]
            if stop.is_set():
                status["phase"], status["message"] = "Failed", "Stopped with strategy 'Stop'"
            elif failed:
                status["phase"], status["message"] = "Failed", f"child '{failed[0]}' failed"
            else:
                status["phase"] = "Succeeded"
            status["finishedAt"] = _now()
            self._touch(workflow)

    def _node(
        self, workflow: dict[str, Any], name: str, task: str, fields: dict[str, Any], attempt: int = -1
    ) -> str:
        node_name = f"{name}.{task}" + (f"({attempt})" if attempt >= 0 else "")
        node_id = f"{name}-{int(hashlib.sha256(node_name.encode()).hexdigest()[:8], 16)}"
        with self._changed:
            nodes = workflow["status"]["nodes"]
            node = nodes.setdefault(
                node_id,
                {
                    "id": node_id,
                    "name": node_name,
                    "displayName": task if attempt < 0 else f"{task}({attempt})",
                },
            )
            node.update(fields)
            self._touch(workflow)
        return node_id

    def _run_task(
        self,
        workflow: dict[str, Any],
        name: str,
        task: str,
        template: dict[str, Any],
        volumes: dict[str, Any],
        stop: threading.Event,
    ) -> str:
        retries = int(template.get("retryStrategy", {}).get("limit", 0))
        kind = "Retry" if "retryStrategy" in template else "Pod"
        parent = self._node(
            workflow,
            name,
            task,
            {"type": kind, "phase": "Running", "templateName": template["name"], "startedAt": _now()},
        )
        phase, message, outputs = "Failed", "", {}
        for attempt in range(retries + 1):
            pod = parent
            if kind == "Retry":
                pod = self._node(
                    workflow,
                    name,
                    task,
                    {
                        "type": "Pod",
                        "phase": "Running",
                        "templateName": template["name"],
                        "startedAt": _now(),
                    },
                    attempt,
                )
                with self._changed:
                    children = workflow["status"]["nodes"][parent].setdefault("children", [])
                    children.append(pod)
            phase, message, outputs = self._run_pod(pod, template, volumes, stop)
            fields: dict[str, Any] = {"phase": phase, "message": message, "finishedAt": _now()}
            if outputs:
                fields["outputs"] = outputs
            if kind == "Retry":
                self._node(workflow, name, task, fields, attempt)
            if phase == "Succeeded" or stop.is_set():
                break
        fields = {"phase": phase, "message": message, "finishedAt": _now()}
        if outputs:
            fields["outputs"] = outputs
        self._node(workflow, name, task, fields)
        return phase

    def _run_pod(
        self, pod: str, template: dict[str, Any], volumes: dict[str, Any], stop: threading.Event
    ) -> tuple[str, str, dict[str, Any]]:
        container = template["container"]
        pod_dir = self._root / "pods" / pod
        shutil.rmtree(pod_dir, ignore_errors=True)
        pod_dir.mkdir(parents=True)
        mounts: dict[str, Path] = {"/flywheel": pod_dir / "flywheel"}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:  # the pod's own
                mounted = pod_dir / "volumes" / mount["name"]
                mounted.mkdir(parents=True, exist_ok=True)
                mounts[mount["mountPath"].rstrip("/")] = mounted
                continue
            claim = volume["persistentVolumeClaim"]["claimName"]
            mounted = self.claim(claim) / mount.get("subPath", "")
            mounted.mkdir(parents=True, exist_ok=True)  # as the kubelet makes a missing subPath
            mounts[mount["mountPath"].rstrip("/")] = mounted

        def local(path: str) -> str:
            for prefix in sorted(mounts, key=len, reverse=True):
                if path == prefix or path.startswith(prefix + "/"):
                    return str(mounts[prefix]) + path[len(prefix) :]
            return path

        for artifact in template.get("inputs", {}).get("artifacts", []):
            target = Path(local(artifact["path"]))
            target.parent.mkdir(parents=True, exist_ok=True)
            if "raw" in artifact:
                target.write_text(artifact["raw"]["data"])
            elif "git" in artifact:
                failed = _checkout(artifact["git"], target)
                if failed:
                    self.logs[pod] = failed.encode()
                    return "Error", f"failed to load artifacts: {failed}", {}
            elif "s3" in artifact:
                found = _s3_load(artifact["s3"], target)
                if not found and not artifact.get("optional"):
                    self.logs[pod] = f"{artifact['s3']['key']}: no such key".encode()
                    return "Error", f"failed to load artifacts: {artifact['s3']['key']} not found", {}
        workdir = Path(local(container.get("workingDir", "/")))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
        # the image's Python is the one running the tests (it has the example models' requirements)
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        env.update({e["name"]: local(e["value"]) for e in container.get("env", [])})
        argv = [local(a) for a in container["command"]]
        deadline = float(template.get("activeDeadlineSeconds", 0)) or None
        with open(pod_dir / "log", "wb") as log:
            try:
                proc = subprocess.Popen(
                    argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            except OSError as exc:
                self.logs[pod] = str(exc).encode()
                return "Error", f"failed to start: {exc}", {}
            phase, message = "Succeeded", ""
            try:
                waited = 0.0
                while proc.poll() is None:
                    if stop.wait(0.02):
                        os.killpg(proc.pid, signal.SIGKILL)
                        phase, message = "Failed", "Stopped with strategy 'Stop'"
                        break
                    waited += 0.02
                    if deadline is not None and waited >= deadline:
                        os.killpg(proc.pid, signal.SIGKILL)
                        phase, message = (
                            "Failed",
                            "Pod was active on the node longer than the specified deadline",
                        )
                        break
            finally:
                proc.wait()
        self.logs[pod] = (pod_dir / "log").read_bytes()
        if phase == "Succeeded" and proc.returncode != 0:
            phase, message = "Failed", f"Error (exit code {proc.returncode})"
        outputs: dict[str, Any] = {}
        if phase == "Succeeded":
            parameters = []
            for parameter in template.get("outputs", {}).get("parameters", []):
                source = Path(local(parameter["valueFrom"]["path"]))
                value = source.read_text() if source.exists() else parameter["valueFrom"].get("default")
                parameters.append({"name": parameter["name"], "value": value})
            outputs = {"parameters": parameters}
            for artifact in template.get("outputs", {}).get("artifacts", []):
                source = Path(local(artifact["path"]))
                if not source.exists():
                    if artifact.get("optional"):
                        continue
                    return "Error", f"failed to save outputs: {artifact['path']} does not exist", {}
                _s3_save(artifact["s3"], source)
        return phase, message, outputs


def _s3_client(location: dict[str, Any]) -> Any:
    """A boto3 client of the artifact's bucket; the ``AWS_*`` variables stand for the pod's Secret."""
    import boto3

    scheme = "http" if location.get("insecure") else "https"
    return boto3.client("s3", endpoint_url=f"{scheme}://{location['endpoint']}", region_name="us-east-1")


def _s3_load(location: dict[str, Any], target: Path) -> bool:
    """Download a key (a file) or every key under ``key/`` (a directory), as Argo's S3 driver does."""
    client, bucket, key = _s3_client(location), location["bucket"], location["key"]
    try:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/").get("Contents", [])
        if listed:
            for item in listed:
                local = target / item["Key"][len(key) + 1 :]
                local.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(local))
            return True
        if client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0):
            client.download_file(bucket, key, str(target))
            return True
        return False
    finally:
        client.close()


def _s3_save(location: dict[str, Any], source: Path) -> None:
    """Upload a file at ``key``, a directory's files under ``key/`` (``archive: none``)."""
    client, bucket, key = _s3_client(location), location["bucket"], location["key"]
    try:
        if source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                client.upload_file(str(path), bucket, f"{key}/{path.relative_to(source).as_posix()}")
        else:
            client.upload_file(str(source), bucket, key)
    finally:
        client.close()


def _checkout(git: dict[str, Any], target: Path) -> str:
    """Clone ``git["repo"]`` into ``target`` at ``git["revision"]``; what went wrong, or ``""``."""
    for args in (
        ["git", "clone", "--quiet", "--no-checkout", git["repo"], str(target)],
        ["git", "-C", str(target), "checkout", "--quiet", "--detach", git.get("revision", "HEAD")],
    ):
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"{' '.join(args[:4])}: {done.stderr.strip()}"
    return ""


class _Handler(BaseHTTPRequestHandler):
    argo: FakeArgoServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def _send(self, status: int, answer: Any) -> None:
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, lines: Any) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for line in lines:
                data = json.dumps(line).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _serve(self) -> None:
        argo = self.argo
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        argo.requests.append((self.command, url.path))
        if argo.token is not None and self.headers.get("Authorization") != f"Bearer {argo.token}":
            self._send(401, {"code": 16, "message": "token not valid"})
            return
        parts = url.path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "workflows"] and len(parts) == 4 and self.command == "POST":
            status, answer = argo.create(parts[3], body["workflow"])
            self._send(status, answer)
        elif parts[:3] == ["api", "v1", "workflows"] and len(parts) == 4:
            items = argo.list(parts[3], query.get("listOptions.labelSelector", ""))
            self._send(200, {"metadata": {}, "items": items or None})
        elif parts[:3] == ["api", "v1", "workflows"] and len(parts) == 5:
            found = argo.workflows.get((parts[3], parts[4]))
            if found is None:
                self._send(404, {"code": 5, "message": f'workflows.argoproj.io "{parts[4]}" not found'})
            else:
                with argo._changed:
                    self._send(200, copy.deepcopy(found))
        elif parts[:3] == ["api", "v1", "workflows"] and len(parts) == 6 and parts[5] == "stop":
            stopped = argo.request_stop(parts[3], parts[4])
            self._send(404 if stopped is None else 200, stopped or {"code": 5, "message": "not found"})
        elif parts[:3] == ["api", "v1", "workflows"] and len(parts) == 7 and parts[6] == "log":
            content = argo.logs.get(parts[5], b"").decode(errors="replace")
            self._stream({"result": {"content": line, "podName": parts[5]}} for line in content.splitlines())
        elif parts[:3] == ["api", "v1", "workflow-events"] and len(parts) == 4:
            self._stream(self._events(parts[3], query))
        else:
            self._send(404, {"code": 5, "message": f"no route {url.path}"})

    def _events(self, namespace: str, query: dict[str, str]) -> Any:
        argo = self.argo
        selector = query.get("listOptions.fieldSelector", "")
        name = selector.removeprefix("metadata.name=") if selector.startswith("metadata.name=") else None
        seen = int(query.get("listOptions.resourceVersion") or 0)
        while True:
            with argo._changed:
                argo._changed.wait_for(
                    lambda: any(
                        int(w["metadata"]["resourceVersion"]) > seen  # noqa: B023 - waited for here
                        for (ns, n), w in argo.workflows.items()
                        if ns == namespace and (name is None or n == name)
                    ),
                    1.0,
                )
                fresh = [
                    copy.deepcopy(w)
                    for (ns, n), w in argo.workflows.items()
                    if ns == namespace
                    and (name is None or n == name)
                    and int(w["metadata"]["resourceVersion"]) > seen
                ]
            for workflow in fresh:
                seen = max(seen, int(workflow["metadata"]["resourceVersion"]))
                yield {"result": {"type": "MODIFIED", "object": workflow}}
                if workflow["status"].get("phase") in DONE:
                    return
            if argo._server is None:
                return
