"""Controller logs: readable lines with the proposal and model for people, JSON lines for machines."""

from __future__ import annotations

import json
import logging

import pytest

from controller.logs import setup_logging

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _restore() -> object:
    logger = logging.getLogger("flywheel")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield None
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_json_lines_carry_the_context_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json")
    logging.getLogger("flywheel.proposals").info(
        "step %s started", "train", extra={"proposal": "tune", "model": "iris", "step": "train", "run": 7}
    )
    line = json.loads(capsys.readouterr().err.strip())
    assert line["message"] == "step train started"
    assert (line["proposal"], line["model"], line["step"], line["run"]) == ("tune", "iris", "train", 7)
    assert line["level"] == "info"


def test_text_lines_name_the_proposal_and_model(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("text")
    logging.getLogger("flywheel.proposals").warning("boom", extra={"proposal": "tune", "model": "iris"})
    assert capsys.readouterr().err.strip().endswith("warning: [tune · iris] boom")
