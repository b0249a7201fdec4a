"""One model server process of the embedded home: what to run, launching it, finding it again, stopping it.

:class:`~controller.backends.serving.local.LocalServing` uses these helpers,
and :mod:`.routers` to start the router process. What they pin down:

* **What runs.** For the ``sklearn`` and ``xgboost`` runtimes, MLServer (the
  server KServe runs for them) from the model's own virtualenv extended with
  :data:`RUNTIME_REQUIREMENTS` (:func:`serving_environment`), started as
  ``mlserver start <server dir>``. The server directory is ours: it gets a
  ``settings.json`` (loopback host, free HTTP/gRPC/metrics ports, no worker
  pool) and ``<model>/model-settings.json``, a copy of the artifact's own with
  ``name`` set to the Flywheel model name, ``parameters.version`` to the
  version label and ``parameters.uri`` made absolute; the artifact directory
  is only read. For the ``custom`` runtime, ``Serving.command`` runs in the
  model's source directory (the artifact directory when there is none) with
  the environment variables of :data:`CUSTOM_SERVER_ENV`, and must answer the
  same routes on ``FLYWHEEL_PORT`` (with ``/metrics`` on that port too).
* **Detached.** A server is started detached, in a new session
  (:func:`controller.backends.local.processes.spawn_detached`): it is no child
  of the controller, so it outlives a ``kill -9`` of the controller and never
  becomes the controller's zombie; being its own process group's leader, it
  is stopped with all its children by ``killpg``.
* **Recorded first.** A :class:`ProcessRecord` is written atomically into
  the server directory *before* the launch: what it serves (model, version;
  the directory names the environment), its ports, its launch plan and a
  fresh instance token the process carries as ``FLYWHEEL_INSTANCE``
  (:func:`controller.backends.local.processes.new_instance`); then again with
  the pid and the kernel's start time of that pid. A pid counts as the same
  process only when its start time matches (no pid reuse), and a zombie
  counts as gone.
* **Adopted, never doubled.** :func:`settle` finds the processes of a record
  again after a crash: an intent without a pid (the controller was killed
  around the launch) is adopted when a process carrying its token runs; a
  token the record superseded (a launch that was replaced before it was
  found) that still runs is ours from a killed launch and is stopped.
  :func:`stop_recorded` stops all of them. A process is never taken for ours,
  nor stopped, without its recorded pid and start time or its recorded token.
* **Ready, and ours.** A server is ready when ``GET /v2/health/ready`` and
  ``GET /v2/models/{name}/ready`` both answer 200. Something answering is not
  proof that it is ours: :func:`foreign_answer` checks that the process
  listening on the port carries the recorded token (records from before
  tokens: is the recorded process or its child) and that the model metadata
  (``GET /v2/models/{name}``) names our model and, when it reports one, our
  version.
* **Ports.** A port that cannot be bound is a :class:`PortInUse` error naming
  the port and the process that holds it (:func:`port_holder`: pid and
  command line, when this user may see them).
* **No secrets.** A server or router gets only the variables of
  :func:`serving_may_see` (``PATH``, ``HOME``, locale, ``TMPDIR``, ...),
  through the scrubbing that pipeline steps use too
  (:func:`~controller.backends.local.processes.scrubbed_environment`), plus
  what its launch plan sets; never the controller's tokens or secrets.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import shlex
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psutil

from controller.backends.local.processes import (
    ProcessError,
    find_instance,
    instance_of,
    is_alive,
    scrubbed_environment,
    spawn_detached,
    stop_process,
    uses_shell,
)
from controller.backends.python_env import PythonEnvironment
from controller.backends.serving import ServedVersion, ServingError

__all__ = [
    "CUSTOM_SERVER_ENV",
    "RUNTIME_REQUIREMENTS",
    "LaunchPlan",
    "PortHolder",
    "PortInUse",
    "ProcessRecord",
    "foreign_answer",
    "free_port",
    "http_json",
    "http_status",
    "is_ready",
    "launch",
    "local_path",
    "log_tail",
    "plan_custom_server",
    "plan_mlserver",
    "port_holder",
    "serving_environment",
    "serving_may_see",
    "settle",
    "stop_recorded",
    "superseding",
    "terminate",
]

log = logging.getLogger("flywheel.serving")

LOOPBACK = "127.0.0.1"

RUNTIME_REQUIREMENTS: Mapping[str, tuple[str, ...]] = {
    # Tested together with scikit-learn 1.4 to 1.9 on Python 3.11.
    "sklearn": ("mlserver==1.7.1", "mlserver-sklearn==1.7.1"),
    "xgboost": ("mlserver==1.7.1", "mlserver-xgboost==1.7.1"),
}
"""Packages added to a model's requirements to serve it with a built-in runtime."""

_MLSERVER_IMPLEMENTATIONS = {
    "sklearn": ("mlserver_sklearn.SKLearnModel", "model.joblib"),
    "xgboost": ("mlserver_xgboost.XGBoostModel", "model.bst"),
}

CUSTOM_SERVER_ENV: Mapping[str, str] = {
    "FLYWHEEL_HOST": "the address to listen on (127.0.0.1)",
    "FLYWHEEL_PORT": "the HTTP port to listen on, for the OIP v2 routes and /metrics",
    "FLYWHEEL_MODEL_DIR": "the artifact directory of the version (read only)",
    "FLYWHEEL_MODEL_NAME": "the model name, as in /v2/models/{name}",
    "FLYWHEEL_MODEL_VERSION": "the version label, e.g. v3",
}
"""The environment variables a custom server command gets, and what they mean."""

_ALLOWED_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})
_LOG_TAIL_LINES = 40


def serving_may_see(name: str) -> bool:
    """Whether a model server or router inherits the controller's variable ``name``: an allow-list
    (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``, ``TMPDIR``).
    The serving contract's variables (:data:`CUSTOM_SERVER_ENV`) and the virtualenv's are set by
    the launch plan, not inherited."""
    return name in _ALLOWED_ENV or name.startswith("LC_")

def serving_environment(base: PythonEnvironment, runtime: str) -> PythonEnvironment:
    """The model's environment plus the server packages of ``runtime`` (``custom``: unchanged)."""
    if runtime == "custom":
        return base
    extra = RUNTIME_REQUIREMENTS.get(runtime)
    if extra is None:
        raise ServingError(f"serving runtime {runtime!r} is not supported on the embedded home")
    requirements = base.requirements.rstrip("\n") + "\n" + "".join(f"{line}\n" for line in extra)
    return PythonEnvironment(requirements=requirements, python=base.python, platform=base.platform)


def local_path(uri: str, what: str) -> Path:
    """The local directory ``uri`` names (a path, or a ``file:`` URI); :class:`ServingError` otherwise."""
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return Path(unquote(parts.path))
    if parts.scheme == "" and uri:
        return Path(uri)
    raise ServingError(f"the embedded home serves from local directories; the {what} is at {uri!r}")


# ------------------------------------------------------------------ records


@dataclass(frozen=True, kw_only=True)
class ProcessRecord:
    """A process we started and may find again: a model server or a router.

    Written before the process is launched (``pid`` None: the intent) with
    the ``instance`` token the process carries as ``FLYWHEEL_INSTANCE`` (a
    router echoes it at ``/healthz`` too), then again with its pid.
    ``superseded`` keeps the tokens of earlier launches in the same place that
    were never found running, until :func:`settle` has looked for them. A
    server's record keeps its launch plan (``argv``, ``cwd``, ``env``:
    allow-listed variables only, no secret, no token), so a stopped server can
    be started again as it was, on the same ports.
    """

    pid: int | None  # None: about to be launched
    process_start: str | None  # the kernel's start time of pid (field 22 of /proc/PID/stat)
    port: int
    started_at: float  # unix time
    kind: str = "server"  # server | router
    model: str = ""
    version: str = ""
    runtime: str = ""
    metrics_port: int | None = None  # when metrics are not on ``port``
    grpc_port: int | None = None
    log: str = ""
    token: str = ""  # router only: the admin token
    instance: str = ""  # the token the process carries (FLYWHEEL_INSTANCE); a router echoes it at /healthz
    superseded: tuple[str, ...] = ()  # tokens of earlier launches here that may still run
    environment: str = ""  # router only
    argv: tuple[str, ...] = ()  # server only: the launch plan
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for p in (self.port, self.grpc_port, self.metrics_port) if p is not None)

    @property
    def plan(self) -> LaunchPlan | None:
        """The recorded launch plan; None for records written before plans were kept."""
        if not self.argv:
            return None
        return LaunchPlan(
            argv=self.argv, cwd=Path(self.cwd), env=self.env, port=self.port,
            metrics_port=self.metrics_port, grpc_port=self.grpc_port,
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port or self.port}/metrics"

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        """The record at ``path``; None when there is none or it cannot be read."""
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            data["argv"] = tuple(data.get("argv") or ())
            data["superseded"] = tuple(data.get("superseded") or ())
            return cls(**data)
        except (OSError, ValueError, TypeError, AttributeError):
            return None


# --------------------------------------------------------------------- plans


@dataclass(frozen=True, kw_only=True)
class LaunchPlan:
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    port: int
    metrics_port: int | None = None
    grpc_port: int | None = None


def _base_env(venv: Path | None) -> dict[str, str]:
    return scrubbed_environment(keep=serving_may_see, venv=venv)


def plan_mlserver(version: ServedVersion, *, venv: Path, server_dir: Path) -> LaunchPlan:
    """Write MLServer's settings for ``version`` into ``server_dir`` and say how to start it."""
    implementation = _MLSERVER_IMPLEMENTATIONS.get(version.serving.runtime)
    if implementation is None:
        raise ServingError(f"runtime {version.serving.runtime!r} is not served by MLServer")
    mlserver = venv / "bin" / "mlserver"
    if not mlserver.exists():
        raise ServingError(f"{venv} has no MLServer (expected {mlserver})")
    artifact = local_path(version.artifact_uri, "artifact").resolve()
    settings_file = artifact / "model-settings.json"
    model_settings: dict[str, Any] = {"implementation": implementation[0]}
    if settings_file.is_file():
        try:
            model_settings = json.loads(settings_file.read_text())
        except ValueError as exc:
            raise ServingError(f"{settings_file} is not valid JSON: {exc}") from exc
    parameters = dict(model_settings.get("parameters") or {})
    uri = Path(str(parameters.get("uri") or implementation[1]))
    parameters["uri"] = str(uri if uri.is_absolute() else (artifact / uri).resolve())
    parameters["version"] = version.version
    model_settings.update(name=version.model, parameters=parameters)
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": LOOPBACK,
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,
        "load_models_at_startup": True,
        "debug": False,
        "model_repository_root": str(server_dir),
    }
    model_dir = server_dir / version.model
    model_dir.mkdir(parents=True, exist_ok=True)
    (server_dir / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return LaunchPlan(
        argv=(str(mlserver), "start", str(server_dir)),
        cwd=server_dir,
        env=_base_env(venv),
        port=port,
        metrics_port=metrics_port,
        grpc_port=grpc_port,
    )


def plan_custom_server(version: ServedVersion, *, venv: Path | None) -> LaunchPlan:
    """How to start ``Serving.command`` for ``version``, with the :data:`CUSTOM_SERVER_ENV` variables."""
    command = (version.serving.command or "").strip()
    if not command:
        raise ServingError(f"model {version.model}: runtime custom needs serving.command")
    port = free_port()
    env = _base_env(venv)
    env.update(
        FLYWHEEL_HOST=LOOPBACK,
        FLYWHEEL_PORT=str(port),
        FLYWHEEL_MODEL_DIR=str(local_path(version.artifact_uri, "artifact").resolve()),
        FLYWHEEL_MODEL_NAME=version.model,
        FLYWHEEL_MODEL_VERSION=version.version,
    )
    argv = ("/bin/sh", "-c", command) if uses_shell(command) else tuple(shlex.split(command))
    cwd = local_path(version.source_uri or version.artifact_uri, "model's code").resolve()
    return LaunchPlan(argv=argv, cwd=cwd, env=env, port=port)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def launch(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path) -> int:
    """Start ``argv`` detached (a router or a server), with exactly ``env``; its pid."""
    try:
        return spawn_detached(argv, cwd=cwd, env=env, log=log)
    except ProcessError as exc:
        raise ServingError(str(exc)) from exc


def terminate(pid: int | None, process_start: str | None, *, grace_seconds: float) -> None:
    """Stop the recorded router or server with its process group (SIGTERM, then SIGKILL)."""
    try:
        stop_process(pid, process_start, grace_seconds=grace_seconds)
    except ProcessError as exc:
        raise ServingError(str(exc)) from exc


def settle(record: ProcessRecord, *, grace_seconds: float) -> ProcessRecord:
    """``record`` with its processes found again after a crash (the caller saves it when it changed).

    Each superseded token that a running process still carries is a launch of
    ours that was replaced before it was found: that process is stopped, and
    the token dropped. An intent without a pid is adopted when a process
    carrying its token runs (pid and start time filled in); when none does,
    it stays an intent: the launch never happened, or its process died.
    """
    for instance in record.superseded:
        found = find_instance(instance)
        if found is not None:
            what = "router" if record.kind == "router" else f"server of {record.model} {record.version}"
            log.warning("stopping pid %d: the %s of a replaced launch (%s)", found[0], what, instance)
            terminate(*found, grace_seconds=grace_seconds)
    settled = replace(record, superseded=())
    if record.pid is None and record.instance:
        found = find_instance(record.instance)
        if found is not None:
            settled = replace(settled, pid=found[0], process_start=found[1])
    return settled


def stop_recorded(record: ProcessRecord, *, grace_seconds: float) -> None:
    """Stop every process ``record`` knows of: its own (by pid and start time, or by its token when
    the pid was never recorded) and those of the launches it superseded."""
    settled = settle(record, grace_seconds=grace_seconds)
    carried = instance_of(settled.pid)
    if settled.pid is not None and (not record.instance or carried in (None, record.instance)):
        terminate(settled.pid, settled.process_start, grace_seconds=grace_seconds)


def superseding(old: ProcessRecord | None) -> tuple[str, ...]:
    """The tokens a new launch in ``old``'s place supersedes: those ``old`` did, and its own unless its
    process is known to be gone (recorded by pid, and not alive)."""
    if old is None:
        return ()
    gone = old.pid is not None and not is_alive(old.pid, old.process_start)
    return tuple(dict.fromkeys((*old.superseded, *(() if gone or not old.instance else (old.instance,)))))


def http_status(url: str, path: str, *, timeout: float = 2.0, method: str = "GET") -> int | None:
    """The HTTP status of ``method path`` on ``url`` (http://host:port), None when nothing answers."""
    return http_json(url, path, timeout=timeout, method=method)[0]


def http_json(url: str, path: str, *, timeout: float = 2.0, method: str = "GET") -> tuple[int | None, Any]:
    """The status and JSON body of ``method path`` on ``url``; (None, None) when nothing answers,
    and the body None when it is not JSON."""
    host_port = url.removeprefix("http://").rstrip("/")
    host, _, port = host_port.partition(":")
    connection = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read(1 << 20)
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        connection.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, None


def is_ready(url: str, model: str, *, timeout: float = 2.0) -> bool:
    """Both OIP v2 readiness routes of the server at ``url`` answer 200."""
    return (
        http_status(url, "/v2/health/ready", timeout=timeout) == 200
        and http_status(url, f"/v2/models/{model}/ready", timeout=timeout) == 200
    )


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.rstrip().splitlines()[-lines:])


# -------------------------------------------------------------------- ports


class PortInUse(ServingError):
    """A router or model server cannot listen on its port: another process holds it."""

    def __init__(self, message: str, *, port: int, holder: PortHolder | None = None) -> None:
        super().__init__(message)
        self.port = port
        self.holder = holder


@dataclass(frozen=True, kw_only=True)
class PortHolder:
    """Who listens on a port: pid and command line when this user may see them."""

    port: int
    pid: int | None = None
    command: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return f"port {self.port} is held by a process this user cannot see"
        return f"port {self.port} is held by pid {self.pid} ({self.command or 'command line not visible'})"


def port_holder(port: int) -> PortHolder | None:
    """Who holds ``port`` on loopback; None when it is free (a listener could bind it now)."""
    if _can_bind(port):
        return None
    try:
        listeners = [
            c for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
        ]
    except (psutil.Error, OSError):
        listeners = []
    pid = next((c.pid for c in listeners if c.pid is not None), None)
    if pid is None:
        return PortHolder(port=port)
    try:
        command = " ".join(shlex.join(psutil.Process(pid).cmdline()).split())  # on one line
    except (psutil.Error, OSError):
        command = ""
    if len(command) > 160:
        command = f"{command[:110]} ... {command[-45:]}"
    return PortHolder(port=port, pid=pid, command=command)


def _can_bind(port: int) -> bool:
    """Whether a listener could bind ``port`` on loopback now (with SO_REUSEADDR, as the servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _process_tree(pid: int) -> set[int]:
    try:
        process = psutil.Process(pid)
        return {pid, *(child.pid for child in process.children(recursive=True))}
    except psutil.Error:
        return {pid}


def foreign_answer(record: ProcessRecord) -> str | None:
    """Why the server answering on ``record``'s port is not the one recorded; None when it may be ours.

    Two proofs, each used when it can be had: the process listening on the
    port carries the recorded instance token (records without one: is the
    recorded process or its child; by pid, when visible), and the
    model metadata at ``/v2/models/{name}`` names our model and, when it says,
    our version (in ``versions`` or ``parameters.version``); MLServer, which
    does not say, must answer ``/v2/models/{name}/versions/{version}``.
    """
    holder = port_holder(record.port)
    if holder is not None and holder.pid is not None:
        if record.instance:
            if instance_of(holder.pid) != record.instance:
                return f"{holder.describe()}, not the server launched as {record.instance}"
        elif record.pid is not None and holder.pid not in _process_tree(record.pid):
            return holder.describe()
    status, metadata = http_json(record.url, f"/v2/models/{record.model}")
    if status != 200 or not isinstance(metadata, dict):
        return None  # the contract's metadata route is optional to this check
    name = metadata.get("name")
    if isinstance(name, str) and name != record.model:
        return f"port {record.port} answers for model {name!r}, not {record.model!r}"
    versions = metadata.get("versions")
    parameters = metadata.get("parameters")
    reported = parameters.get("version") if isinstance(parameters, dict) else None
    if isinstance(versions, list) and versions and record.version not in versions:
        return f"port {record.port} answers for versions {versions} of {record.model}, not {record.version}"
    if isinstance(reported, str) and reported and reported != record.version:
        return f"port {record.port} answers for {record.model} {reported}, not {record.version}"
    if record.runtime in _MLSERVER_IMPLEMENTATIONS:  # MLServer knows its version (parameters.version)
        versioned = http_status(record.url, f"/v2/models/{record.model}/versions/{record.version}")
        if versioned != 200:
            return f"port {record.port} has no version {record.version} of {record.model} ({versioned})"
    return None
