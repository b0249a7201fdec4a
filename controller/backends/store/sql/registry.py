"""The registry's SQL: model versions numbered per model, content-addressed, idempotent per run.

Part of :class:`controller.backends.store.sql.SqlStore`
(:class:`~controller.backends.store.Registry`). The table is append-only: a
trigger created by the first migration refuses UPDATE and DELETE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Unpack

from sqlalchemy import (
    Connection,
    func,
    insert,
    select,
)

from controller.backends.store.registry import (
    MODEL_SORTS,
    ModelPage,
    ModelQuery,
    ModelSummary,
    ModelVersion,
    NewVersion,
)
from controller.backends.store.sql.base import SqlBase, arguments
from controller.backends.store.sql.mapping import found, keyed, one, records
from controller.backends.store.sql.tables import model_versions

__all__ = ["RegistrySql", "content_id"]


_CONTENT = ("model", "commit", "artifact_digest", "environment_hash", "data_fingerprints", "params")


def content_id(version: Mapping[str, Any]) -> str:
    """The digest that identifies what a model version ships: the :data:`_CONTENT` of ``version``."""
    canonical = json.dumps({name: version[name] for name in _CONTENT}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _get_version(conn: Connection, model: str, number: int) -> ModelVersion:
    query = keyed(model_versions, model=model, number=number)
    return one(conn, ModelVersion, query, missing=f"no version {number} of model {model!r}")


class RegistrySql(SqlBase):
    def register_version(self, **version: Unpack[NewVersion]) -> ModelVersion:
        objects = ("data_fingerprints", "params", "metrics")
        values = arguments("register_version", NewVersion, version, objects=objects)
        model, table = values["model"], model_versions
        with self._write() as conn:
            existing = found(conn, ModelVersion, keyed(table, model=model, run_id=values["run_id"]))
            if existing is not None:
                return existing
            last = conn.execute(select(func.max(table.c.number)).where(table.c.model == model)).scalar()
            number = (last or 0) + 1
            conn.execute(
                insert(table).values(
                    **values, number=number, content_id=content_id(values), created_at=self._now()
                )
            )
            return _get_version(conn, model, number)

    def get_version(self, model: str, number: int) -> ModelVersion:
        with self._read() as conn:
            return _get_version(conn, model, number)

    def latest_version(self, model: str) -> ModelVersion | None:
        table = model_versions
        query = select(table).where(table.c.model == model).order_by(table.c.number.desc()).limit(1)
        with self._read() as conn:
            return found(conn, ModelVersion, query)

    def list_versions(self, model: str) -> list[ModelVersion]:
        table = model_versions
        query = select(table).where(table.c.model == model).order_by(table.c.number)
        with self._read() as conn:
            return records(ModelVersion, conn.execute(query).mappings())

    def list_models(self) -> list[str]:
        table = model_versions
        with self._read() as conn:
            return list(conn.execute(select(table.c.model).distinct().order_by(table.c.model)).scalars())

    def page_models(self, **query: Unpack[ModelQuery]) -> ModelPage:
        table = model_versions
        sort, offset, limit = query.get("sort", "name"), query.get("offset", 0), query.get("limit", 50)
        if sort not in MODEL_SORTS:
            raise ValueError(f"page_models: sort {sort!r} is not one of {', '.join(MODEL_SORTS)}")
        if offset < 0 or limit < 1:
            raise ValueError(f"page_models: offset {offset} and limit {limit} must be >= 0 and >= 1")
        summary = select(
            table.c.model,
            func.count().label("versions"),
            func.max(table.c.number).label("latest"),
            func.max(table.c.created_at).label("latest_at"),
        ).group_by(table.c.model)
        search = query.get("search")
        if search:
            summary = summary.where(func.lower(table.c.model).contains(search.lower(), autoescape=True))
        rows = summary.subquery()
        column = rows.c[{"name": "model", "latest": "latest_at", "versions": "versions"}[sort.lstrip("-")]]
        order = [column.desc() if sort.startswith("-") else column.asc()]
        if sort.lstrip("-") != "name":
            order.append(rows.c.model.asc())  # ties in a stable order, so pages do not overlap
        page = select(rows).order_by(*order).offset(offset).limit(limit)
        with self._read() as conn:
            total = conn.execute(select(func.count()).select_from(rows)).scalar_one()
            found = records(ModelSummary, conn.execute(page).mappings())
        return ModelPage(models=found, total=total)
