"""Leader election on a Lease, against the stand-in Kubernetes API and the real ``kubernetes`` client.

Pins down client-go's rules as :class:`LeaseLeadership` follows them: of two
replicas one wins; the leader's renewals keep it; a leader that stops
renewing loses the Lease once the other has seen it unchanged for the whole
duration, by the injected clock, and the other takes over with
``leaseTransitions`` one higher; losing a write to a rival (409 Conflict) is
a loss, not an error; with the API down the leader stops leading at the
renew deadline, before anyone else may take over; and a released Lease is
taken at once; and ``flywheel run``'s settings pick the Lease and reach
the API through the kubeconfig, or say in one line that there is none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from controller.backends.leader.lease import LeaseLeadership
from controller.cli.leader import leader_term, leadership_for
from controller.clock import FakeClock
from controller.settings import ControllerSettings, load_settings
from tests.fakes.kube_api import FakeKube
from tests.fakes.kube_leases import FakeLeases, with_leases

pytestmark = pytest.mark.integration

SECONDS = 15


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    fake = FakeKube()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def leases(kube: FakeKube) -> FakeLeases:
    return with_leases(kube)


def _elector(kube: FakeKube, clock: FakeClock, name: str) -> LeaseLeadership:
    return LeaseLeadership(
        kube.api_client(),
        name="flywheel-controller",
        namespace="ml",
        identity=name,
        duration_seconds=SECONDS,
        clock=clock,
    )


def test_of_two_electors_one_wins_and_both_know_who(
    kube: FakeKube, leases: FakeLeases, clock: FakeClock
) -> None:
    a, b = _elector(kube, clock, "pod-a"), _elector(kube, clock, "pod-b")
    assert a.try_acquire() and not b.try_acquire()
    assert a.is_leader() and not b.is_leader()
    assert a.holder() == b.holder() == "pod-a"
    spec = leases.spec("flywheel-controller", "ml")
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"], spec["leaseTransitions"]) == (
        "pod-a",
        15,
        0,
    )


def test_the_leaders_renewals_keep_it(kube: FakeKube, leases: FakeLeases, clock: FakeClock) -> None:
    a, b = _elector(kube, clock, "pod-a"), _elector(kube, clock, "pod-b")
    assert a.try_acquire()
    acquired = leases.spec("flywheel-controller", "ml")["acquireTime"]
    for _ in range(12):  # four lease durations, renewing every third of one
        clock.advance(seconds=SECONDS / 3)
        assert a.renew() and a.is_leader()
        assert not b.try_acquire()
    spec = leases.spec("flywheel-controller", "ml")
    assert spec["acquireTime"] == acquired and spec["leaseTransitions"] == 0
    assert spec["renewTime"] != acquired


def test_a_leader_that_stops_renewing_loses_the_lease_after_the_duration(
    kube: FakeKube, leases: FakeLeases, clock: FakeClock
) -> None:
    a, b = _elector(kube, clock, "pod-a"), _elector(kube, clock, "pod-b")
    assert a.try_acquire() and not b.try_acquire()  # b sees a's record now
    clock.advance(seconds=SECONDS * 2 / 3)
    assert not a.is_leader()  # past the renew deadline a acts no more...
    assert not b.try_acquire()  # ...and b may not take over yet
    clock.advance(seconds=SECONDS / 3 - 0.001)
    assert not b.try_acquire()
    clock.advance(seconds=0.001)
    assert b.try_acquire() and b.is_leader()
    spec = leases.spec("flywheel-controller", "ml")
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("pod-b", 1)
    assert not a.renew() and not a.is_leader() and a.holder() == "pod-b"


def test_a_conflict_on_update_is_a_loss_not_an_error(
    kube: FakeKube, leases: FakeLeases, clock: FakeClock
) -> None:
    a, b = _elector(kube, clock, "pod-a"), _elector(kube, clock, "pod-b")
    assert a.try_acquire() and not b.try_acquire()
    clock.advance(seconds=SECONDS)
    leases.before_put = leases.bump  # a rival's write lands between b's read and its write
    assert not b.try_acquire() and not b.is_leader()
    assert not a.renew() and not a.is_leader()  # the leader too: it lost the write, it leads no more
    leases.before_put = None
    assert a.try_acquire()  # the record still names a: it takes it straight back


def test_with_the_api_down_the_leader_steps_down_at_the_renew_deadline(
    kube: FakeKube, leases: FakeLeases, clock: FakeClock
) -> None:
    a = _elector(kube, clock, "pod-a")
    assert a.try_acquire()
    leases.down = True
    clock.advance(seconds=SECONDS / 3)
    assert a.renew() and a.is_leader()  # one renewal missed: still within its term
    clock.advance(seconds=SECONDS / 3 - 0.001)
    assert a.renew()
    clock.advance(seconds=0.001)
    assert not a.renew() and not a.is_leader()  # two thirds of the duration without a renewal
    leases.down = False
    assert a.try_acquire()  # nobody took it meanwhile: a leads again, no transition
    assert leases.spec("flywheel-controller", "ml")["leaseTransitions"] == 0


def test_a_released_lease_is_taken_at_once(kube: FakeKube, leases: FakeLeases, clock: FakeClock) -> None:
    a, b = _elector(kube, clock, "pod-a"), _elector(kube, clock, "pod-b")
    assert a.try_acquire() and not b.try_acquire()
    a.release()
    assert not a.is_leader()
    assert b.try_acquire()
    spec: dict[str, Any] = leases.spec("flywheel-controller", "ml")
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("pod-b", 1)


def test_flywheel_run_elects_on_the_lease_its_settings_name_through_the_kubeconfig(
    kube: FakeKube, leases: FakeLeases, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stand-in", "cluster": {"server": kube.url}}],
        "users": [{"name": "flywheel", "user": {"token": "t"}}],
        "contexts": [{"name": "here", "context": {"cluster": "stand-in", "user": "flywheel"}}],
        "current-context": "here",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a cluster: no in-cluster config
    env = {
        "FLYWHEEL_KUBECONFIG": str(tmp_path / "kubeconfig"),  # as for every call to Kubernetes
        "FLYWHEEL_LEADER_ELECTION": "lease",
        "FLYWHEEL_LEASE_NAMESPACE": "ml",
        "FLYWHEEL_INSTANCE": "pod-a",
    }
    settings = load_settings(ControllerSettings(repo="."), environ=env)
    with leader_term(settings, clock=clock) as term:
        assert term.leading() and term.leadership.holder() == "pod-a"
        assert leases.spec("flywheel-controller", "ml")["holderIdentity"] == "pod-a"
    assert leases.spec("flywheel-controller", "ml")["holderIdentity"] == ""  # released on the way out

    del env["FLYWHEEL_KUBECONFIG"]  # and no in-cluster config either
    with pytest.raises(click.ClickException) as refused:
        leadership_for(load_settings(ControllerSettings(repo="."), environ=env), clock=clock)
    assert refused.value.message.startswith(
        "FLYWHEEL_LEADER_ELECTION=lease needs the Kubernetes API: the in-cluster config: "
    )
    assert refused.value.message.endswith("(set FLYWHEEL_KUBECONFIG outside the cluster)")
