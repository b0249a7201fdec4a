"""The controller's health endpoint (``FLYWHEEL_HEALTH_PORT``): what ``GET /healthz`` answers, by the
injected clock; the setting; the loop recording its turns; the endpoint served beside a controller.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import click
import httpx
import pytest
from starlette.testclient import TestClient

from controller.cli.health import health_app, health_endpoint
from controller.clock import FakeClock
from controller.settings import (
    ControllerSettings,
    HealthSettings,
    Settings,
    SettingsError,
    load_settings,
)

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.unit
def test_healthz_answers_by_the_age_of_the_loops_last_turn() -> None:
    clock = FakeClock(START)
    turned: list[datetime | None] = [None]
    client = TestClient(health_app(lambda: turned[0], clock, stale_seconds=120))

    starting = client.get("/healthz")
    assert starting.status_code == 503 and starting.json()["status"] == "starting"

    turned[0] = clock.now()
    clock.advance(120)
    fresh = client.get("/healthz")
    assert fresh.status_code == 200
    assert fresh.json() == {"status": "ok", "lastTurn": START.isoformat(), "ageSeconds": 120.0}

    clock.advance(1)
    stalled = client.get("/healthz")
    assert stalled.status_code == 503 and stalled.json()["status"] == "stalled"
    assert stalled.json()["ageSeconds"] == 121.0

    turned[0] = clock.now()  # the loop turns again: healthy again
    assert client.get("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


@pytest.mark.unit
def test_the_health_port_setting() -> None:
    assert HealthSettings.from_env({}) == HealthSettings(port=0)
    assert HealthSettings.from_env({"FLYWHEEL_HEALTH_PORT": "0"}).port == 0
    assert HealthSettings.from_env({"FLYWHEEL_HEALTH_PORT": " 8081 "}).port == 8081
    settings = load_settings(ControllerSettings(repo="."), environ={"FLYWHEEL_HEALTH_PORT": "8081"})
    assert settings.health.port == 8081 and settings.health.host == "0.0.0.0"
    for bad in ("http", "-1", "65536", "80.5"):
        with pytest.raises(SettingsError, match=rf"^FLYWHEEL_HEALTH_PORT is '{bad}': give the port"):
            HealthSettings.from_env({"FLYWHEEL_HEALTH_PORT": bad})


@pytest.mark.integration
def test_the_loop_records_each_turn_by_the_injected_clock(tmp_path: Path) -> None:
    from controller.app import build_controller, run_controller
    from controller.scaffold import scaffold

    scaffold(tmp_path / "ml")
    settings = Settings(
        controller=ControllerSettings(repo=str(tmp_path / "ml"), state_dir=tmp_path / "state", promote=False)
    )
    clock = FakeClock(START)
    controller = build_controller(settings, clock=clock)
    assert controller.last_turn is None
    assert run_controller(settings, once=True, controller=controller) == 0
    assert controller.last_turn == START


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.integration
def test_the_endpoint_is_served_beside_the_controller_while_it_runs() -> None:
    from controller.backends.serving.server import free_port

    clock = FakeClock(START)
    controller: Any = SimpleNamespace(last_turn=START - timedelta(seconds=5), clock=clock)
    port = free_port()
    settings = Settings(
        controller=ControllerSettings(repo="."), health=HealthSettings(port=port, host="127.0.0.1")
    )
    with health_endpoint(settings, cast(Any, controller)):
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert answer.status_code == 200 and answer.json()["ageSeconds"] == 5.0
        controller.last_turn = None
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 503
        busy = pytest.raises(click.ClickException, match=rf"FLYWHEEL_HEALTH_PORT: cannot listen on .*:{port}")
        with busy, health_endpoint(settings, cast(Any, controller)):
            pass
    assert not _listening(port)


@pytest.mark.unit
def test_no_port_serves_nothing() -> None:
    settings = Settings(controller=ControllerSettings(repo="."))
    assert settings.health.port == 0
    with health_endpoint(settings, cast(Any, SimpleNamespace())):
        pass  # nothing is bound, nothing read of the controller
