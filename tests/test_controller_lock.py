"""One controller per state directory: `flywheel run` and `serve` hold an OS lock on it while they run.

Pins down: a second lock attempt on a held directory fails and names the
holder (process id, host, since when); a second ``flywheel run`` exits 1 with
that one line, while read-only commands and decisions keep working beside the
running controller; the kernel frees the lock when its holder is killed with
``kill -9``, so the next controller starts without any clean-up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pytest
from click.testing import CliRunner

from controller.backends.local.lock import LOCK_FILE, ControllerLock, StateDirBusy, StateDirError
from controller.backends.store import open_store
from controller.cli import main
from controller.clock import SYSTEM_CLOCK, FakeClock

pytestmark = pytest.mark.integration
FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
CLOCK = FakeClock(datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC))


def _empty_repo(path: Path) -> Path:
    """A repository whose main has no models: a controller on it trains nothing."""
    repo = pygit2.init_repository(str(path), initial_head="main")
    signature = pygit2.Signature("t", "t@example.com")
    repo.create_commit("refs/heads/main", signature, signature, "empty", repo.TreeBuilder().write(), [])
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")} | {"PYTHONUNBUFFERED": "1"}


def _wait_for_holder(state: Path, pid: int, process: subprocess.Popen[bytes], log: Path) -> None:
    limit = time.monotonic() + 60
    while f'"pid": {pid}' not in ((state / LOCK_FILE).read_text() if (state / LOCK_FILE).exists() else ""):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < limit, log.read_text()
        time.sleep(0.1)


def test_a_second_lock_on_a_held_state_directory_names_the_holder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with ControllerLock.acquire(state, clock=CLOCK):
        with pytest.raises(StateDirBusy) as busy:
            ControllerLock.acquire(state, clock=CLOCK)
        assert busy.value.holder == {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": "2026-03-04T05:06:07+00:00",
        }
        message = str(busy.value)
        assert f"process {os.getpid()} on {socket.gethostname()} since 2026-03-04 05:06:07 UTC" in message
        assert str(state.resolve()) in message and "\n" not in message
    with ControllerLock.acquire(state, clock=CLOCK):  # released on leaving the block
        pass


def test_a_state_directory_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StateDirError, match=r"cannot use the state directory .*/file/state: Not a directory"):
        ControllerLock.acquire(tmp_path / "file" / "state", clock=CLOCK)


def test_second_controller_exits_with_the_first_ones_identity_and_kill_9_frees_the_lock(
    tmp_path: Path,
) -> None:
    repo, state, log = _empty_repo(tmp_path / "ml"), tmp_path / "state", tmp_path / "first.log"
    where = ["--repo", str(repo), "--state-dir", str(state)]
    with log.open("wb") as out:
        first = subprocess.Popen(
            [FLYWHEEL, "run", *where, "--interval", "1"], stdout=out, stderr=subprocess.STDOUT, env=_env()
        )
    try:
        _wait_for_holder(state, first.pid, first, log)
        second = subprocess.run(
            [FLYWHEEL, "run", *where, "--once"], capture_output=True, text=True, env=_env(), timeout=60
        )
        assert second.returncode == 1
        (line,) = second.stderr.splitlines()
        assert line.startswith(
            f"Error: another controller is running on {state.resolve()} (process {first.pid}"
        )
        assert f"on {socket.gethostname()} since " in line
        serve = subprocess.run(
            [FLYWHEEL, "serve", *where, "--port", "1"],
            capture_output=True,
            text=True,
            env=_env() | {"FLYWHEEL_GITHUB_WEBHOOK_SECRET": "s"},
            timeout=60,
        )
        assert serve.returncode == 1 and f"(process {first.pid}" in serve.stderr

        # Reading and deciding take no lock: they work while the controller runs.
        for command in (["models"], ["audit"], ["review", "ls"], ["cache", "ls"]):
            result = CliRunner().invoke(main, [*command, "--state-dir", str(state)])
            assert result.exit_code == 0, (command, result.output)

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        third = subprocess.run(
            [FLYWHEEL, "run", *where, "--once"], capture_output=True, text=True, env=_env(), timeout=60
        )
        assert third.returncode == 0, third.stderr
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)


def test_the_lock_is_held_for_the_controllers_lifetime_and_released_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While ``flywheel run`` runs, its state directory is locked; when it returns, it is not."""
    import controller.app

    repo, state = _empty_repo(tmp_path / "ml"), tmp_path / "state"
    seen: list[str] = []
    real = controller.app.run_controller

    def run_controller(*args: object, **kwargs: object) -> int:
        try:
            ControllerLock.acquire(state, clock=CLOCK)
        except StateDirBusy as busy:
            seen.append(str(busy.holder["pid"]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(controller.app, "run_controller", run_controller)
    result = CliRunner().invoke(main, ["run", "--repo", str(repo), "--state-dir", str(state), "--once"])
    assert result.exit_code == 0, result.output
    assert seen == [str(os.getpid())]
    ControllerLock.acquire(state, clock=CLOCK).release()
    open_store(state, clock=SYSTEM_CLOCK).close()  # the store is there, and usable
