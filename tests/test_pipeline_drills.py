"""Drill: the controller SIGKILLed while a local pipeline step runs, then the run started again.

Pinned down here, with :class:`LocalRunner`: a controller process starts a run
whose ``train`` step (with a child of its own) would run for a minute, and is
killed (``SIGKILL``, by itself) either right after the step's launch, before
it recorded the pid, or while the step runs. The run started again in the
same run directory (from a clean copy, as the engine resumes a run):

* ends the orphaned step and its child first: the resumed step sees no
  earlier attempt still running (it checks, and reports it as a metric);
  so does another run started instead (the killed run given up), since the
  controller that launched the orphan is gone;
* leaves no process of the orphan's process group (a psutil scan);
* succeeds, and keeps no step record once its steps have exited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from controller.backends.pipelines import RunRequest
from controller.backends.pipelines.local import LocalRunner
from controller.specs.types import Model, Source, Step

pytestmark = pytest.mark.integration

# The step: notes its pid; the first attempt of all starts a child and runs for a minute, a later
# one reports how many earlier attempts still run (concurrent) and exits.
TRAIN = r'''
import json, os, pathlib, subprocess, sys, time
marks = pathlib.Path(os.environ["MARKS"])
earlier = [int(line) for line in (marks / "pids").read_text().split()] if (marks / "pids").exists() else []
with open(marks / "pids", "a") as out:
    out.write(f"{os.getpid()}\n")

def running(pid):
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False

if not earlier:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (marks / "started").touch()
    time.sleep(60)
concurrent = sum(map(running, earlier))
pathlib.Path(os.environ["FLYWHEEL_METRICS"]).write_text(json.dumps({"concurrent": concurrent}))
'''

# The controller that dies: starts the run, and SIGKILLs itself right after the step's launch (its pid
# not yet recorded) or once the step runs.
CRASHING_CONTROLLER = r'''
import os, pathlib, signal, sys, time
from controller.backends.pipelines import RunRequest
from controller.backends.pipelines import orphans
from controller.backends.pipelines.local import LocalRunner
from controller.specs.types import Model, Source, Step

tmp, moment = pathlib.Path(sys.argv[1]), sys.argv[2]
if moment == "launched":
    orphans.StepRecords.launched = lambda self, record, pid: os.kill(os.getpid(), signal.SIGKILL)
source = Source(path="specs/m", requirements="specs/m/requirements.txt")
model = Model(name="m", spec_path="specs/m/model.yaml", source=source,
              steps=(Step(name="train", run="python train.py", env={"MARKS": str(tmp / "marks")}),))
LocalRunner().start(RunRequest(run_id="7", model=model, source_dir=tmp / "run" / "src", run_dir=tmp / "run"))
while not (tmp / "marks" / "started").exists():
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
'''


def _model(marks: Path) -> Model:
    step = Step(name="train", run="python train.py", env={"MARKS": str(marks)})
    source = Source(path="specs/m", requirements="specs/m/requirements.txt")
    return Model(name="m", spec_path="specs/m/model.yaml", source=source, steps=(step,))


def _wait_for(path: Path) -> None:
    for _ in range(3000):
        if path.exists():
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def _group(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (psutil.Error, OSError):
            continue
    return members


@pytest.mark.parametrize(
    ("moment", "next_run"), [("launched", "same"), ("running", "same"), ("running", "another")]
)
def test_a_resumed_run_ends_the_steps_a_killed_controller_left_running(
    tmp_path: Path, moment: str, next_run: str
) -> None:
    marks, run_dir = tmp_path / "marks", tmp_path / "run"
    marks.mkdir()
    (run_dir / "src").mkdir(parents=True)
    (run_dir / "src" / "train.py").write_text(TRAIN)
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_CONTROLLER, str(tmp_path), moment],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == -9, done.stderr
    _wait_for(marks / "started")
    (orphan,) = (int(line) for line in (marks / "pids").read_text().split())
    try:
        assert len(_group(orphan)) == 2  # the step and its child outlived the controller

        if next_run == "same":
            shutil.rmtree(run_dir)  # resumed from a clean copy, as the engine does
        else:  # the killed run is given up (cancelled) and another one starts
            run_dir = tmp_path / "run-8"
        (run_dir / "src").mkdir(parents=True)
        (run_dir / "src" / "train.py").write_text(TRAIN)
        run_id = "7" if next_run == "same" else "8"
        request = RunRequest(run_id=run_id, model=_model(marks), source_dir=run_dir / "src", run_dir=run_dir)
        result = LocalRunner(kill_grace_seconds=1.0).start(request).wait(timeout=60)

        assert result.status == "succeeded", result
        assert result.metrics == {"concurrent": 0.0}  # the orphan had been ended before the step ran again
        assert _group(orphan) == []
        assert list((tmp_path / ".steps").glob("*/*")) == []
    finally:
        for process in _group(orphan):
            process.kill()


def test_a_run_leaves_alone_the_steps_of_another_run_its_controller_still_runs(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    runner = LocalRunner(kill_grace_seconds=1.0)
    handles = []
    for run_id in ("1", "2"):  # the first one's step runs for a minute, the second one's exits at once
        run_dir = tmp_path / f"run-{run_id}"
        (run_dir / "src").mkdir(parents=True)
        (run_dir / "src" / "train.py").write_text(TRAIN)
        request = RunRequest(run_id=run_id, model=_model(marks), source_dir=run_dir / "src", run_dir=run_dir)
        handles.append(runner.start(request))
        _wait_for(marks / "started")
    try:
        assert handles[1].wait(timeout=60).metrics == {"concurrent": 1.0}  # run 1's step ran on
        assert not handles[0].done()
    finally:
        handles[0].cancel()
    assert handles[0].wait(timeout=60).status == "cancelled"
