"""Upgrading a state directory at schema revision 0005 to 0007: runs and versions name their image.

Pins down that a store whose runs and versions Flywheel 0005 wrote opens
migrated, reads every run and version back as it was with no image (they ran
in virtualenvs), that a run and a version made afterwards keep the image they
are given, and that a downgrade to 0005 keeps every row.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert, select

from controller.backends.store import open_store, state_url
from controller.backends.store.sql import SqlStore, alembic_config, build_engine, schema_revision
from controller.backends.store.sql.tables import model_versions, runs
from controller.clock import FakeClock

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PINNED = "registry.example:5000/ml/iris:" + "a" * 64 + "@sha256:" + "b" * 64


def migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)
    assert schema_revision(engine) == (revision,)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    engine = build_engine(state_url(directory))
    try:
        migrate(engine, "0005")
        with engine.begin() as conn:
            conn.execute(
                insert(runs).values(  # 0005's columns only

                    id=1, model="iris", ref="main", commit="c" * 40, cache_key="k1", status="succeeded",
                    trigger="merge", steps={}, metrics={}, gates=[], params={}, data_fingerprints={},
                    created_at=T0, environment_hash="e1", artifact_digest="sha256:art",
                )
            )  # fmt: skip
            conn.execute(
                insert(model_versions).values(

                    model="iris", number=1, content_id="sha256:c1", run_id=1, commit="c" * 40,
                    artifact_digest="sha256:art", artifact_uri="/runs/1/model", environment_hash="e1",
                    data_fingerprints={}, params={}, metrics={"accuracy": 0.9}, created_at=T0,
                )
            )  # fmt: skip
    finally:
        engine.dispose()
    return directory


@pytest.fixture
def store(state: Path) -> Iterator[SqlStore]:
    opened = open_store(state, clock=FakeClock(T0))
    yield opened
    opened.close()


def test_runs_and_versions_written_before_read_back_without_an_image(store: SqlStore) -> None:
    run = store.get_run(1)
    version = store.get_version("iris", 1)
    assert (run.image, version.image) == (None, None)
    assert (run.artifact_digest, version.metrics, version.content_id) == (
        "sha256:art",
        {"accuracy": 0.9},
        "sha256:c1",
    )


def test_a_new_run_and_version_keep_their_image(store: SqlStore) -> None:
    run = store.create_run(model="iris", ref="main", commit="d" * 40, cache_key="k2")
    run = store.update_run(run.id, status="succeeded", image=PINNED, artifact_digest="sha256:art2")
    assert store.get_run(run.id).image == PINNED
    version = store.register_version(
        model="iris", run_id=run.id, commit=run.commit, artifact_digest="sha256:art2", artifact_uri="/m",
        environment_hash="e1", image=run.image,
    )  # fmt: skip
    assert (version.number, store.get_version("iris", 2).image) == (2, PINNED)
    without = store.register_version(
        model="iris",
        run_id=1,
        commit="c" * 40,
        artifact_digest="sha256:art",
        artifact_uri="/m",
        environment_hash="e1",
    )
    assert without.image is None  # the same run again: the version it already made


def test_a_downgrade_to_0005_keeps_every_row(state: Path) -> None:
    open_store(state, clock=FakeClock(T0)).close()
    engine = build_engine(state_url(state))
    try:
        migrate(engine, "0005", down=True)
        with engine.connect() as conn:
            assert conn.execute(select(runs.c.id, runs.c.cache_key)).all() == [(1, "k1")]
            assert conn.execute(select(model_versions.c.model, model_versions.c.number)).all() == [
                ("iris", 1)
            ]
    finally:
        engine.dispose()
