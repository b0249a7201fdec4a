"""The result cache: which cache keys have a reusable result, and pruning old ones.

A result is reusable while its run succeeded, was not itself a cache hit, and
its artifact directory is still on disk (the reconciler checks the same
thing before reusing). Pruning removes run directories and virtualenvs; the
runs stay in the store as history. Called by ``flywheel cache``, with the
store it opened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, Unpack

from controller.backends.store import ModelVersion, Run, RunQuery
from controller.clock import Clock

VENV_PREFIX = "env-"


class CacheRecords(Protocol):
    """What the cache reads: the runs that made results, and the versions that keep theirs."""

    def list_runs(self, **query: Unpack[RunQuery]) -> list[Run]: ...

    def list_models(self) -> list[str]: ...

    def list_versions(self, model: str) -> list[ModelVersion]: ...


@dataclass(frozen=True)
class CacheEntry:
    cache_key: str
    model: str
    run_id: int
    finished_at: datetime | None
    path: Path
    bytes: int


@dataclass(frozen=True)
class Removed:
    kind: str  # "result" | "virtualenv"
    name: str
    bytes: int


def cache_entries(store: CacheRecords, state_dir: Path) -> list[CacheEntry]:
    """The reusable results of the runs in ``store``, whose directories are under ``state_dir``."""
    entries = []
    for run in store.list_runs(status="succeeded", limit=100_000):
        if run.reused_from is not None or not run.artifact_path or not Path(run.artifact_path).is_dir():
            continue
        run_dir = state_dir / "runs" / str(run.id)
        entries.append(CacheEntry(run.cache_key, run.model, run.id, run.finished_at, run_dir, _size(run_dir)))
    return entries


def prune_cache(
    store: CacheRecords, state_dir: Path, *, older_than_seconds: float, clock: Clock, dry_run: bool = False
) -> list[Removed]:
    """Remove results and virtualenvs last used more than ``older_than_seconds`` before ``clock``'s now."""
    cutoff = clock.now() - timedelta(seconds=older_than_seconds)
    kept_runs = {v.run_id for m in store.list_models() for v in store.list_versions(m)}
    recent_envs = {
        run.environment_hash
        for run in store.list_runs(limit=100_000)
        if run.environment_hash and (run.finished_at is None or run.finished_at >= cutoff)
    }
    removed: list[Removed] = []
    for entry in cache_entries(store, state_dir):
        if entry.run_id in kept_runs or entry.finished_at is None or entry.finished_at >= cutoff:
            continue
        removed.append(Removed("result", f"run {entry.run_id} ({entry.model})", entry.bytes))
        if not dry_run:
            shutil.rmtree(entry.path, ignore_errors=True)
    venvs = state_dir / "venvs"
    if venvs.is_dir():
        for path in sorted(venvs.glob(f"{VENV_PREFIX}*")):
            used_recently = any(h.startswith(path.name[len(VENV_PREFIX) :]) for h in recent_envs)
            built = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            if used_recently or built >= cutoff:
                continue
            removed.append(Removed("virtualenv", path.name, _size(path)))
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
    return removed


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
