"""``flywheel serve``: the webhook service and the controller in one process, on one state directory.

Pins down: it refuses to start without a webhook secret; started with one,
it answers /healthz, accepts a signed delivery (202) and refuses a forged
one (401), and its controller handles the delivered events from the inbox
(completed, no error), serves the dashboard under /ui, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from controller.backends.serving.server import free_port
from controller.backends.store import open_store
from controller.clock import SYSTEM_CLOCK
from controller.scaffold import scaffold

pytestmark = pytest.mark.integration
FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
SECRET = "It's a Secret to Everybody"


def _wait_healthy(port: int, log: Path) -> None:
    """Until ``flywheel serve`` on ``port`` answers ``/healthz`` 200 (a minute at most; then its log)."""
    limit = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                assert response.status == 200
                return
        except OSError:
            assert time.monotonic() < limit, log.read_text()
            time.sleep(0.3)


def _post(port: int, kind: str, delivery: str, payload: dict[str, object], *, secret: str = SECRET) -> int:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hooks/github",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": kind,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_serve_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    scaffold(tmp_path / "ml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    done = subprocess.run(
        [FLYWHEEL, "serve", "--repo", str(tmp_path / "ml"), "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode != 0 and "FLYWHEEL_GITHUB_WEBHOOK_SECRET" in done.stderr


def test_serve_receives_deliveries_and_the_controller_handles_them(tmp_path: Path) -> None:
    repo, state, port = tmp_path / "ml", tmp_path / "state", free_port()
    scaffold(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env["FLYWHEEL_GITHUB_WEBHOOK_SECRET"] = SECRET
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            FLYWHEEL,
            "serve",
            "--repo",
            str(repo),
            "--state-dir",
            str(state),
            "--port",
            str(port),
            "--interval",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_healthy(port, tmp_path / "serve.log")
        assert _post(port, "ping", "d-1", {"zen": "Keep it logically awesome.", "hook_id": 1}) == 202
        assert _post(port, "ping", "d-2", {"zen": "forged"}, secret="wrong") == 401
        push = {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": "1" * 40,
            "repository": {"full_name": "o/r"},
        }
        assert _post(port, "push", "d-3", push) == 202
        # The dashboard is mounted at /ui, its links and its API under it.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/api/v1/models", timeout=5) as response:
            assert json.load(response)["total"] == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/", timeout=5) as response:
            page = response.read().decode()
        assert "no model versions registered yet" in page
        assert f'href="http://127.0.0.1:{port}/ui/static/style.css"' in page
        store = open_store(state, clock=SYSTEM_CLOCK)
        try:
            limit = time.monotonic() + 30
            while True:
                events = {e.delivery_id: e for e in (store.get_event(i) for i in (1, 2))}
                if all(e.completed_at is not None for e in events.values()):
                    break
                assert time.monotonic() < limit, events
                time.sleep(0.3)
            assert set(events) == {"d-1", "d-3"}  # the forged one never reached the inbox
            assert [e.error for e in events.values()] == [None, None]
        finally:
            store.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        log.close()


def test_serve_without_a_controller_only_receives_into_the_shared_inbox(tmp_path: Path) -> None:
    """A receiver replica: deliveries reach the inbox and wait there for a controller; nothing else runs."""
    repo, state, port = tmp_path / "ml", tmp_path / "state", free_port()
    scaffold(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env["FLYWHEEL_GITHUB_WEBHOOK_SECRET"] = SECRET
    log = (tmp_path / "serve.log").open("wb")
    command = [FLYWHEEL, "serve", "--no-controller", "--repo", str(repo), "--state-dir", str(state)]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_healthy(port, tmp_path / "serve.log")
        assert _post(port, "ping", "d-1", {"zen": "Keep it logically awesome.", "hook_id": 1}) == 202
        assert _post(port, "ping", "d-2", {"zen": "forged"}, secret="wrong") == 401
        time.sleep(2)  # a controller would have handled it by now (see the test above)
        store = open_store(state, clock=SYSTEM_CLOCK)
        try:
            event = store.get_event(1)
            assert event is not None and event.delivery_id == "d-1"
            assert event.completed_at is None  # queued for whichever controller leads
        finally:
            store.close()
        assert "no controller here" in (tmp_path / "serve.log").read_text()
        assert not (state / "mirrors").exists() and not list(state.glob("*.lock"))  # no loop, no lock
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        log.close()
