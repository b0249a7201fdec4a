"""A state directory as a Flywheel at schema revision 0003 left it, for the tests of the upgrade from it.

:func:`state_at_0003` creates the database and migrates it with Alembic up to
0003, and no further. :func:`write_meta` writes ``meta`` keys as that
Flywheel's ``set_meta`` did, and the helpers below spell the values as its
writers did: :func:`pull_request_value` and :func:`open_pulls_value` as
``controller.engine.trust.record_pull_request`` wrote them, the ``github:``
key of every family as the GitHub forge, the poller and the comment handler
named them, and :func:`slack_value` as the Slack sender kept a message's state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import Engine, insert

from controller.backends.store import state_url
from controller.backends.store.sql import alembic_config, build_engine, schema_revision
from controller.backends.store.sql.tables import meta

GOOD_PULL: dict[str, Any] = {
    "number": 6,
    "head_ref": "tune",
    "head_sha": "a" * 40,
    "base_ref": "main",
    "author": "octocat",
    "fork": False,
    "state": "open",
    "merged": False,
    "updated_at": "2024-05-01T12:00:00Z",
}


def state_at_0003(directory: Path) -> Engine:
    """An engine on ``directory``'s state database, created and migrated up to revision 0003 only."""
    engine = build_engine(state_url(directory))
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    assert schema_revision(engine) == ("0003",)
    return engine


def write_meta(engine: Engine, values: Mapping[str, str], *, at: datetime) -> None:
    with engine.begin() as conn:
        for key, value in values.items():
            conn.execute(insert(meta).values(key=key, value=value, updated_at=at))


def pull_request_value(**fields: Any) -> str:
    """``github:pr:<n>``: the pull request's record as JSON (``GOOD_PULL`` with ``fields`` changed)."""
    return json.dumps({**GOOD_PULL, **fields}, sort_keys=True)


def open_pulls_value(open_pulls: Mapping[int, bool]) -> str:
    """``github:open-pulls``: number -> whether its head is in a fork."""
    return json.dumps({str(n): fork for n, fork in sorted(open_pulls.items())})


def slack_value(state: Mapping[str, Any]) -> str:
    """``slack.rollout:<model>:v<version>``: what the Slack sender kept of a rollout's message."""
    return json.dumps(dict(state), sort_keys=True)
