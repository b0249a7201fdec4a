"""The runs' SQL: pipeline runs, their step results (one JSON object per run) and the cache lookup.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.RunRecords`).
"""

from __future__ import annotations

from typing import Unpack

from sqlalchemy import Connection, insert, select, update

from controller.backends.store.common import NotFound
from controller.backends.store.runs import NewRun, Run, RunChanges, RunQuery, StepResult
from controller.backends.store.sql.base import SqlBase, arguments, checked_times, new_id
from controller.backends.store.sql.mapping import found, json_ready, keyed, one, records
from controller.backends.store.sql.tables import runs

__all__ = ["RunsSql"]


def _get_run(conn: Connection, run_id: int) -> Run:
    return one(conn, Run, keyed(runs, id=run_id), missing=f"no run {run_id}")


class RunsSql(SqlBase):
    def create_run(self, **run: Unpack[NewRun]) -> Run:
        objects = ("params", "data_fingerprints")
        values = arguments("create_run", NewRun, run, objects=objects, trigger="", status="queued")
        with self._write() as conn:
            statement = insert(runs).values(**values, steps={}, metrics={}, gates=[], created_at=self._now())
            return _get_run(conn, new_id(conn.execute(statement)))

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
            return found(conn, Run, query)

    def list_runs(self, **query: Unpack[RunQuery]) -> list[Run]:
        wanted = arguments("list_runs", RunQuery, query, limit=100)
        statement = select(runs).order_by(runs.c.id.desc()).limit(wanted.pop("limit"))
        for name, value in wanted.items():
            if value is not None:
                statement = statement.where(runs.c[name] == value)
        with self._read() as conn:
            return records(Run, conn.execute(statement).mappings())

    def latest_run(self, *, model: str, ref: str) -> Run | None:
        found = self.list_runs(model=model, ref=ref, limit=1)
        return found[0] if found else None
