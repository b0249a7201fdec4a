"""Parsing many spec files with a helper process gives exactly what parsing them one by one gives.

Pins down: ``parse_many`` returns ``parse_document``'s results in order, with
the helper process taking a share (valid, invalid, fast-path and full-loader
files alike); a helper that cannot start, exits at once, or sends a broken
frame changes nothing but who does the work; small loads and
``FLYWHEEL_SPEC_HELPER=0`` start no helper; no process or thread is left
behind.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

import controller.specs.many as many
from controller.specs import parse_document, parse_many

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
    monkeypatch.setattr(many, "_POLL_EVERY", 1)
    threads = threading.active_count()
    assert parse_many(files, helper=True) == one_by_one(files)
    assert threading.active_count() == threads  # the feeder and reader threads are gone


def test_the_helper_parses_while_this_process_is_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    files = sample_files(200)
    original = many.parse_document
    parsed_here: list[str] = []

    def slow(path: str, data: bytes, **kwargs: int) -> object:
        time.sleep(0.01)  # this process is slow: the helper must do most of the work
        parsed_here.append(path)
        return original(path, data, **kwargs)

    monkeypatch.setattr(many, "parse_document", slow)
    monkeypatch.setattr(many, "_POLL_EVERY", 1)
    assert parse_many(files, helper=True) == one_by_one(files)
    assert len(parsed_here) < len(files) // 2


@pytest.mark.parametrize(
    "worker_args",
    [
        ["-c", "import sys; sys.exit(0)"],  # exits at once
        ["-c", "import sys; sys.stdout.buffer.write(b'\\x00\\x00\\x10\\x00broken'); sys.stdout.flush()"],
        ["-c", "import sys; sys.stdout.buffer.write(b'\\x00\\x00\\x00\\x05junk!'); sys.stdout.flush()"],
    ],
    ids=["exits", "truncated-frame", "not-a-pickle"],
)
def test_a_failing_helper_costs_only_time(monkeypatch: pytest.MonkeyPatch, worker_args: list[str]) -> None:
    files = sample_files(100)
    monkeypatch.setattr(many, "WORKER_ARGS", worker_args)
    assert parse_many(files, helper=True) == one_by_one(files)


def test_a_helper_that_cannot_start_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    files = sample_files(50)
    monkeypatch.setattr(sys, "executable", str(REPO / "no-such-python"))
    assert parse_many(files, helper=True) == one_by_one(files)


def test_no_helper_for_a_small_load_or_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("the helper must not start")

    monkeypatch.setattr(many._Helper, "start", refuse)
    files = sample_files(20)
    assert parse_many(files) == one_by_one(files)
    monkeypatch.setattr(many, "HELPER_MIN_FILES", 10)
    monkeypatch.setattr(many, "_idle_cpu", lambda: True)
    monkeypatch.setenv(many.HELPER_ENV, "0")
    assert parse_many(files) == one_by_one(files)
    monkeypatch.setattr(many, "_idle_cpu", lambda: False)  # a busy machine
    monkeypatch.delenv(many.HELPER_ENV)
    assert parse_many(files) == one_by_one(files)


def test_nothing_to_parse() -> None:
    assert parse_many([], helper=True) == []
