"""Parse many spec files at once, with a helper process taking a share of a large load.

:func:`parse_many` is :func:`~controller.specs.parse.parse_document` over a
list of files, with the same results in the same order. Parsing is pure
Python, so one process uses one core. When there are at least
:data:`HELPER_MIN_FILES` files, a one-worker
:class:`~concurrent.futures.ProcessPoolExecutor` (a fresh interpreter,
``spawn``: safe in a process that runs threads, and it imports the caller's
main module, so a script calling this needs the usual ``__main__`` guard)
parses chunks of :data:`CHUNK` files from the end of the list while this
process parses from the start, and the two meet in the middle. This process
waits only for the chunk or two the helper holds when they meet: a chunk it
has not started is cancelled and parsed here, and so is whatever it fails on
(a helper that cannot start, dies, raises or answers for other files). On a
machine whose load average leaves no core free, no helper is started, since
it would only take CPU from this process. The helper has stopped when
:func:`parse_many` returns.

What the helper gains, from ``bench/bench_specs.py --variants one-process,helper``
(the cold catalog of 10,000 specs, 2-core machine shared with other work at
load 3.2-3.6, five interleaved runs): the loading process spent 0.64x the CPU
(median 3.9 s against 6.1 s), which is about the wall-clock time where a core
is free for the helper; on that busy machine the wall-clock time was 0.94x
(7.2 s against 7.7 s) for 1.09x the CPU in all, which is why a load average
without a free core keeps the helper off.

Called by the git reader for the files of a commit that are not in its parse
cache. ``FLYWHEEL_SPEC_HELPER=0`` in the environment turns the helper off.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from controller.specs.loader import MAX_BYTES
from controller.specs.parse import ParsedFile, parse_document

HELPER_MIN_FILES = 2000  # below this, starting an interpreter (~0.3 s) does not pay
HELPER_ENV = "FLYWHEEL_SPEC_HELPER"
CHUNK = 32  # files per share of the helper's: what this process may wait for at the end

Files = Sequence[tuple[str, bytes]]


def parse_many(files: Files, *, max_bytes: int = MAX_BYTES, helper: bool | None = None) -> list[ParsedFile]:
    """``[parse_document(path, data) for path, data in files]``, with a helper process on a large load.

    ``helper`` forces the helper process on or off; by default it is used for
    :data:`HELPER_MIN_FILES` files or more, on a machine with a core free,
    unless ``FLYWHEEL_SPEC_HELPER=0``.
    """
    if helper is None:
        helper = len(files) >= HELPER_MIN_FILES and os.environ.get(HELPER_ENV, "1") != "0" and _idle_cpu()
    if not helper or not files:
        return [parse_document(path, data, max_bytes=max_bytes) for path, data in files]
    chunks = [files[start : start + CHUNK] for start in range(0, len(files), CHUNK)]
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        shares: list[Future[list[ParsedFile]] | None] = [None] * len(chunks)
        try:
            for index in reversed(range(len(chunks))):  # the helper works from the end
                shares[index] = pool.submit(_parse_chunk, chunks[index], max_bytes)
        except Exception:  # the helper could not start: what was not handed out is parsed here
            pass
        parsed: list[ParsedFile] = []
        for chunk, share in zip(chunks, shares, strict=True):
            done = _taken(share, chunk)
            if done is None:
                done = [parse_document(path, data, max_bytes=max_bytes) for path, data in chunk]
            parsed += done
        return parsed
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # the chunk or two in the worker's hands, at most


def _parse_chunk(files: Files, max_bytes: int) -> list[ParsedFile]:
    """The helper's share: one chunk of files, parsed in the worker process."""
    return [parse_document(path, data, max_bytes=max_bytes) for path, data in files]


def _taken(share: Future[list[ParsedFile]] | None, chunk: Files) -> list[ParsedFile] | None:
    """The helper's results for ``chunk`` if it has them now; ``None`` (and never the chunk later) if not."""
    if share is None or share.cancel() or not share.done():
        return None  # not handed out, cancelled before it started, or in the helper's hands now
    try:
        parsed = share.result()
    except Exception:  # it raised, or the worker died (BrokenProcessPool)
        return None
    if [result.path for result in parsed] != [path for path, _ in chunk]:
        return None  # not the answer to this chunk: trust none of it
    return parsed


def _idle_cpu() -> bool:
    """Whether a core is likely free for the helper, from the last minute's load average.

    The load average counts this busy process too, so on two cores a load
    up to 1.5 still leaves most of a core. On a busier machine the helper only
    competes with this process for the same cores (measured at load 2: slower
    than parsing alone), so it is not started.
    """
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return cpus > 1 and load < cpus - 0.5
