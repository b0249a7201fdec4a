"""``flywheel demo``: the whole loop on one machine, in a few minutes, from a fresh install.

It scaffolds the example repository into a temporary directory, starts the
controller on it (real git, the local runner with isolated virtualenvs,
MLServer model servers behind weighted routers, SQLite), and then plays the
people:

1. main's two example models (iris, and breast-cancer from ``flywheel init
   --example``) are trained, registered as v1 and rolled out; the business
   owner (carol) approves production for each;
2. an ML engineer (alice) proposes a change to iris on a branch; the controller
   trains it and the review report is printed;
3. the branch is merged; the proposal's run becomes v2 (what was reviewed is
   what ships) and goes through staging and canary steps under generated
   traffic, with live analysis;
4. at the approval gate alice's approval is refused (the rule asks for a
   business owner) and carol's is accepted; v2 reaches production and v1 retires;
5. the serving history, the versions and the audit log are printed
   (``--keep`` leaves the state, so ``flywheel ui`` shows all of it).

Every process it starts is stopped at the end, and the directory removed
(unless ``keep``). The demo shortens the example's canary steps and analysis
interval so that it finishes in minutes; everything else is the template as
``flywheel init`` writes it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from controller.app import Controller, build_controller
from controller.backends.serving import inference_request
from controller.backends.serving.server import free_port
from controller.backends.store import RolloutRecord
from controller.engine.commands import Actor, Commands
from controller.engine.rollout_state import load_state
from controller.scaffold import EXAMPLES, scaffold
from controller.settings import ControllerSettings, LocalSettings, Settings, default_venv_cache

__all__ = ["DemoError", "DemoOptions", "run_demo"]

MODEL = "iris"  # the model alice changes
MODELS = (MODEL, *EXAMPLES)  # every model the demo's repository holds
BRANCH = "tune-regularisation"
DEMO_ROLLOUT = """  rollout:
    stages:
      - environment: staging
      - environment: production
        canary:
          - weight: 20
            duration: 12s
          - weight: 50
            duration: 12s
        approval: production-signoff
    analysis:
      interval: 4s
      failureLimit: 2
      noData: inconclusive
      checks:
        - name: success-rate
          builtin: successRate
          min: 0.99
        - name: latency-p99
          builtin: latency
          percentile: 99
          max: 0.5
        - name: enough-traffic
          builtin: requestCount
          min: 10
"""


class DemoError(RuntimeError):
    """The demo could not go on; the message says where it stopped."""


@dataclass(frozen=True)
class DemoOptions:
    keep: bool = False  # leave the directory (repository, state, logs) for a look afterwards
    workdir: Path | None = None
    venv_dir: Path | None = None  # shared with later runs, so the second demo builds nothing
    timeout_seconds: float = 900.0
    echo: Callable[[str], None] = print


class _Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.echo = options.echo
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="flywheel-demo-"))
        self.repo = self.workdir / "repo"
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.controller: Controller | None = None
        self.errors: list[BaseException] = []

    # ------------------------------------------------------------- steps

    def run(self) -> None:
        if self.options.keep:  # a path is worth printing only when it will still be there
            self.say(f"Working in {self.workdir} (kept afterwards)")
        else:
            self.say("Working in a temporary directory, removed at the end (--keep keeps it)")
        self.say(
            "Scaffolding the example repository (flywheel init) and shortening its canary steps for the demo"
        )
        scaffold(self.repo, examples=EXAMPLES)
        self._tune_for_demo()
        venv_dir = self.options.venv_dir or default_venv_cache()
        settings = Settings(
            controller=ControllerSettings(
                repo=str(self.repo), state_dir=self.workdir / "state", interval_seconds=1.0, tick_seconds=0.5
            ),
            local=LocalSettings(venv_dir=venv_dir),
        )
        self.controller = build_controller(settings)
        self._thread(self._control_loop, "controller")
        self._thread(self._traffic, "traffic")
        commands = Commands(
            store=self.controller.store, catalog=self.controller.main_catalog, clock=self.controller.clock
        )

        self.say(
            f"Training {' and '.join(MODELS)} on main; each becomes v1 "
            f"(virtualenvs are built once, in {venv_dir})"
        )
        for model in MODELS:
            self.wait_for(partial(self._registered, 1, model), f"{model} v1", timeout=600)
        for model in MODELS:
            self.wait_for(partial(self._at_gate, 1, model), f"{model} v1 to reach the approval gate")
            self._approve(commands, "carol", 1, model)
        for model in MODELS:
            self.wait_for(partial(self._succeeded, 1, model), f"{model} v1 to reach production")
        self.say(f"v1 of each serves production. Now alice proposes a change to {MODEL} on a branch.")

        self.git("checkout", "--quiet", "-b", BRANCH, author="alice")
        model_yaml = self.repo / "specs" / MODEL / "model.yaml"
        model_yaml.write_text(model_yaml.read_text().replace("    C: 1.0\n", "    C: 2.0\n", 1))
        self.git("commit", "--quiet", "-am", "iris: weaker regularisation (C 1.0 → 2.0)", author="alice")
        self.wait_for(self._review_done, f"the review of {BRANCH}")
        store = self.controller.store
        for review in store.reviews(proposal=BRANCH):
            self.say(f"Review report on {BRANCH} ({review.state}):")
            self.echo(review.body)

        self.say(f"Merging {BRANCH} into main")
        self.git("checkout", "--quiet", "main", author="alice")
        self.git("merge", "--quiet", "--no-ff", BRANCH, "-m", f"Merge {BRANCH}", author="alice")
        self.wait_for(partial(self._registered, 2, MODEL), "v2 to be registered")
        self.say("v2 is the proposal's own run (what was reviewed is what ships); rolling out under traffic")
        self.wait_for(partial(self._at_gate, 2, MODEL), "v2 to pass its canary steps and reach its gate")
        refused = commands.decide(Actor("cli", "alice"), decision="approve", model=MODEL, version=2)
        self.say(
            f"alice (the ML engineer who made the change) tries to approve it: "
            f"{'accepted' if refused.ok else 'refused'}: {refused.message}"
        )
        self._approve(commands, "carol", 2, MODEL)
        self.wait_for(partial(self._succeeded, 2, MODEL), "v2 to reach production")
        self._report()

    def _tune_for_demo(self) -> None:
        for model in MODELS:
            model_yaml = self.repo / "specs" / model / "model.yaml"
            text = model_yaml.read_text()
            start = text.index("  rollout:\n")
            end = text.index("  notifications:\n")
            model_yaml.write_text(text[:start] + DEMO_ROLLOUT + text[end:])
        for name in ("staging", "production"):
            env = self.repo / "environments" / f"{name}.yaml"
            lines = env.read_text().splitlines()
            env.write_text(
                "\n".join(
                    f"    port: {free_port()}" if line.startswith("    port:") else line for line in lines
                )
                + "\n"
            )
        self.git("commit", "--quiet", "-am", "demo: short canary steps, free ports", author="flywheel")

    def _approve(self, commands: Commands, user: str, version: int, model: str) -> None:
        outcome = commands.decide(Actor("cli", user), decision="approve", model=model, version=version)
        if not outcome.ok:
            raise DemoError(f"{user} could not approve {model} v{version}: {outcome.message}")
        self.say(f"{user} (business owner) approves: {outcome.message}")

    def _report(self) -> None:
        assert self.controller is not None
        store = self.controller.store
        self.say(f"Serving history of {MODEL}:")
        for environment in ("staging", "production"):
            for record in store.serving_history(environment=environment, model=MODEL):
                self.echo(f"  {record.at:%H:%M:%S}  {environment:<10} v{record.version} → {record.weight}%")
        self.say("Versions:")
        catalog = self.controller.main_catalog()
        for model in MODELS:
            primary = catalog.models[model].primary_metric or ""
            for version in store.list_versions(model):
                run = store.get_run(version.run_id)
                reused = run.reused_from
                origin = f"reused run {reused} of the proposal" if reused else f"run {run.id}"
                value = version.metrics.get(primary)
                shown = f"{primary}={value:.4f}" if value is not None else "-"
                self.echo(
                    f"  {model:<14} v{version.number}  commit {version.commit[:10]}  {origin}  "
                    f"{shown}  artifact {version.artifact_digest[:23]}"
                )
        decisions = [
            e for e in store.audit(model=MODEL) if e.action.startswith(("approval.", "command.refused"))
        ]
        self.say("Approval decisions in the audit log:")
        for entry in decisions:
            self.echo(
                f"  {entry.at:%H:%M:%S}  {entry.actor:<8} {entry.action:<18} "
                f"v{entry.version} {entry.environment}"
            )
        self.say(f"Done in {time.monotonic() - self.started:.0f}s.")

    # ------------------------------------------------------------ workers

    def _control_loop(self) -> None:
        assert self.controller is not None
        controller = self.controller
        last_poll = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now - last_poll >= 1.0:
                controller.repository.fetch()
                controller.proposals.reconcile()
                last_poll = now
            controller.proposals.collect()
            controller.tick()
            self.stop.wait(0.3)

    def _traffic(self) -> None:
        """Steady requests to every environment's router once it routes a model, as clients would send.

        Each model gets its spec's sample inputs (what the smoke test sends too).
        """
        assert self.controller is not None
        controller = self.controller
        targets: list[tuple[str, bytes]] = []
        refreshed = 0.0
        while not self.stop.is_set():
            if time.monotonic() - refreshed > 2.0:
                catalog = controller.main_catalog()
                now = controller.clock.now()
                targets = [
                    (
                        controller.serving.endpoint(environment=catalog.environments[name], model=model)
                        + "/infer",
                        json.dumps(inference_request(catalog.models[model].serving.sample_inputs)).encode(),
                    )
                    for model in MODELS
                    for name in ("staging", "production")
                    if controller.store.served_at(environment=name, model=model, at=now)
                ]
                refreshed = time.monotonic()
            for url, body in targets:
                request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=5) as response:
                        response.read()
                except OSError:
                    pass
            self.stop.wait(0.02)

    # ------------------------------------------------------------ helpers

    def _rollout(self, version: int, model: str) -> RolloutRecord | None:
        assert self.controller is not None
        return next((r for r in self.controller.store.rollouts_for(model) if r.version == version), None)

    def _registered(self, version: int, model: str) -> bool:
        return self._rollout(version, model) is not None

    def _succeeded(self, version: int, model: str) -> bool:
        return self._state(version, model) == "succeeded"

    def _state(self, version: int, model: str) -> str | None:
        rollout = self._rollout(version, model)
        if rollout is not None and rollout.state in ("rolled_back", "failed", "rejected", "aborted"):
            outcome = load_state(rollout).outcome
            why = outcome.reason if outcome is not None else "no reason recorded"
            raise DemoError(f"the rollout of {model} v{version} ended {rollout.state}: {why}")
        return rollout.state if rollout else None

    def _at_gate(self, version: int, model: str) -> bool:
        rollout = self._rollout(version, model)
        return (
            self._state(version, model) == "gate"
            and rollout is not None
            and rollout.environment == "production"
        )

    def _review_done(self) -> bool:
        assert self.controller is not None
        reviews = self.controller.store.reviews(proposal=BRANCH)
        return bool(reviews) and all(r.state != "pending" for r in reviews)

    def wait_for(self, condition: Callable[[], bool], what: str, *, timeout: float | None = None) -> None:
        limit = time.monotonic() + (timeout or self.options.timeout_seconds)
        while time.monotonic() < limit:
            if self.errors:
                raise DemoError(f"while waiting for {what}: {self.errors[0]}") from self.errors[0]
            if condition():
                return
            time.sleep(0.5)
        raise DemoError(f"gave up waiting for {what}")

    def git(self, *args: str, author: str) -> None:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": f"{author}@example.com",
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": f"{author}@example.com",
        }
        done = subprocess.run(["git", *args], cwd=self.repo, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise DemoError(f"git {' '.join(args)} failed: {done.stderr.strip()}")

    def say(self, text: str) -> None:
        self.echo(f"[{time.monotonic() - self.started:5.0f}s] ==> {text}")

    def _thread(self, target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # reported by wait_for in the main thread
                self.errors.append(exc)

        thread = threading.Thread(target=guarded, name=f"demo-{name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        if self.controller is not None:
            self.controller.serving.shutdown()
            self.controller.close()
        if self.options.keep:
            self.echo(f"Kept {self.workdir} (repository, state and logs). To look at it in the dashboard:")
            self.echo(f"  flywheel ui --state-dir {self.workdir / 'state'} --repo {self.repo}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run_demo(options: DemoOptions | None = None) -> None:
    """Run the demo; raises :class:`DemoError` saying where it stopped when it cannot finish."""
    demo = _Demo(options or DemoOptions())
    notify = logging.getLogger("flywheel.notify")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("        %(message)s"))
    notify.addHandler(handler)
    notify.setLevel(logging.INFO)
    notify.propagate = False
    try:
        demo.run()
    finally:
        notify.removeHandler(handler)
        notify.propagate = True
        demo.close()
