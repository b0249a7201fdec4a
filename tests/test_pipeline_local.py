"""The local pipeline runner honours the step contract and runs the steps as a DAG.

Pinned down here: independent steps run in parallel and ``needs`` orders the
rest, steps free to start starting in pipeline order; ``needs`` that name no
step or form a cycle are errors; a failed step skips its dependants and
reports its log tail; a timeout kills the step's whole process group; retries
re-run a failed attempt; the steps' metrics are merged and bad metrics fail
the step; every variable of the step contract is set; ``cancel()`` stops a run promptly; runner-side problems
are ``error``, not ``failed``. The slow test runs specs/iris end to end in a
virtualenv built from its requirements.

Most tests run the steps in the test's own environment (no venv build), with
tiny ``python -c``/``sh`` commands, to stay fast.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from controller.backends.local.processes import uses_shell
from controller.backends.local.venvs import VenvCache
from controller.backends.pipelines import RunRequest, RunResult, StepEvent
from controller.backends.pipelines.local import LocalRunner
from controller.specs.types import DataInput, Model, Source, Step

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def _model(*steps: Step, data: tuple[DataInput, ...] = (), name: str = "m") -> Model:
    return Model(
        name=name,
        spec_path=f"specs/{name}/model.yaml",
        source=Source(path=f"specs/{name}", requirements=f"specs/{name}/requirements.txt"),
        data=data,
        steps=steps,
    )


def _run(
    tmp_path: Path,
    *steps: Step,
    runner: LocalRunner | None = None,
    timeout: float = 30,
    **kwargs: object,
) -> tuple[RunResult, list[StepEvent]]:
    events: list[StepEvent] = []
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    model = kwargs.pop("model", None) or _model(*steps)
    request = RunRequest(
        run_id="r1",
        model=model,  # type: ignore[arg-type]
        source_dir=source,
        run_dir=tmp_path / "run",
        on_event=events.append,
        **kwargs,  # type: ignore[arg-type]
    )
    handle = (runner or LocalRunner()).start(request)
    return handle.wait(timeout=timeout), events


def _py(code: str) -> str:
    """A step command running ``code`` with the step's python (exec'd directly, no shell)."""
    command = f"python -c {shlex.quote(code)}"
    assert not uses_shell(command)
    return command


def test_commands_with_shell_syntax_use_the_shell() -> None:
    assert not uses_shell("python train.py --lr 0.1")
    assert not uses_shell("python -c 'import sys; sys.exit(0)'")  # quoted: no shell needed
    assert not uses_shell('python -c "print(1); print(2)"')
    assert uses_shell('echo "$HOME"')
    assert uses_shell("python train.py && python evaluate.py")
    assert uses_shell("echo $HOME")
    assert uses_shell("FOO=1 python train.py")
    assert uses_shell("cd sub")


def test_parallel_branches_run_together_and_needs_orders_the_rest(tmp_path: Path) -> None:
    stamp = (
        "import os,time,pathlib; p=pathlib.Path(os.environ['FLYWHEEL_WORKDIR'])/'{n}'; "
        "p.write_text(str(time.time())+'\\n'); time.sleep({s}); p.write_text(p.read_text()+str(time.time()))"
    )
    steps = (
        Step(name="a", run=_py(stamp.format(n="a", s=0))),
        Step(name="b", run=_py(stamp.format(n="b", s=0.6)), needs=("a",)),
        Step(name="c", run=_py(stamp.format(n="c", s=0.6)), needs=("a",)),
        Step(name="d", run=_py(stamp.format(n="d", s=0)), needs=("b", "c")),
    )
    result, events = _run(tmp_path, *steps, max_parallel=2)
    assert result.status == "succeeded", result
    times = {n: [float(x) for x in (tmp_path / "run" / "work" / n).read_text().split()] for n in "abcd"}
    assert times["b"][0] >= times["a"][1] and times["c"][0] >= times["a"][1]
    assert times["b"][0] < times["c"][1] and times["c"][0] < times["b"][1], "b and c did not overlap"
    assert times["d"][0] >= max(times["b"][1], times["c"][1])
    started = [e.step for e in events if e.kind == "started"]
    assert started[0] == "a" and started[-1] == "d"
    assert {e.step for e in events if e.kind == "finished" and e.status == "succeeded"} == set("abcd")


def test_parallel_limit_of_one_runs_branches_in_turn(tmp_path: Path) -> None:
    stamp = (
        "import os,time,pathlib; p=pathlib.Path(os.environ['FLYWHEEL_WORKDIR'])/'{n}'; "
        "p.write_text(str(time.time())+'\\n'); time.sleep(0.2); p.write_text(p.read_text()+str(time.time()))"
    )
    result, _ = _run(
        tmp_path,
        Step(name="b", run=_py(stamp.format(n="b"))),
        Step(name="c", run=_py(stamp.format(n="c"))),
        max_parallel=1,
    )
    assert result.status == "succeeded"
    b, c = ([float(x) for x in (tmp_path / "run" / "work" / n).read_text().split()] for n in "bc")
    assert c[0] >= b[1]


def test_ready_steps_start_in_pipeline_order_each_once(tmp_path: Path) -> None:
    steps = (
        Step(name="x", run="true", needs=("y",)),  # declared first, ready second
        Step(name="y", run="true"),
        Step(name="z", run="true"),
        Step(name="w", run="true", needs=("x", "y")),
    )
    result, events = _run(tmp_path, *steps, max_parallel=1)
    assert result.status == "succeeded"
    assert [e.step for e in events if e.kind == "started"] == ["y", "x", "z", "w"]


def test_failed_step_skips_dependants_and_reports_log_tail(tmp_path: Path) -> None:
    noisy = "import sys\nfor i in range(200): print('line', i)\nsys.exit(3)"
    steps = (
        Step(name="prepare", run=_py(noisy)),
        Step(name="train", run=_py("pass"), needs=("prepare",)),
        Step(name="evaluate", run=_py("pass"), needs=("train",)),
    )
    result, _ = _run(tmp_path, *steps)
    assert result.status == "failed"
    prepare = result.step("prepare")
    assert prepare is not None and prepare.status == "failed" and prepare.exit_code == 3
    assert "exited with code 3" in prepare.message and "prepare" in result.error
    tail = prepare.log_tail.splitlines()
    assert len(tail) == 50 and "line 199" in prepare.log_tail and "line 100" not in prepare.log_tail
    assert prepare.log_path is not None and "line 0" in prepare.log_path.read_text()
    assert [s.status for s in result.steps[1:]] == ["skipped", "skipped"]


def test_running_steps_finish_after_a_failure_but_no_new_ones_start(tmp_path: Path) -> None:
    steps = (
        Step(name="bad", run=_py("import sys; sys.exit(1)")),
        Step(name="slow", run=_py("import time; time.sleep(0.5)")),
        Step(name="later", run=_py("pass")),
    )
    result, _ = _run(tmp_path, *steps, max_parallel=2)
    assert result.status == "failed"
    assert [s.status for s in result.steps] == ["failed", "succeeded", "skipped"]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_timeout_kills_the_step_and_its_children(tmp_path: Path) -> None:
    cmd = 'sleep 30 & echo $! > "$FLYWHEEL_WORKDIR/child.pid"; sleep 30'
    began = time.monotonic()
    result, _ = _run(tmp_path, Step(name="sleepy", run=cmd, timeout_seconds=0.5))
    assert time.monotonic() - began < 5
    step = result.step("sleepy")
    assert result.status == "failed" and step is not None and step.status == "failed"
    assert "timed out after 0.5s" in step.message
    child = int((tmp_path / "run" / "work" / "child.pid").read_text())
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child), "the step's child survived the timeout"


def test_timeout_escalates_to_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    stubborn = _py(
        "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ok', flush=True); "
        "time.sleep(30)"
    )
    began = time.monotonic()
    result, _ = _run(
        tmp_path,
        Step(name="stubborn", run=stubborn, timeout_seconds=0.5),
        runner=LocalRunner(kill_grace_seconds=0.3),
    )
    assert result.status == "failed" and time.monotonic() - began < 5


def test_retry_succeeds_on_second_attempt(tmp_path: Path) -> None:
    flaky = _py(
        "import os,pathlib,json,sys\n"
        "w=pathlib.Path(os.environ['FLYWHEEL_WORKDIR'])\n"
        "m=pathlib.Path(os.environ['FLYWHEEL_METRICS'])\n"
        "assert not m.exists() or not m.read_text(), 'metrics file not fresh'\n"
        "m.write_text(json.dumps({'tries': 1}))\n"
        "if not (w/'tried').exists(): (w/'tried').touch(); print('first'); sys.exit(1)\n"
        "m.write_text(json.dumps({'tries': 2}))\n"
    )
    result, events = _run(tmp_path, Step(name="flaky", run=flaky, retries=2))
    step = result.step("flaky")
    assert result.status == "succeeded" and step is not None and step.attempts == 2
    assert result.metrics == {"tries": 2.0}
    assert [(e.kind, e.attempt) for e in events] == [("started", 1), ("retrying", 1), ("finished", 2)]
    log = step.log_path.read_text() if step.log_path else ""
    assert "attempt 1/3" in log and "attempt 2/3" in log and "first" in log


def test_retries_exhausted_fail_the_step(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, Step(name="bad", run=_py("import sys; sys.exit(2)"), retries=1))
    step = result.step("bad")
    assert result.status == "failed" and step is not None and step.attempts == 2 and step.exit_code == 2


def _write_metrics(values: object) -> str:
    return _py(f"import os,json; open(os.environ['FLYWHEEL_METRICS'],'w').write(json.dumps({values!r}))")


def test_metrics_are_merged_across_steps(tmp_path: Path) -> None:
    steps = (
        Step(name="train", run=_write_metrics({"loss": 0.5, "n": 3})),
        Step(name="evaluate", run=_write_metrics({"accuracy": 0.9, "loss": 0.25}), needs=("train",)),
        Step(name="quiet", run=_py("pass"), needs=("train",)),
    )
    result, _ = _run(tmp_path, *steps)
    assert result.status == "succeeded"
    assert result.metrics == {"loss": 0.25, "n": 3.0, "accuracy": 0.9}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == result.metrics


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"accuracy": "high"}', "finite numbers: accuracy='high'"),
        ('{"ok": true}', "finite numbers: ok=True"),
        ('{"x": NaN}', "finite numbers"),
    ],
)
def test_invalid_metrics_fail_the_step(tmp_path: Path, content: str, expected: str) -> None:
    cmd = _py(f"import os; open(os.environ['FLYWHEEL_METRICS'],'w').write({content!r})")
    result, _ = _run(tmp_path, Step(name="evaluate", run=cmd))
    step = result.step("evaluate")
    assert result.status == "failed" and step is not None and step.status == "failed"
    assert "invalid metrics" in step.message and expected in step.message
    assert result.metrics == {}


def test_step_contract_environment(tmp_path: Path) -> None:
    dump = _py(
        "import os,sys,json\n"
        "keys=[k for k in os.environ if k.startswith(('FLYWHEEL_','VIRTUAL_ENV','PATH'))]\n"
        "d={k: os.environ[k] for k in keys}; d['cwd']=os.getcwd(); d['prefix']=sys.prefix\n"
        "d['params']=json.load(open(os.environ['FLYWHEEL_PARAMS']))\n"
        "out=os.path.join(os.environ['FLYWHEEL_WORKDIR'], os.environ['OWN']+'.json')\n"
        "open(out,'w').write(json.dumps(d))"
    )
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    venv = Path(sys.prefix)
    model = _model(
        Step(name="one", run=dump, env=(("OWN", "one"), ("FLYWHEEL_WORKDIR", "/nope"))),
        Step(name="two", run=dump, env=(("OWN", "two"),), needs=("one",)),
        data=(DataInput(name="iris", uri="sklearn://iris"), DataInput(name="raw-events", uri="s3://b/e")),
    )
    result, _ = _run(
        tmp_path,
        model=model,
        params={"C": 1.5, "layers": [1, 2]},
        data={"raw-events": "/data/events"},
        baseline_model_dir=baseline,
        runner=LocalRunner(venv=venv),
    )
    assert result.status == "succeeded", result
    run = tmp_path / "run"
    one = json.loads((run / "work" / "one.json").read_text())
    two = json.loads((run / "work" / "two.json").read_text())
    for seen in (one, two):
        assert seen["params"] == {"C": 1.5, "layers": [1, 2]}
        assert seen["FLYWHEEL_PARAMS"] == str(run / "params.json")
        assert seen["FLYWHEEL_DATA_IRIS"] == "sklearn://iris"
        assert seen["FLYWHEEL_DATA_RAW_EVENTS"] == "/data/events"
        assert seen["FLYWHEEL_WORKDIR"] == str(run / "work")
        assert seen["FLYWHEEL_MODEL_DIR"] == str(run / "model")
        assert seen["FLYWHEEL_BASELINE_MODEL_DIR"] == str(baseline)
        assert seen["VIRTUAL_ENV"] == str(venv)
        assert seen["PATH"].split(os.pathsep)[0] == str(venv / "bin")
        assert seen["cwd"] == str(tmp_path / "src")
        assert Path(seen["prefix"]).resolve() == venv.resolve()
    assert one["FLYWHEEL_METRICS"] != two["FLYWHEEL_METRICS"]
    assert Path(one["FLYWHEEL_METRICS"]).parent == run / "metrics"
    assert result.model_dir == run / "model"


def test_no_baseline_variable_without_a_baseline(tmp_path: Path) -> None:
    cmd = _py("import os,sys; sys.exit(1 if 'FLYWHEEL_BASELINE_MODEL_DIR' in os.environ else 0)")
    result, _ = _run(tmp_path, Step(name="s", run=cmd))
    assert result.status == "succeeded"


def test_cancel_stops_a_running_run_promptly(tmp_path: Path) -> None:
    started = threading.Event()

    def on_event(event: StepEvent) -> None:
        if event.kind == "started":
            started.set()

    (tmp_path / "src").mkdir()
    request = RunRequest(
        run_id="r1",
        model=_model(
            Step(name="long", run="sleep 30"),
            Step(name="also-long", run=_py("import time; time.sleep(30)")),
            Step(name="after", run="true", needs=("long",)),
        ),
        source_dir=tmp_path / "src",
        run_dir=tmp_path / "run",
        on_event=on_event,
    )
    handle = LocalRunner().start(request)
    assert started.wait(5)
    time.sleep(0.2)
    assert not handle.done()
    began = time.monotonic()
    handle.cancel()
    result = handle.wait(timeout=5)
    assert time.monotonic() - began < 2
    assert handle.done() and result.status == "cancelled"
    assert [s.status for s in result.steps] == ["cancelled", "cancelled", "skipped"]


def test_wait_times_out_while_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    request = RunRequest(
        run_id="r1",
        model=_model(Step(name="s", run="sleep 5")),
        source_dir=tmp_path / "src",
        run_dir=tmp_path / "run",
    )
    handle = LocalRunner().start(request)
    with pytest.raises(TimeoutError):
        handle.wait(timeout=0.1)
    handle.cancel()
    assert handle.wait(timeout=5).status == "cancelled"


def test_command_not_found_is_a_runner_error(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path, Step(name="a", run="no-such-program-flywheel --x"), Step(name="b", run="true", needs=("a",))
    )
    step = result.step("a")
    assert result.status == "error" and step is not None and step.status == "error"
    assert "command not found: no-such-program-flywheel" in step.message
    assert result.steps[1].status == "skipped"


def test_unknown_needs_and_cycles_are_errors(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, Step(name="a", run="true", needs=("ghost",)))
    assert result.status == "error" and "unknown steps ['ghost']" in result.error
    result, _ = _run(
        tmp_path, Step(name="a", run="true", needs=("b",)), Step(name="b", run="true", needs=("a",))
    )
    assert result.status == "error" and "cycle" in result.error
    assert "a -> b -> a" in result.error or "b -> a -> b" in result.error


def test_bad_requirements_end_the_run_as_error(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "requirements.txt").write_text("this is ??? not a requirement\n")
    result, _ = _run(
        tmp_path, Step(name="a", run="true"), runner=LocalRunner(venvs=VenvCache(tmp_path / "venvs"))
    )
    assert result.status == "error" and "cannot build the model's virtualenv" in result.error
    assert result.steps[0].status == "skipped"


def test_iris_pipeline_end_to_end_in_its_own_virtualenv(tmp_path: Path) -> None:
    source = tmp_path / "iris"
    shutil.copytree(REPO / "specs" / "iris", source)
    model = Model(
        name="iris",
        spec_path="specs/iris/model.yaml",
        source=Source(path="specs/iris", requirements="specs/iris/requirements.txt", python="3.11"),
        data=(DataInput(name="iris", uri="sklearn://iris", version="1"),),
        params={"C": 1.0, "max_iter": 200, "test_size": 0.3, "seed": 7},
        steps=(
            Step(name="train", run="python train.py", timeout_seconds=600, retries=1),
            Step(name="evaluate", run="python evaluate.py", needs=("train",), timeout_seconds=300),
        ),
    )
    venvs = VenvCache(tmp_path / "venvs")
    request = RunRequest(
        run_id="iris-1",
        model=model,
        source_dir=source,
        run_dir=tmp_path / "run",
        params=model.params,
    )
    result = LocalRunner(venvs=venvs).start(request).wait(timeout=600)
    assert result.status == "succeeded", [(s.name, s.message, s.log_tail) for s in result.steps]
    assert result.metrics["accuracy"] > 0.85
    assert {"f1_macro", "log_loss"} <= result.metrics.keys()
    assert result.model_dir is not None and (result.model_dir / "model.joblib").is_file()
    assert result.environment_hash is not None and len(result.environment_hash) == 64


# ------------------------------------------------- the fake keeps the same rules


def test_fake_runner_follows_the_same_dag_rules(tmp_path: Path) -> None:
    from controller.backends.pipelines.fake import FakeRunner, ScriptedStep

    model = _model(
        Step(name="evaluate", run="-", needs=("train",)),
        Step(name="train", run="-"),
        Step(name="report", run="-", needs=("evaluate",)),
    )
    runner = FakeRunner(
        {
            "train": ScriptedStep(metrics={"loss": 0.1}, model_files={"model.bin": b"x"}),
            "m/evaluate": ScriptedStep(status="failed", log="boom\n"),
        }
    )
    events: list[StepEvent] = []
    request = RunRequest(
        run_id="f1", model=model, source_dir=tmp_path, run_dir=tmp_path / "run", on_event=events.append
    )
    result = runner.start(request).wait(0)
    assert result.status == "failed" and result.metrics == {"loss": 0.1}
    assert [s.status for s in result.steps] == ["failed", "succeeded", "skipped"]
    assert result.steps[0].log_tail == "boom\n" and (tmp_path / "run" / "model" / "model.bin").is_file()
    assert [(e.step, e.kind) for e in events][:2] == [("train", "started"), ("train", "finished")]
    assert runner.requests == [request]


def test_fake_runner_can_hold_a_run_and_cancel_it(tmp_path: Path) -> None:
    from controller.backends.pipelines.fake import FakeRunner

    runner = FakeRunner(hold=True)
    request = RunRequest(
        run_id="f2", model=_model(Step(name="a", run="-")), source_dir=tmp_path, run_dir=tmp_path / "run"
    )
    held = runner.start(request)
    assert not held.done()
    with pytest.raises(TimeoutError):
        held.wait(0.01)
    held.cancel()
    assert held.wait(0).status == "cancelled"
    other = runner.start(request)
    runner.release_all()
    assert other.wait(0).status == "succeeded"


def test_cancel_kills_the_steps_children_too(tmp_path: Path) -> None:
    started = threading.Event()
    (tmp_path / "src").mkdir()
    request = RunRequest(
        run_id="r1",
        model=_model(Step(name="parent", run='sleep 30 & echo $! > "$FLYWHEEL_WORKDIR/child.pid"; wait')),
        source_dir=tmp_path / "src",
        run_dir=tmp_path / "run",
        on_event=lambda e: started.set(),
    )
    handle = LocalRunner().start(request)
    assert started.wait(5)
    pid_file = tmp_path / "run" / "work" / "child.pid"
    deadline = time.monotonic() + 5
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(pid_file.read_text())
    handle.cancel()
    assert handle.wait(timeout=5).status == "cancelled"
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)
