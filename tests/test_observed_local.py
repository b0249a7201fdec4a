"""Observing the embedded home: what its router routes and which servers are live, read from the processes.

Pinned down here: :meth:`LocalServing.observe` reports the routes the
running router gives over its admin API and the servers that answer ready;
a server killed behind the controller's back is no longer live while the
router still routes to it (a ``missing`` discrepancy), and nothing restarts
it; a stopped router, or one whose admin token does not match, makes the
observation unknown (never empty); an environment that never served is
known to route nothing.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.backends.local.processes import is_alive
from controller.backends.serving.local import LocalServing
from controller.backends.serving.server import ProcessRecord
from controller.clock import SYSTEM_CLOCK
from controller.engine.observed import Expected, compare
from controller.specs.types import Environment
from tests.test_serving import ENV, _wait, server_pid, stub_version

pytestmark = pytest.mark.integration


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[LocalServing]:
    backend = LocalServing(tmp_path / "serving", ready_timeout_seconds=20, clock=SYSTEM_CLOCK)
    try:
        yield backend
    finally:
        backend.shutdown()


def test_observe_reads_the_router_and_the_live_servers(serving: LocalServing, tmp_path: Path) -> None:
    never = Environment(name="qa", spec_path="environments/qa.yaml")
    assert serving.observe(environment=never).known and serving.observe(environment=never).routes == {}

    serving.deploy(environment=ENV, version=stub_version(tmp_path, "v1"))
    serving.set_weights(environment=ENV, model="m", weights={"v1": 100})
    seen = serving.observe(environment=ENV)
    assert seen.known and seen.routes == {"m": {"v1": 100}} and seen.live == {"m": frozenset({"v1"})}
    expected = Expected("staging", "m", {"v1": 100})
    assert compare(expected, seen) == ()

    pid = server_pid(serving, "v1")
    os.kill(pid, signal.SIGKILL)  # behind the controller's back
    _wait(lambda: not is_alive(pid, None))
    seen = serving.observe(environment=ENV)
    assert seen.routes == {"m": {"v1": 100}} and seen.live == {}
    ((kind, version),) = [(d.kind, d.version) for d in compare(expected, seen)]
    assert (kind, version) == ("missing", "v1")
    assert serving.observe(environment=ENV).live == {}  # observing starts nothing


def test_a_router_that_is_down_or_not_ours_is_unknown(serving: LocalServing, tmp_path: Path) -> None:
    serving.deploy(environment=ENV, version=stub_version(tmp_path, "v1"))
    serving.set_weights(environment=ENV, model="m", weights={"v1": 100})
    record_file = tmp_path / "serving" / "staging" / "router.json"
    record = ProcessRecord.load(record_file)
    assert record is not None
    dataclasses.replace(record, token="not-the-token").save(record_file)
    seen = serving.observe(environment=ENV)
    assert not seen.known and "refused" in (seen.unknown or "")
    record.save(record_file)

    serving.stop(ENV.name)
    seen = serving.observe(environment=ENV)
    assert not seen.known and "not running" in (seen.unknown or "")
    assert seen.routes == {} and seen.live == {}
    ((kind, _),) = [(d.kind, d.version) for d in compare(Expected("staging", "m", {"v1": 100}), seen)]
    assert kind == "unknown"
