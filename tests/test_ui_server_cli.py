"""The CLI pointed at a shared Flywheel: ``flywheel ui token create`` and ``flywheel approve --server``.

Pins down, against a dashboard served over real HTTP on a store the rollout
engine wrote (iris v2 at production's gate, authored by alice), that a token
is printed once and kept only as a hash; that ``approve --server`` with it
records carol's approval through the dashboard's API (channel
``dashboard``); that an ``--as`` naming someone other than the token's
person is refused and audited; that a wrong or revoked token, or none, is
one line and changes nothing.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.backends.store import STATE_DB_NAME
from controller.cli import main
from controller.ui import create_app
from controller.ui.access import Access
from controller.ui.tokens import token_user
from tests.fixtures.rollout_world import RolloutWorld, rollout_world
from tests.fixtures.served import served

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path, people=True) as world:
        world.to_gate()
        yield world


@pytest.fixture
def server(world: RolloutWorld) -> Iterator[str]:
    app = create_app(
        models=world.store,
        history=world.store,
        clock=world.clock,
        catalog=lambda: world.catalog,
        records=world.store,
        access=Access(read="signed-in", tokens=functools.partial(token_user, world.store)),
    )
    with served(app) as url:
        yield url


def flywheel(*args: str, token: str | None = None) -> tuple[int, str]:
    env = {"FLYWHEEL_TOKEN": token} if token else {"FLYWHEEL_TOKEN": ""}
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def decisions(world: RolloutWorld) -> list[tuple[str, str, str]]:
    found = world.store.approvals_for(model="iris", version=2, environment="production")
    return [(a.user, a.decision, a.channel) for a in found]


def test_a_token_approves_through_the_server_as_its_person_and_only_as_them(
    world: RolloutWorld, server: str
) -> None:
    state = ("--state-dir", str(world.state))
    code, out = flywheel("ui", "token", "create", "carols-laptop", "--as", "carol", *state)
    assert code == 0 and out.startswith("token carols-laptop acts as carol; it is shown this once:")
    token = out.splitlines()[1]
    with sqlite3.connect(world.state / STATE_DB_NAME) as db:
        kept = " ".join(f"{k} {v}" for k, v in db.execute("SELECT key, value FROM meta"))
    assert token not in kept and "carols-laptop" in kept  # a hash, never the token
    code, out = flywheel("ui", "token", "create", "carols-laptop", "--as", "alice", *state)
    assert code == 1 and "a token named 'carols-laptop' exists already" in out

    code, out = flywheel("approve", "iris", "2", "--as", "alice", "--server", server, token=token)
    assert code == 1 and "refused: --as alice is not you: this token acts as carol." in out
    assert decisions(world) == []
    refused = world.store.audit(model="iris")[-1]
    assert (refused.action, refused.detail["refusal"], refused.detail["channel"]) == (
        "command.refused",
        "not_you",
        "dashboard",
    )

    code, out = flywheel("approve", "iris", "2", "-m", "from my laptop", "--server", server, token=token)
    assert code == 0 and "carol approved iris v2 for production" in out, out
    assert decisions(world) == [("carol", "approve", "dashboard")]
    code, out = flywheel("pause", "iris", "--server", server, token=token)
    assert code == 1 and "refused: carol may not pause" in out


def test_a_wrong_revoked_or_missing_token_is_one_line_and_changes_nothing(
    world: RolloutWorld, server: str
) -> None:
    state = ("--state-dir", str(world.state))
    code, out = flywheel("approve", "iris", "2", "--server", server)
    assert (
        code == 1
        and out.strip() == "Error: --server needs a token in FLYWHEEL_TOKEN (flywheel ui token create)"
    )
    code, out = flywheel("approve", "iris", "2", "--server", server, token="not-a-token")
    assert code == 1 and out.strip() == f"Error: {server} answered 401: a valid bearer token is needed to act"
    token = flywheel("ui", "token", "create", "ci", "--as", "carol", *state)[1].splitlines()[1]
    assert flywheel("ui", "token", "revoke", "ci", *state) == (0, "token ci revoked\n")
    code, out = flywheel("approve", "iris", "2", "--server", server, token=token)
    assert code == 1 and "answered 401" in out
    assert flywheel("ui", "token", "revoke", "ci", *state)[0] == 1
    assert decisions(world) == []
