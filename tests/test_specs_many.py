"""Parsing many spec files with a helper process gives exactly what parsing them one by one gives.

Pins down: ``parse_many`` returns ``parse_document``'s results in order, with
the helper process taking a share (valid, invalid, fast-path and full-loader
files alike); a helper that cannot start, dies, raises, or answers for other
files changes nothing but who does the work; small loads,
``FLYWHEEL_SPEC_HELPER=0`` and a load average that leaves no core free start
no helper; no process or thread is left behind.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.spawn
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import controller.specs.many as many
from controller.specs import ParsedFile, parse_document, parse_many
from controller.specs.many import Files

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "spec_corpus"


def sample_files(count: int) -> list[tuple[str, bytes]]:
    """Many models from the example, a few broken ones and every corpus file, in a fixed order."""
    iris = (REPO / "specs/iris/model.yaml").read_bytes()
    files = [
        (f"specs/model-{i:04d}/model.yaml", iris.replace(b"name: iris", b"name: model-%04d" % i, 1))
        for i in range(count)
    ]
    files[7] = (files[7][0], iris.replace(b"C: 1.0", b"C: [1, 2]"))  # a schema error
    files[-3] = (files[-3][0], b"a: &x 1\nb: *x\n")  # refused by the full loader
    for number, path in enumerate(sorted(CORPUS.glob("*/specs/*/model.yaml"))):
        files.append((f"specs/corpus-{number}/model.yaml", path.read_bytes()))
    return files


def one_by_one(files: list[tuple[str, bytes]]) -> list[object]:
    return [parse_document(path, data) for path, data in files]


def test_the_helper_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    files = sample_files(600)
    monkeypatch.setattr(many, "CHUNK", 16)
    threads = threading.active_count()
    assert parse_many(files, helper=True) == one_by_one(files)
    assert threading.active_count() == threads  # the pool's threads are gone
    assert multiprocessing.active_children() == []  # and so is its worker


def test_the_helper_parses_while_this_process_is_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    files = sample_files(300)
    original = many.parse_document
    parsed_here: list[str] = []

    def slow(path: str, data: bytes, **kwargs: int) -> object:
        time.sleep(0.01)  # this process is slow: the helper must do most of the work
        parsed_here.append(path)
        return original(path, data, **kwargs)

    monkeypatch.setattr(many, "parse_document", slow)
    monkeypatch.setattr(many, "CHUNK", 8)
    assert parse_many(files, helper=True) == one_by_one(files)
    assert len(parsed_here) < len(files) // 2


# What a helper can do wrong; each runs in the worker process, so it is defined at module level.


def exits(files: Files, max_bytes: int) -> list[ParsedFile]:
    os._exit(3)


def raises(files: Files, max_bytes: int) -> list[ParsedFile]:
    raise RuntimeError("a bug in the helper")


def answers_for_other_files(files: Files, max_bytes: int) -> list[ParsedFile]:
    return [parse_document(path, data, max_bytes=max_bytes) for path, data in reversed(files)]


def answers_too_little(files: Files, max_bytes: int) -> list[ParsedFile]:
    return [parse_document(path, data, max_bytes=max_bytes) for path, data in files[1:]]


@pytest.mark.parametrize("worker", [exits, raises, answers_for_other_files, answers_too_little])
def test_a_failing_helper_costs_only_time(
    monkeypatch: pytest.MonkeyPatch, worker: Callable[[Files, int], list[ParsedFile]]
) -> None:
    files = sample_files(100)
    monkeypatch.setattr(many, "_parse_chunk", worker)
    monkeypatch.setattr(many, "CHUNK", 8)
    threads = threading.active_count()
    assert parse_many(files, helper=True) == one_by_one(files)
    assert threading.active_count() == threads
    assert multiprocessing.active_children() == []


def test_a_helper_that_cannot_start_costs_nothing() -> None:
    files = sample_files(50)
    spawn = multiprocessing.get_context("spawn")
    python = multiprocessing.spawn.get_executable()
    spawn.set_executable(str(REPO / "no-such-python"))
    try:
        assert parse_many(files, helper=True) == one_by_one(files)
    finally:
        spawn.set_executable(python)


def test_no_helper_for_a_small_load_or_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the helper must not start")

    monkeypatch.setattr(many, "ProcessPoolExecutor", refuse)
    files = sample_files(20)
    assert parse_many(files) == one_by_one(files)
    monkeypatch.setattr(many, "HELPER_MIN_FILES", 10)
    monkeypatch.setattr(many, "_idle_cpu", lambda: True)
    monkeypatch.setenv(many.HELPER_ENV, "0")
    assert parse_many(files) == one_by_one(files)
    monkeypatch.setattr(many, "_idle_cpu", lambda: False)  # a busy machine
    monkeypatch.delenv(many.HELPER_ENV)
    assert parse_many(files) == one_by_one(files)


def test_the_load_average_decides_whether_a_core_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for load, free in [(0.3, True), (1.4, True), (1.5, False), (3.0, False)]:
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert many._idle_cpu() is free, load
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert many._idle_cpu() is False  # one core: nothing to share


def test_nothing_to_parse() -> None:
    assert parse_many([], helper=True) == []
