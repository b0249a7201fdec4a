"""Parse many spec files at once, with a helper process taking a share on a large load.

:func:`parse_many` is :func:`~controller.specs.parse.parse_document` over a
list of files, with the same results in the same order. Parsing is pure
Python, so one process uses one core. When there are at least
:data:`HELPER_MIN_FILES` files, it starts one helper interpreter
(:mod:`controller.specs.parse_worker`) that parses from the end of the list
while this process parses from the start; the helper sends its results back
in batches, and the two meet in the middle. Nothing waits on the helper: if it
is slow to start, starved of CPU, or fails, this process simply parses more
(or all) of the files itself. On a machine whose load average leaves no core
free, no helper is started, since it would only take CPU from this process.
The helper is stopped before :func:`parse_many` returns.

Called by the git reader for the files of a commit that are not in its parse
cache. ``FLYWHEEL_SPEC_HELPER=0`` in the environment turns the helper off.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from controller.specs.loader import MAX_BYTES
from controller.specs.parse import ParsedFile, parse_document

HELPER_MIN_FILES = 2000  # below this, starting an interpreter (~0.2 s) does not pay
HELPER_ENV = "FLYWHEEL_SPEC_HELPER"
WORKER_ARGS = ["-m", "controller.specs.parse_worker"]  # after the interpreter: how to run the helper
_POLL_EVERY = 32  # files parsed here between looks at what the helper sent
_FRAME_HEADER = 4  # bytes of big-endian length before each pickled batch

Batch = list[tuple[int, ParsedFile]]


def parse_many(
    files: Sequence[tuple[str, bytes]], *, max_bytes: int = MAX_BYTES, helper: bool | None = None
) -> list[ParsedFile]:
    """``[parse_document(path, data) for path, data in files]``, with a helper process on a large load.

    ``helper`` forces the helper process on or off; by default it is used for
    :data:`HELPER_MIN_FILES` files or more, on a machine with more than one
    CPU, unless ``FLYWHEEL_SPEC_HELPER=0``.
    """
    if helper is None:
        helper = len(files) >= HELPER_MIN_FILES and os.environ.get(HELPER_ENV, "1") != "0" and _idle_cpu()
    results: list[ParsedFile | None] = [None] * len(files)
    process = _Helper.start(files, max_bytes) if helper and files else None
    try:
        low = len(files)  # the helper works down from the end: it has sent files[low:]
        for index, (path, data) in enumerate(files):
            if process is not None and index % _POLL_EVERY == 0:
                low = process.collect(results, low)
            if index >= low:
                break
            results[index] = parse_document(path, data, max_bytes=max_bytes)
    finally:
        if process is not None:
            process.stop()
            process.collect(results, low)  # what arrived after the last look
    # files neither side got to: only when the helper failed
    return [
        done if done is not None else parse_document(path, data, max_bytes=max_bytes)
        for done, (path, data) in zip(results, files, strict=True)
    ]


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


class _Helper:
    """The helper interpreter, a thread feeding it the files and one reading its batches back."""

    def __init__(self, process: subprocess.Popen[bytes], payload: bytes) -> None:
        self._process = process
        self._batches: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        assert process.stdin is not None and process.stdout is not None
        self._feeder = threading.Thread(target=_feed, args=(process.stdin, payload), daemon=True)
        self._reader = threading.Thread(target=_read, args=(process.stdout, self._batches), daemon=True)
        self._feeder.start()
        self._reader.start()

    @classmethod
    def start(cls, files: Sequence[tuple[str, bytes]], max_bytes: int) -> _Helper | None:
        payload = pickle.dumps((list(files), max_bytes), protocol=pickle.HIGHEST_PROTOCOL)
        # the helper imports this very package, even from a source tree that is not installed
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
        try:
            process = subprocess.Popen(
                [sys.executable, *WORKER_ARGS],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except OSError:
            return None  # no interpreter to start: parse everything here
        return cls(process, payload)

    def collect(self, results: list[ParsedFile | None], low: int) -> int:
        """Store the batches that have arrived; the lowest index the helper has sent so far."""
        while True:
            try:
                batch = self._batches.get_nowait()
            except queue.Empty:
                return low
            for index, parsed in batch:
                results[index] = parsed
                low = min(low, index)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()  # it has nothing left that this process needs
        self._process.wait()
        self._feeder.join()
        self._reader.join()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()


def _feed(stream: IO[bytes], payload: bytes) -> None:
    try:
        stream.write(payload)
        stream.close()
    except OSError:
        pass  # the helper is gone; the parent parses on without it


def _read(stream: IO[bytes], batches: queue.SimpleQueue[Batch]) -> None:
    try:
        while True:
            header = stream.read(_FRAME_HEADER)
            if len(header) < _FRAME_HEADER:
                return
            body = stream.read(int.from_bytes(header, "big"))
            batches.put(pickle.loads(body))
    except Exception:  # a helper that died mid-frame: what arrived before stays
        return
