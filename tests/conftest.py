"""The fixtures many test modules share, and the tier every test belongs to.

Fixtures: ``state`` (a state directory under the test's ``tmp_path``);
``store`` (the SQL store opened on it, stamped by ``store_clock``: the system
clock unless a module overrides ``store_clock``, or ``state``); ``clock`` (a
fake clock at :data:`tests.fixtures.T0`); ``catalog`` (the repository's own
example specs, loaded once per module); ``reference_payloads`` and
``reference_schema`` (real GitHub webhook payloads and their schema, skipped
or failed without them: :mod:`tests.fixtures.required`); ``github`` (a fake
GitHub API on a loopback port); ``serving`` (the embedded serving backend,
its processes stopped after the test). A module whose fixture differs for a
reason keeps its own, named for what differs.

Tiers: every test is exactly one of ``unit`` (no servers, no network, no
virtualenv builds, no git repositories: fast), ``integration`` (real servers
or processes: Prometheus, the HTTP stand-ins of GitHub and Slack, git on real
repositories, model servers, virtualenv builds; and the long fuzzers) or
``e2e`` (the whole controller loop, in ``tests/e2e``). A module says which
with ``pytestmark``; a module of both kinds marks each test. Collection fails,
naming the tests, when a test has no tier or more than one, so a new module
must choose.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.backends.serving.local import LocalServing
from controller.backends.store import open_store
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK, Clock, FakeClock
from controller.specs import Catalog, load_tree
from tests.fakes.github_api import FakeGitHub
from tests.fixtures import T0
from tests.fixtures.required import reference
from tests.postgres import Cluster, pg_bin

TIERS = ("unit", "integration", "e2e")
ROOT = Path(__file__).resolve().parents[1]
E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a test with no tier or several, and an ``e2e`` test outside ``tests/e2e`` (or back)."""
    wrong = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        in_e2e = item.path.is_relative_to(E2E)
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: {', '.join(tiers) or 'no tier'}")
        elif (tiers == ["e2e"]) != in_e2e:
            wrong.append(f"{item.nodeid}: {tiers[0]}, but e2e tests are exactly those in tests/e2e")
    if wrong:
        raise pytest.UsageError(
            "each test needs exactly one tier marker (unit, integration or e2e; e.g. "
            "`pytestmark = pytest.mark.unit` in its module, see tests/conftest.py):\n  " + "\n  ".join(wrong)
        )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory, not yet created."""
    return tmp_path / "state"


@pytest.fixture
def store_clock() -> Clock:
    """The clock ``store`` stamps with; a module overrides this fixture to give its store a fake one."""
    return SYSTEM_CLOCK


@pytest.fixture
def store(state: Path, store_clock: Clock) -> Iterator[SqlStore]:
    """The store on ``state`` (created and migrated), closed after the test."""
    opened = open_store(state, clock=store_clock)
    yield opened
    opened.close()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at :data:`tests.fixtures.T0`, moved only by the test."""
    return FakeClock(T0)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """The repository's own specs, environments and policies (the example model, iris)."""
    return load_tree(ROOT)


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    """A fake GitHub API with its defaults, served on a loopback port for the test."""
    with FakeGitHub() as fake:
        yield fake


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[LocalServing]:
    """The embedded serving backend under ``tmp_path``; every process it started is stopped after the test."""
    backend = LocalServing(tmp_path / "serving", ready_timeout_seconds=20, clock=SYSTEM_CLOCK)
    try:
        yield backend
    finally:
        backend.shutdown()


@pytest.fixture(scope="session")
def reference_payloads() -> Path:
    """The directory of real GitHub webhook payloads; without it the test is skipped, or failed in CI."""
    return reference("github-webhooks")


@pytest.fixture(scope="session")
def reference_schema() -> Path:
    """The JSON schema of GitHub's webhook payloads; without it the test is skipped, or failed in CI."""
    return reference("github-webhooks.schema.json")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A PostgreSQL cluster for the session; without PostgreSQL the test is skipped, or failed in CI."""
    cluster = Cluster(pg_bin())
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres: Cluster) -> str:
    """The URL of a new, empty PostgreSQL database for this test."""
    return postgres.new_database()
