"""A damaged state directory is refused in one line, and nothing is done on it (issue 13, item 3).

Pins down: every audit append advances the high-water mark beside the
database once its transaction commits (never for one rolled back), and
writers through several engines keep one mark of the whole log; the
comparison of a log with its mark (in step, ahead, unmarked, behind,
diverged); a store whose write-ahead log was lost, or cut part way, is
refused by ``flywheel run --once`` with one line saying how many entries are
missing and naming ``flywheel state check``, and no run is started and no
outbox message sent; ``flywheel state check`` shows what is missing and
``flywheel state accept --yes`` takes the database as it is, audited,
never beside a running controller (and
a decision command, which writes, is refused like the controller until then); a
read-only state directory or database file and a damaged database page are
one line each; the controller checkpoints the log after every tick, so a
copy of the database without its log loses nothing.

Read-only drills as root: root ignores permission bits (``chmod`` stops
nothing, ``os.access`` says yes), so when the tests run as root they make
the directory or file immutable with ``chattr +i`` (which stops root too)
and are skipped, saying why, where the filesystem or the capabilities do not
allow that; as any other user they ``chmod`` it. A read-only database is also
produced without either, by opening it through a read-only SQLite URI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from controller.app import build_controller
from controller.backends.local.lock import ControllerLock
from controller.backends.serving.fake import FakeServing
from controller.backends.store import AuditEntry, open_store
from controller.backends.store.integrity import (
    AuditMark,
    MarkFile,
    StateBehindMark,
    StateCorrupt,
    StateNotWritable,
    compare,
    verify_state,
)
from controller.backends.store.sql import SqlStore
from controller.cli import main
from controller.clock import SYSTEM_CLOCK
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, Settings
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.integration

_CLEAN: dict[str, str | None] = {
    name: None
    for name in (
        "FLYWHEEL_GITHUB_REPOSITORY",
        "FLYWHEEL_GITHUB_TOKEN",
        "FLYWHEEL_GITHUB_APP_ID",
        "FLYWHEEL_SLACK_BOT_TOKEN",
        "FLYWHEEL_STATE_DIR",
        "FLYWHEEL_REPO",
        "FLYWHEEL_USER",
    )
}
_MARK = "state.db.audit-mark"


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=_CLEAN)


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert len(result.output.splitlines()) == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: ")
    return line


def _entry(number: int, action: str = "did") -> AuditEntry:
    return AuditEntry(id=number, at=datetime(2026, 1, 1, tzinfo=UTC), actor="a", action=action)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The scaffold's repository with one proposal: a controller that acted would start a run for it."""
    work = GitRepo(tmp_path / "ml")
    scaffold(work.path)
    work.branch("tune")
    work.edit("specs/iris/model.yaml", "    C: 1.0\n", "    C: 3.0\n")
    work.commit("iris: C=3")
    work.git("checkout", "-q", "main")
    return work.path


@pytest.fixture
def live(tmp_path: Path) -> Iterator[SqlStore]:
    """A real store in use: 5 entries and a queued message checkpointed, then 15 entries only in the log."""
    store = open_store(tmp_path / "live", clock=SYSTEM_CLOCK)
    for number in range(5):
        store.append_audit(actor="controller", action="run_started", model="iris", detail={"n": number})
    store.enqueue(destination="console", key="k1", payload={"text": "iris v1 is rolling out"})
    store.checkpoint()
    for number in range(15):
        store.append_audit(
            actor="cli:ann", action="approved", model="iris", version=1, environment="production",
            detail={"n": number},
        )  # fmt: skip
    yield store
    store.close()


def _crashed_copy(live: Path, to: Path, *, wal_bytes: int | None) -> Path:
    """``live``'s state as a crash left it that kept ``wal_bytes`` of its write-ahead log (None: none)."""
    to.mkdir()
    shutil.copy(live / "state.db", to / "state.db")
    shutil.copy(live / _MARK, to / _MARK)
    if wal_bytes is not None:
        (to / "state.db-wal").write_bytes((live / "state.db-wal").read_bytes()[:wal_bytes])
    return to


def _nothing_done(state: Path, *, entries: int) -> None:
    """No run started, the queued message unsent, the audit log and its mark as the refusal found them."""
    mark = (state / _MARK).read_text()
    store = open_store(state, clock=SYSTEM_CLOCK)
    try:
        assert store.list_runs() == []
        (message,) = store.due_messages()
        assert message.key == "k1" and message.sent_at is None
        assert len(store.audit()) == entries
    finally:
        store.close()
    assert (state / _MARK).read_text() == mark
    assert not (state / "runs").exists() and not (state / "venvs").exists()


# --------------------------------------------------------------------- the mark


def test_every_append_advances_the_mark_once_committed_and_never_for_a_rollback(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s", clock=SYSTEM_CLOCK)
    marks = MarkFile(tmp_path / "s" / _MARK)
    try:
        assert marks.read() is None
        store.append_audit(actor="a", action="one")
        store.append_audit(actor="a", action="two")
        assert marks.read() == AuditMark().extended(store.audit()) and marks.read() == AuditMark(
            sequence=2, entries=2, digest=AuditMark().extended(store.audit()).digest
        )
        with store.transaction():
            store.append_audit(actor="a", action="three")
            assert marks.read() is not None and marks.read().sequence == 2  # type: ignore[union-attr]
        assert marks.read() == AuditMark().extended(store.audit()) and len(store.audit()) == 3
        with pytest.raises(RuntimeError), store.transaction():
            store.append_audit(actor="a", action="undone")
            raise RuntimeError("rolled back")
        assert marks.read() == AuditMark().extended(store.audit()) and len(store.audit()) == 3
        assert store.audit_comparison().state == "in step"
        assert (
            sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.startswith(".")) == []
        )  # no temp left
    finally:
        store.close()


def test_writers_in_several_processes_keep_one_mark_of_the_whole_log(tmp_path: Path) -> None:
    stores = [
        open_store(tmp_path / "s", clock=SYSTEM_CLOCK) for _ in range(2)
    ]  # two engines, as two processes

    def append(store: SqlStore, who: str) -> None:
        for number in range(10):
            store.append_audit(actor=who, action="approved", detail={"n": number})

    try:
        writers = [threading.Thread(target=append, args=(store, f"w{i}")) for i, store in enumerate(stores)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        entries = stores[0].audit()
        assert len(entries) == 20
        assert MarkFile(tmp_path / "s" / _MARK).read() == AuditMark().extended(entries)
    finally:
        for store in stores:
            store.close()


def test_a_log_compared_with_its_mark() -> None:
    log = [_entry(n) for n in range(1, 6)]
    mark = AuditMark().extended(log[:3])
    assert compare(None, log).state == "unmarked"
    assert compare(mark, log[:3]).state == "in step"
    assert compare(mark, log).state == "ahead"
    behind = compare(AuditMark().extended(log), log[:2])
    assert (behind.state, behind.missing, behind.damaged) == ("behind", 3, True)
    replaced = [*log[:2], _entry(3, action="something else")]
    assert compare(mark, replaced).state == "diverged" and compare(mark, replaced).damaged
    assert compare(mark, [*replaced, *log[3:]]).state == "diverged"  # and newer entries do not hide it


def test_a_damaged_mark_is_one_line(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s", clock=SYSTEM_CLOCK)
    try:
        store.append_audit(actor="a", action="one")
        (tmp_path / "s" / _MARK).write_text("{not json")
        with pytest.raises(
            StateCorrupt, match=r"^the audit mark .*state.db.audit-mark is damaged .*state accept"
        ):
            verify_state(store)
    finally:
        store.close()


# ------------------------------------------------------------ the drills, in the CLI


@pytest.mark.parametrize(
    ("wal", "lost"),
    [(0, 15), (None, 15), ("half", None)],
    ids=["log-truncated", "log-gone", "log-cut-part-way"],
)
def test_a_lost_or_cut_log_is_refused_in_one_line_and_nothing_is_done(
    live: SqlStore, repo: Path, tmp_path: Path, wal: int | str | None, lost: int | None
) -> None:
    source = tmp_path / "live"
    size = (source / "state.db-wal").stat().st_size
    state = _crashed_copy(source, tmp_path / "crashed", wal_bytes=size // 2 if wal == "half" else wal)  # type: ignore[arg-type]
    line = _one_error_line(_invoke("run", "--once", "--repo", str(repo), "--state-dir", str(state)))
    survived = len(open_store(state, clock=SYSTEM_CLOCK).audit())
    assert 5 <= survived < 20
    assert lost is None or survived == 20 - lost
    assert line == (
        f"Error: cannot use the Flywheel state in {state}: the audit log has lost {20 - survived} of its 20 "
        f"entries: the database holds {survived} up to #20, where its mark ({state / _MARK}) counted 20; "
        f"refusing to act on it: see what is missing with `flywheel state check --state-dir {state}`, "
        f"accept the database as it is with `flywheel state accept --state-dir {state} --yes --reason ...`"
    )
    _nothing_done(state, entries=survived)


def test_state_check_shows_what_is_missing_and_accept_lets_the_controller_start(
    live: SqlStore, repo: Path, tmp_path: Path
) -> None:
    state = _crashed_copy(tmp_path / "live", tmp_path / "crashed", wal_bytes=None)
    shown = _invoke("state", "check", "--state-dir", str(state), "--last", "2")
    assert shown.exit_code == 1, shown.output
    assert (
        f"mark:      #20, 20 entries, digest {live.audit_comparison().database.digest[:12]}" in shown.output
    )
    assert "database:  #5, 5 entries" in shown.output
    assert "15 audit entries are missing from the database" in shown.output
    assert "#4" in shown.output and "#5" in shown.output and "#3 " not in shown.output  # the newest 2 it has

    decided = _one_error_line(_invoke("approve", "iris", "--as", "ann", "--state-dir", str(state)))
    assert decided.startswith(f"Error: cannot use the Flywheel state in {state}: the audit log has lost 15")
    _nothing_done(state, entries=5)  # a command that writes is refused like the controller

    refused = _one_error_line(_invoke("state", "accept", "--state-dir", str(state), "--reason", "restored"))
    assert "run this again with --yes" in refused
    assert "audit mark now" not in refused and (state / _MARK).exists()

    with ControllerLock.acquire(state, clock=SYSTEM_CLOCK):
        busy = _one_error_line(
            _invoke("state", "accept", "--state-dir", str(state), "--yes", "--reason", "r")
        )
    assert busy.startswith(f"Error: another controller is running on {state}")

    done = _invoke(
        "state", "accept", "--state-dir", str(state), "--yes", "--reason", "disk lost its tail", "--as", "ops"
    )
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"accepted the state in {state} as it is; 15 missing entries given up")
    store = open_store(state, clock=SYSTEM_CLOCK)
    try:
        accepted = store.audit()[-1]
        assert (accepted.actor, accepted.action, accepted.detail["reason"]) == (
            "cli:ops", "state_accepted", "disk lost its tail"
        )  # fmt: skip
        assert (accepted.detail["was"], accepted.detail["missing"]) == ("behind", 15)
        assert verify_state(store).state == "in step"  # the controller would start on it now
    finally:
        store.close()
    checked = _invoke("state", "check", "--state-dir", str(state), "--json")
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.output)
    assert (report["audit"], report["problems"], report["missing"]) == ("in step", [], 0)
    assert report["mark"] == report["database"] and report["mark"]["entries"] == 6


@contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """``path`` made read-only: ``chmod``, or for root (whom modes do not stop) ``chattr +i``."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"running as root, and cannot make {path} immutable: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("what", ["directory", "database"])
def test_a_read_only_state_is_refused_in_one_line_naming_it(
    live: SqlStore, repo: Path, tmp_path: Path, what: str
) -> None:
    state = tmp_path / "live"
    live.close()  # a controller stopped cleanly: its log is in the database
    (state / "controller.lock").touch()  # as the controller that ran there left it
    target = state if what == "directory" else state / "state.db"
    with _read_only(target):
        line = _one_error_line(_invoke("run", "--once", "--repo", str(repo), "--state-dir", str(state)))
    assert line.startswith(f"Error: cannot use the Flywheel state in {state}: ")
    assert f" {target} " in line and "nothing done" in line
    _nothing_done(state, entries=20)


def test_a_read_only_database_is_found_by_a_write_it_refuses(live: SqlStore, tmp_path: Path) -> None:
    live.close()
    database = tmp_path / "live" / "state.db"
    store = SqlStore(f"sqlite:///file:{database}?mode=ro&uri=true", clock=SYSTEM_CLOCK)
    try:
        with pytest.raises(
            StateNotWritable, match=f"^the state database {database} cannot be written .*readonly"
        ):
            store.check_writable()
    finally:
        store.close()


def test_a_damaged_page_is_one_line(tmp_path: Path, repo: Path) -> None:
    state = tmp_path / "s"
    store = open_store(state, clock=SYSTEM_CLOCK)
    for number in range(300):
        store.append_audit(actor="a", action="filler", detail={"text": "x" * 200, "n": number})
    store.close()
    database = state / "state.db"
    data = bytearray(database.read_bytes())
    page = 4096
    middle = (len(data) // page - 3) * page  # a page of the audit log's rows, far from the schema
    data[middle + 8 : middle + page] = b"\x55" * (page - 8)
    database.write_bytes(bytes(data))
    line = _one_error_line(_invoke("run", "--once", "--repo", str(repo), "--state-dir", str(state)))
    assert line.startswith(
        f"Error: cannot use the Flywheel state in {state}: the state database {database} is damaged"
    )
    assert line.endswith("restore it from a backup; nothing done")


# ------------------------------------------------------------------ checkpoints


def test_the_controller_checkpoints_the_log_after_every_tick(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "s"
    controller = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=state)), serving=FakeServing()
    )
    try:
        for number in range(3):
            controller.store.append_audit(actor="a", action="approved", detail={"n": number})
        before = _crashed_copy(state, tmp_path / "before", wal_bytes=None)
        controller.tick()
        after = _crashed_copy(state, tmp_path / "after", wal_bytes=None)
    finally:
        controller.close()
    for copy, expected in ((before, StateBehindMark), (after, None)):
        store = open_store(copy, clock=SYSTEM_CLOCK)
        try:
            if expected is None:
                assert verify_state(store).state == "in step"
            else:
                with pytest.raises(expected):
                    verify_state(store)
        finally:
            store.close()
