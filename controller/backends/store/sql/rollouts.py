"""The rollouts' SQL: rollouts moved by compare-and-set, and the serving history.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.RolloutRecords`). "What served at time
T" is the newest serving row per version at or before T, found with a
window function that both SQLite and PostgreSQL run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Unpack

from sqlalchemy import (
    Connection,
    func,
    insert,
    select,
    update,
)

from controller.backends.store.common import Conflict, NotFound
from controller.backends.store.rollouts import NewRollout, RolloutChanges, RolloutRecord, ServingRecord
from controller.backends.store.sql.base import SqlBase, arguments, aware, checked_times, new_id
from controller.backends.store.sql.mapping import keyed, one, record, records
from controller.backends.store.sql.tables import rollouts, serving

__all__ = ["RolloutsSql"]


def _get_rollout(conn: Connection, rollout_id: int) -> RolloutRecord:
    return one(conn, RolloutRecord, keyed(rollouts, id=rollout_id), missing=f"no rollout {rollout_id}")


class RolloutsSql(SqlBase):
    def create_rollout(self, **rollout: Unpack[NewRollout]) -> RolloutRecord:
        values = arguments("create_rollout", NewRollout, rollout, objects=("detail",))
        model, version, stage_list = values["model"], values["version"], list(values["stages"])
        if not stage_list:
            raise ValueError("a rollout needs at least one stage")
        stages_key = json.dumps(stage_list, separators=(",", ":"))
        now = self._now()
        table = rollouts
        with self._write() as conn:
            existing = conn.execute(
                select(table.c.id).where(
                    table.c.model == model, table.c.version == version, table.c.stages_key == stages_key
                )
            ).scalar_one_or_none()
            if existing is not None:
                return _get_rollout(conn, existing)
            row = values | {
                "stages": stage_list,
                "stages_key": stages_key,
                "stage_index": 0,
                "step_index": 0,
                "weight": 0,
                "analysis_failures": 0,
                "paused": False,
                "revision": 1,
                "created_at": now,
                "updated_at": now,
            }
            result = conn.execute(insert(table).values(**row))
            return _get_rollout(conn, new_id(result))

    def get_rollout(self, rollout_id: int) -> RolloutRecord:
        with self._read() as conn:
            return _get_rollout(conn, rollout_id)

    def update_rollout(
        self, rollout_id: int, *, expected_revision: int, **changes: Unpack[RolloutChanges]
    ) -> RolloutRecord:
        unknown = set(changes) - RolloutChanges.__optional_keys__
        if unknown:
            raise TypeError(f"update_rollout() cannot change {', '.join(sorted(unknown))}")
        table = rollouts
        with self._write() as conn:
            result = conn.execute(
                update(table)
                .where(table.c.id == rollout_id, table.c.revision == expected_revision)
                .values(**checked_times(changes), revision=table.c.revision + 1, updated_at=self._now())
            )
            if result.rowcount == 0:
                actual = conn.execute(
                    select(table.c.revision).where(table.c.id == rollout_id)
                ).scalar_one_or_none()
                if actual is None:
                    raise NotFound(f"no rollout {rollout_id}")
                raise Conflict(f"rollout {rollout_id}", expected=expected_revision, actual=actual)
            return _get_rollout(conn, rollout_id)

    def active_rollouts(self) -> list[RolloutRecord]:
        query = select(rollouts).where(rollouts.c.finished_at.is_(None)).order_by(rollouts.c.id)
        with self._read() as conn:
            return records(RolloutRecord, conn.execute(query).mappings())

    def rollouts_for(self, model: str) -> list[RolloutRecord]:
        query = select(rollouts).where(rollouts.c.model == model).order_by(rollouts.c.id.desc())
        with self._read() as conn:
            return records(RolloutRecord, conn.execute(query).mappings())

    # ------------------------------------------------------ serving history

    def record_serving(
        self, *, environment: str, model: str, version: int, weight: int, at: datetime | None = None
    ) -> ServingRecord:
        if not 0 <= weight <= 100:
            raise ValueError(f"weight is a percentage, got {weight}")
        when = self._now() if at is None else aware(at, "at")
        values = {
            "environment": environment,
            "model": model,
            "version": version,
            "weight": weight,
            "at": when,
        }
        with self._write() as conn:
            result = conn.execute(insert(serving).values(**values))
        return record(ServingRecord, {"id": new_id(result), **values})

    def record_traffic(
        self, *, environment: str, model: str, weights: Mapping[int, int], at: datetime | None = None
    ) -> list[ServingRecord]:
        when = self._now() if at is None else aware(at, "at")
        if sum(weights.values()) > 100:
            raise ValueError(f"weights add up to more than 100: {dict(weights)}")
        with self.transaction():
            before = dict(self.served_at(environment=environment, model=model, at=when))
            target = {version: 0 for version in before} | dict(weights)
            return [
                self.record_serving(
                    environment=environment, model=model, version=version, weight=weight, at=when
                )
                for version, weight in sorted(target.items())
                if before.get(version, 0) != weight
            ]

    def served_at(self, *, environment: str, model: str, at: datetime) -> list[tuple[int, int]]:
        ranked = (
            select(
                serving.c.version,
                serving.c.weight,
                func.row_number()
                .over(partition_by=serving.c.version, order_by=(serving.c.at.desc(), serving.c.id.desc()))
                .label("rank"),
            )
            .where(
                serving.c.environment == environment,
                serving.c.model == model,
                serving.c.at <= aware(at, "at"),
            )
            .subquery()
        )
        query = (
            select(ranked.c.version, ranked.c.weight)
            .where(ranked.c.rank == 1, ranked.c.weight > 0)
            .order_by(ranked.c.version)
        )
        with self._read() as conn:
            return [(int(version), int(weight)) for version, weight in conn.execute(query)]

    def served_in(self, *, environment: str, at: datetime) -> dict[str, list[tuple[int, int]]]:
        ranked = (
            select(
                serving.c.model,
                serving.c.version,
                serving.c.weight,
                func.row_number()
                .over(
                    partition_by=(serving.c.model, serving.c.version),
                    order_by=(serving.c.at.desc(), serving.c.id.desc()),
                )
                .label("rank"),
            )
            .where(serving.c.environment == environment, serving.c.at <= aware(at, "at"))
            .subquery()
        )
        query = (
            select(ranked.c.model, ranked.c.version, ranked.c.weight)
            .where(ranked.c.rank == 1, ranked.c.weight > 0)
            .order_by(ranked.c.model, ranked.c.version)
        )
        served: dict[str, list[tuple[int, int]]] = {}
        with self._read() as conn:
            for model, version, weight in conn.execute(query):
                served.setdefault(str(model), []).append((int(version), int(weight)))
        return served

    def serving_history(self, *, environment: str, model: str) -> list[ServingRecord]:
        query = (
            select(serving)
            .where(serving.c.environment == environment, serving.c.model == model)
            .order_by(serving.c.at, serving.c.id)
        )
        with self._read() as conn:
            return records(ServingRecord, conn.execute(query).mappings())
