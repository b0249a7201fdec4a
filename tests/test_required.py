"""What a test needs from outside the repository: skipped without it, failed without it in CI.

Pins down :mod:`tests.fixtures.required`: a missing reference file or program
skips the test on a developer's machine, saying what is missing; with
``FLYWHEEL_TEST_REQUIRE_ALL`` set (as ``.ci/run`` does) it fails the test
instead, in one line; what is there is handed back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from controller.settings import ENV_TEST_REQUIRE_ALL
from tests.fixtures import required
from tests.fixtures.required import REFERENCE_ROOT, missing, program, reference

pytestmark = pytest.mark.unit
ABSENT = "no-such-reference-file.json"


@pytest.mark.parametrize("value", ["", "0"])
def test_without_the_variable_a_missing_need_skips_saying_what(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ENV_TEST_REQUIRE_ALL, value)
    with pytest.raises(pytest.skip.Exception) as skipped:
        reference(ABSENT)
    assert skipped.value.msg == (
        f"reference data {REFERENCE_ROOT / ABSENT} is missing (tests needing it are skipped)"
    )
    with pytest.raises(pytest.skip.Exception) as skipped:
        program("no-such-program-x")
    assert skipped.value.msg.startswith("the program no-such-program-x (apt-get install no-such-program-x)")


def test_with_the_variable_a_missing_need_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_TEST_REQUIRE_ALL, "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        reference(ABSENT)
    what = f"reference data {REFERENCE_ROOT / ABSENT}"
    assert failed.value.msg == f"{what} is missing, and {ENV_TEST_REQUIRE_ALL} requires every test to run"
    assert not failed.value.pytrace
    with pytest.raises(pytest.fail.Exception, match=r"\(apt-get install prometheus\) is missing"):
        program("no-such-program-x", package="prometheus")
    with pytest.raises(pytest.fail.Exception, match=r"^the program uv is missing"):
        missing("the program uv")


def test_what_is_there_is_handed_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_TEST_REQUIRE_ALL, "1")
    monkeypatch.setattr(required, "REFERENCE_ROOT", tmp_path)
    (tmp_path / "payloads").mkdir()
    assert reference("payloads") == tmp_path / "payloads"
    python = Path(sys.executable)
    monkeypatch.setenv("PATH", str(python.parent))
    assert program(python.name) == str(python)


def test_without_postgresql_the_tests_needing_it_skip_or_fail_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import postgres

    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    monkeypatch.setenv(ENV_TEST_REQUIRE_ALL, "")
    with pytest.raises(pytest.skip.Exception, match=r"\(apt-get install postgresql\)"):
        postgres.pg_bin()
    monkeypatch.setenv(ENV_TEST_REQUIRE_ALL, "1")
    with pytest.raises(pytest.fail.Exception, match=r"\(apt-get install postgresql\) is missing"):
        postgres.pg_bin()
