"""Processes of the embedded home: their environment, their command line, starting and stopping them.

The local pipeline runner (:mod:`controller.backends.pipelines.local`) and
local serving (:mod:`controller.backends.serving.local`) both start processes
for a model's code, and both use what is here:

* :func:`scrubbed_environment`: a child sees only the controller's variables
  its caller's allow-list lets through (never the controller's tokens and
  secrets), with the model's virtualenv first on ``PATH``;
* :func:`uses_shell`: whether a command from a spec needs ``/bin/sh -c`` or
  can be executed directly;
* :func:`spawn_detached`, :func:`is_alive`, :func:`stop_process`: a process
  started in a new session by a short-lived launcher, so that it is no child
  of the controller (it outlives a ``kill -9`` of the controller and never
  becomes its zombie); recorded by pid and the kernel's start time of that
  pid, so a pid that was reused is never taken for it; stopped with its whole
  process group (``killpg``: it leads its session);
* :func:`new_instance`, :func:`instance_of`, :func:`find_instance`: the
  identity a process is launched with. The caller records a fresh instance
  token (with what the process is for) *before* the launch and gives it to the
  process as ``FLYWHEEL_INSTANCE`` in its environment; the kernel keeps the
  environment a process was started with, so psutil reads the token back from
  the process itself (and from its children, which inherit it). A controller
  killed between the launch and recording the pid finds the process again by
  its token, and a process that answers on a port proves it is the one
  recorded by the token it carries, not by answering.

Failures are :class:`ProcessError`; each backend says them in its own terms.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

__all__ = [
    "INSTANCE_ENV",
    "ProcessError",
    "find_instance",
    "instance_of",
    "is_alive",
    "new_instance",
    "process_start_time",
    "scrubbed_environment",
    "spawn_detached",
    "stop_process",
    "uses_shell",
]

_SHELL_CHARS = frozenset("|&;<>()$`*?~\n")
_SHELL_BUILTINS = frozenset(
    {"cd", "export", "source", ".", "set", "unset", "exec", "eval", "if", "for", "while", "case", "test", "["}
)
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

INSTANCE_ENV = "FLYWHEEL_INSTANCE"
"""The variable a launched process carries its instance token in (see :func:`find_instance`)."""
LAUNCHING_ENV = "FLYWHEEL_LAUNCHING"
"""The variable the short-lived launcher carries the token of the launch it makes in: while it runs, a
launch is in flight, and :func:`find_instance` waits for it to end before it says none runs."""
_LAUNCH_SECONDS = 30.0  # the longest a launcher may take (spawn_detached's own timeout)

# The launcher: starts the process in a new session with its output in the log file, prints its pid
# and exits at once, so the process is re-parented away from the controller.
_LAUNCHER = """\
import json, os, subprocess, sys
spec = json.loads(sys.stdin.read())
with open(spec["log"], "ab") as log:
    proc = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=spec["env"], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
print(proc.pid, flush=True)
os._exit(0)
"""


class ProcessError(RuntimeError):
    """A process could not be started or stopped; the message says which and why."""


def scrubbed_environment(*, keep: Callable[[str], bool], venv: Path | None = None) -> dict[str, str]:
    """The environment of a process the controller starts: its own variables that ``keep`` lets through,
    with ``venv``'s ``bin`` first on ``PATH`` and ``VIRTUAL_ENV`` set when a virtualenv is given, and
    ``PYTHONUNBUFFERED=1``. Pipeline steps and model servers each pass their own allow-list."""
    env = {name: value for name, value in os.environ.items() if keep(name)}
    if venv is not None:
        env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", os.defpath)])
        env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def uses_shell(command: str) -> bool:
    """Whether ``command`` needs ``/bin/sh -c`` rather than a direct exec.

    It does when it uses shell syntax (``| & ; < > ( ) $ `` ` `` ``* ? ~``, a
    newline), starts with a ``VAR=value`` assignment or a shell builtin such
    as ``cd``. Quoting is honoured: ``python -c 'import a; a.f()'`` execs
    directly, since the ``;`` is inside single quotes; ``$`` and backticks
    still count inside double quotes, where the shell would expand them.
    """
    quote = ""
    for char in command:
        if quote == "'":
            if char == "'":
                quote = ""
        elif quote == '"':
            if char == '"':
                quote = ""
            elif char in "$`":
                return True
        elif char in "'\"":
            quote = char
        elif char in _SHELL_CHARS:
            return True
    words = command.split()
    return bool(words) and (words[0] in _SHELL_BUILTINS or bool(_ASSIGNMENT.match(words[0])))


def spawn_detached(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path) -> int:
    """Start ``argv`` in a new session, detached from this process, with exactly ``env``; its pid."""
    spec = json.dumps({"argv": list(argv), "cwd": str(cwd), "env": dict(env), "log": str(log)})
    # The launcher sees no more than what it starts, and not its instance token: only the process carries
    # it. The launcher carries the token as the launch it makes, so that a controller killed during the
    # launch, restarted, waits for the launcher to end before it looks for the process.
    launcher_env = {name: value for name, value in env.items() if name != INSTANCE_ENV}
    if env.get(INSTANCE_ENV):
        launcher_env[LAUNCHING_ENV] = env[INSTANCE_ENV]
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _LAUNCHER], input=spec, capture_output=True, text=True,
            timeout=30, check=False, env=launcher_env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProcessError(f"cannot start {argv[0]}: {exc}") from exc
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        message = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProcessError(f"cannot start {shlex.join(argv)} in {cwd}: {message}")
    return int(done.stdout.strip())


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    return [text[: text.index(" ")], "comm", *text[text.rindex(")") + 2 :].split()]


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None without /proc."""
    fields = _stat(pid)
    return fields[21] if fields and len(fields) > 21 else None


def is_alive(pid: int | None, process_start: str | None) -> bool:
    """Whether ``pid`` is the process that was recorded: running, not a zombie, same start time."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields is None:
        return not Path("/proc/self/stat").exists()  # no /proc here: trust kill(0)
    if fields[2] in ("Z", "X"):
        return False
    return process_start is None or fields[21] == process_start


def stop_process(pid: int | None, process_start: str | None, *, grace_seconds: float = 5.0) -> None:
    """Stop the recorded process and its process group: SIGTERM, then SIGKILL after ``grace_seconds``."""
    if pid is None:
        return
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        if not is_alive(pid, process_start):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # a session leader: pgid == pid
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
            if not is_alive(pid, process_start):
                return
            time.sleep(0.02)
    if is_alive(pid, process_start):
        raise ProcessError(f"process {pid} did not stop")


def new_instance() -> str:
    """A fresh instance token: recorded before a launch, carried by the process as ``FLYWHEEL_INSTANCE``."""
    return secrets.token_hex(8)


def instance_of(pid: int | None) -> str | None:
    """The instance token ``pid`` was started with; None when it has none, is gone or cannot be read."""
    if pid is None:
        return None
    try:
        return psutil.Process(pid).environ().get(INSTANCE_ENV)
    except (psutil.Error, OSError):
        return None


def find_instance(instance: str) -> tuple[int, str | None] | None:
    """The running process launched with ``instance`` (the leader of its session, which its children
    share), as ``(pid, start time)``; None when no process of this user carries it.

    Reads every visible process's environment (processes of other users are
    not visible, and never ours), so call it when a recorded launch has to be
    found again, not on every request.
    """
    if not instance:
        return None
    deadline = time.monotonic() + _LAUNCH_SECONDS
    while True:
        carriers = _carriers(INSTANCE_ENV, instance)
        # A launcher still running with this token: a controller was killed while it launched, and the
        # process may not run yet. Wait for the launcher to end (it exits as soon as it has started it).
        if carriers or not _carriers(LAUNCHING_ENV, instance) or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if not carriers:
        return None
    leaders = [pid for pid in carriers if _session_of(pid) == pid]
    pid = min(leaders or carriers)
    return pid, process_start_time(pid)


def _carriers(variable: str, instance: str) -> list[int]:
    """The live (not zombie) processes whose environment has ``variable`` set to ``instance``."""
    found: list[int] = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(variable) == instance and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (psutil.Error, OSError):
            continue
    return found


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
