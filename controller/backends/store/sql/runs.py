"""The runs' SQL: pipeline runs, their step results (one JSON object per run) and the cache lookup.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.RunRecords`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Unpack

from sqlalchemy import Connection, insert, select, update

from controller.backends.store.common import JSONObject, NotFound
from controller.backends.store.runs import Run, RunChanges, RunStatus, StepResult
from controller.backends.store.sql.base import SqlBase, checked_times, new_id
from controller.backends.store.sql.mapping import json_ready, record, records
from controller.backends.store.sql.tables import runs

__all__ = ["RunsSql"]


def _get_run(conn: Connection, run_id: int) -> Run:
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"no run {run_id}")
    return record(Run, row)


class RunsSql(SqlBase):
    def create_run(
        self,
        *,
        model: str,
        ref: str,
        commit: str,
        cache_key: str,
        trigger: str = "",
        params: JSONObject | None = None,
        data_fingerprints: Mapping[str, str] | None = None,
        environment_hash: str | None = None,
        status: RunStatus = "queued",
        reused_from: int | None = None,
    ) -> Run:
        with self._write() as conn:
            result = conn.execute(
                insert(runs).values(
                    reused_from=reused_from,
                    model=model,
                    ref=ref,
                    commit=commit,
                    cache_key=cache_key,
                    status=status,
                    trigger=trigger,
                    steps={},
                    metrics={},
                    gates=[],
                    params=dict(params or {}),
                    data_fingerprints=dict(data_fingerprints or {}),
                    environment_hash=environment_hash,
                    created_at=self._now(),
                )
            )
            return _get_run(conn, new_id(result))

    def update_run(self, run_id: int, **changes: Unpack[RunChanges]) -> Run:
        unknown = set(changes) - RunChanges.__optional_keys__
        if unknown:
            raise TypeError(f"update_run() cannot change {', '.join(sorted(unknown))}")
        values = checked_times(changes)
        for name in ("steps", "metrics"):
            if name in values:
                values[name] = json_ready(values[name])
        with self._write() as conn:
            if (
                values
                and conn.execute(update(runs).where(runs.c.id == run_id).values(**values)).rowcount == 0
            ):
                raise NotFound(f"no run {run_id}")
            return _get_run(conn, run_id)

    def record_step(self, run_id: int, *, step: str, result: StepResult) -> Run:
        with self._write() as conn:
            steps = conn.execute(select(runs.c.steps).where(runs.c.id == run_id)).scalar_one_or_none()
            if steps is None:
                raise NotFound(f"no run {run_id}")
            steps = {**steps, step: json_ready(result)}
            conn.execute(update(runs).where(runs.c.id == run_id).values(steps=steps))
            return _get_run(conn, run_id)

    def get_run(self, run_id: int) -> Run:
        with self._read() as conn:
            return _get_run(conn, run_id)

    def find_successful_run(self, cache_key: str) -> Run | None:
        query = (
            select(runs)
            .where(runs.c.cache_key == cache_key, runs.c.status == "succeeded")
            .order_by(runs.c.id.desc())
            .limit(1)
        )
        with self._read() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else record(Run, row)

    def list_runs(
        self,
        *,
        model: str | None = None,
        ref: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
    ) -> list[Run]:
        query = select(runs).order_by(runs.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(runs.c.model == model)
        if ref is not None:
            query = query.where(runs.c.ref == ref)
        if status is not None:
            query = query.where(runs.c.status == status)
        with self._read() as conn:
            return records(Run, conn.execute(query).mappings())

    def latest_run(self, *, model: str, ref: str) -> Run | None:
        found = self.list_runs(model=model, ref=ref, limit=1)
        return found[0] if found else None
