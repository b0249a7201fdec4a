"""The drift trigger's decisions and episodes, with the injected clock and a stand-in for the router.

Pins down:

* ``triggers.drift`` in the spec: ``true`` or ``{features: [...]}``; ``false``
  is no trigger; its thresholds are ``serving.drift``'s;
* the pure planner (:func:`drift_decision`): too few rows is never "no
  drift"; drift that is not yet sustained waits; sustained drift fires, only
  for the features the trigger counts; an open episode does not fire again,
  is over when the latest window has no counted feature drifting or another
  version serves; a version without a reference profile is skipped;
* the engine: one episode proposes one retrain, with the drift table in the
  proposal's body and the audit; it re-arms when the drift falls back and the
  next sustained drift is a new episode with a new retrain; drift is read at
  the check interval of the injected clock, not every tick; a restarted
  engine reads the open episode back from the audit log and fires nothing
  twice; a version that cannot be judged is skipped once; a router that
  cannot be read is a failure, audited once; ``flywheel triggers`` shows the
  drift trigger's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.backends.serving.drift_source import serving_version
from controller.backends.store import state_url
from controller.backends.store.sql import SqlStore
from controller.clock import FakeClock
from controller.drift import DriftReport, FeatureDrift
from controller.engine.retrain import Proposed
from controller.engine.trigger_plan import (
    DRIFT_ANNOTATION,
    RETRAIN_ANNOTATION,
    DriftEpisode,
    Reason,
    drift_decision,
    drift_table,
)
from controller.engine.trigger_status import trigger_statuses
from controller.engine.triggers import ARMED, FAILED, FIRED, SKIPPED, TriggerEngine
from controller.specs import load_catalog
from controller.specs.types import Catalog, Drift, DriftMonitoring, Model

pytestmark = pytest.mark.unit

SETTINGS = DriftMonitoring(min_samples=100, sustained_windows=2)
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

SPEC = """\
apiVersion: flywheel.dev/v1alpha1
kind: Model
metadata:
  name: churn
spec:
  pipeline:
    steps:
      - name: train
        run: python train.py
  serving:
    drift:
      minSamples: 100
      sustainedWindows: 2
  rollout:
    stages:
      - environment: staging
      - environment: production
  triggers:
{triggers}
"""
ENVIRONMENT = """\
apiVersion: flywheel.dev/v1alpha1
kind: Environment
metadata:
  name: {name}
spec: {{}}
"""


def _catalog(triggers: str = "    drift: true") -> tuple[Catalog, list[str]]:
    files = {
        "specs/churn/model.yaml": SPEC.format(triggers=triggers).encode(),
        "environments/staging.yaml": ENVIRONMENT.format(name="staging").encode(),
        "environments/production.yaml": ENVIRONMENT.format(name="production").encode(),
    }
    catalog = load_catalog(files)
    return catalog, [str(e) for e in catalog.errors]


def _feature(name: str, status: str, samples: int = 500, psi: float = 0.01) -> FeatureDrift:
    return FeatureDrift(name, "numeric", samples, status,  # type: ignore[arg-type]
                        psi=psi, test="ks", p_value=0.5, threshold=0.01)


def _report(sustained: dict[str, int] | None = None, **statuses: str) -> DriftReport:
    features = tuple(_feature(name, status, psi=0.9 if status == "drift" else 0.01)
                     for name, status in statuses.items())
    streaks = {name: (sustained or {}).get(name, 0) for name in statuses}
    return DriftReport(window="current", window_started=0.0, rows=500, features=features,
                       sustained=streaks, settings=SETTINGS)


# ------------------------------------------------------------------ spec


def test_the_spec_takes_true_or_the_features_and_false_is_no_trigger() -> None:
    catalog, errors = _catalog()
    assert errors == [] and catalog.models["churn"].triggers.drift == Drift()
    catalog, errors = _catalog("    drift:\n      features: [tenure, __prediction__]")
    assert errors == [] and catalog.models["churn"].triggers.drift == Drift(("tenure", "__prediction__"))
    catalog, errors = _catalog("    drift: false")
    assert errors == [] and catalog.models["churn"].triggers.drift is None
    assert catalog.models["churn"].serving.drift.sustained_windows == 2  # the one place of the thresholds


# --------------------------------------------------------------- planner


def _decide(report: DriftReport | None, *, episode: DriftEpisode | None = None, version: str | None = "v1",
            trigger: Drift | None = None) -> Any:
    return drift_decision(trigger or Drift(), environment="production", version=version, report=report,
                          episode=episode)


def test_too_few_rows_is_waiting_never_no_drift() -> None:
    decision = _decide(_report(a="not enough data", b="not enough data"))
    assert decision.action == "wait" and "not enough data" in decision.why


def test_drift_fires_only_once_sustained() -> None:
    once = _decide(_report({"a": 1}, a="drift", b="stable"))
    assert once.action == "wait" and "not yet for 2 window(s) in a row" in once.why
    sustained = _decide(_report({"a": 2}, a="drift", b="stable"))
    assert sustained.action == "fire" and sustained.drifted == ("a",)


def test_only_the_features_the_trigger_counts_fire_it() -> None:
    report = _report({"a": 3}, a="drift", b="stable")
    assert _decide(report, trigger=Drift(("b",))).action == "wait"
    assert _decide(report, trigger=Drift(("a",))).drifted == ("a",)


def test_an_open_episode_waits_while_drift_lasts_and_rearms_when_it_falls_back() -> None:
    episode = DriftEpisode("production", "v1", T0)
    still = _decide(_report({"a": 5}, a="drift"), episode=episode)
    assert still.action == "wait" and "already proposed a retrain" in still.why
    assert _decide(_report(a="not enough data"), episode=episode).action == "wait"  # too few rows: no news
    assert _decide(_report(a="warn"), episode=episode).action == "rearm"


def test_another_version_serving_ends_the_episode() -> None:
    episode = DriftEpisode("production", "v1", T0)
    decision = _decide(_report({"a": 5}, a="drift"), episode=episode, version="v2")
    assert decision.action == "rearm" and "v2 serves production now" in decision.why


def test_a_version_without_a_reference_is_skipped_and_nothing_serving_waits() -> None:
    assert _decide(None).action == "skip"
    assert _decide(None, version=None).action == "wait"


def test_the_table_names_each_feature_and_its_streak() -> None:
    table = drift_table(_report({"a": 2}, a="drift", b="stable"))
    assert "| a | numeric | 500 | 0.9000 | ks | 0.5 | 0.01 | drift | 2/2 |" in table
    assert "| b | numeric | 500 | 0.0100 | ks | 0.5 | 0.01 | stable | 0/2 |" in table


def test_the_serving_version_is_the_one_with_most_traffic() -> None:
    assert serving_version({"v1": 80, "v2": 20}) == "v1"
    assert serving_version({"v1": 0}) is None


# ---------------------------------------------------------------- engine


@dataclass
class Router:
    """What the production router reports: the serving version and its drift table (or an outage)."""

    version: str | None = "v1"
    report: DriftReport | None = None
    down: str | None = None
    reads: int = 0

    def production(self, *, environment: Any, model: str) -> tuple[str | None, DriftReport | None]:
        self.reads += 1
        if self.down:
            raise OSError(self.down)
        return self.version, self.report


@dataclass
class Proposer:
    reasons: list[Reason] = field(default_factory=list)

    def propose(self, model: Model, reason: Reason) -> Proposed:
        self.reasons.append(reason)
        return Proposed(branch=f"flywheel/retrain/{model.name}", commit=f"c{len(self.reasons)}",
                        committed=True, proposal=f"branch flywheel/retrain/{model.name}")


CHECK = 60.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Any:
    store = SqlStore(state_url(tmp_path), clock=clock)
    yield store
    store.close()


def _engine(store: Any, router: Router, proposer: Proposer, clock: FakeClock) -> TriggerEngine:
    catalog, errors = _catalog()
    assert errors == []
    return TriggerEngine(records=store, catalog=lambda: catalog, proposer=proposer,  # type: ignore[arg-type]
                         versions=None, clock=clock, data_check_seconds=CHECK, drift=router)  # type: ignore[arg-type]


def _actions(store: Any) -> list[tuple[str, Any]]:
    return [(e.action, e.detail.get("why") or e.detail.get("reason")) for e in store.audit(model="churn")]


def test_one_episode_proposes_one_retrain_and_a_new_episode_another(store: Any, clock: FakeClock) -> None:
    router, proposer = Router(report=_report({"a": 1}, a="drift")), Proposer()
    engine = _engine(store, router, proposer, clock)
    assert engine.tick() == set()  # armed; drifting one window only
    router.report = _report({"a": 2}, a="drift", b="stable")
    assert engine.tick() == set() and router.reads == 1  # read at the check interval, not every tick
    clock.advance(CHECK)
    assert engine.tick() == {"flywheel/retrain/churn"}
    (reason,) = proposer.reasons
    assert reason.trigger == "drift" and reason.title == "Retrain churn: drift in production (a)"
    assert "| a | numeric | 500 | 0.9000 | ks | 0.5 | 0.01 | drift | 2/2 |" in reason.body
    assert reason.annotations[RETRAIN_ANNOTATION] == "drift of v1 in production: a"
    assert reason.annotations[DRIFT_ANNOTATION] == clock.now().isoformat()
    fired = store.audit(model="churn", actions=(FIRED,))[-1]
    assert fired.detail["version"] == "v1" and fired.detail["drifted"] == ["a"]
    assert fired.detail["table"]["features"][0]["status"] == "drift"

    router.report = _report({"a": 7}, a="drift")  # the drift lasts (the retrain may be closed unmerged)
    for _ in range(3):
        clock.advance(CHECK)
        assert engine.tick() == set()
    restarted = _engine(store, router, proposer, clock)  # the episode is read back from the audit log
    clock.advance(CHECK)
    assert restarted.tick() == set() and len(proposer.reasons) == 1

    router.report = _report(a="stable")
    clock.advance(CHECK)
    assert restarted.tick() == set()
    assert _actions(store)[-1] == (ARMED, "the drift of v1 in production fell back under the threshold")
    router.report = _report({"a": 2}, a="drift")
    clock.advance(CHECK)
    assert restarted.tick() == {"flywheel/retrain/churn"} and len(proposer.reasons) == 2


def test_a_new_version_rearms_the_trigger(store: Any, clock: FakeClock) -> None:
    router, proposer = Router(report=_report({"a": 2}, a="drift")), Proposer()
    engine = _engine(store, router, proposer, clock)
    assert engine.tick() == {"flywheel/retrain/churn"}
    router.version = "v2"
    clock.advance(CHECK)
    engine.tick()
    assert _actions(store)[-1] == (ARMED, "v2 serves production now (the episode was v1's)")
    clock.advance(CHECK)
    assert engine.tick() == {"flywheel/retrain/churn"}


def test_an_unwatched_version_is_skipped_once_and_an_outage_fails_once(store: Any, clock: FakeClock) -> None:
    router, proposer = Router(report=None), Proposer()
    engine = _engine(store, router, proposer, clock)
    for _ in range(3):
        engine.tick()
        clock.advance(CHECK)
    skipped = [e for e in store.audit(model="churn") if e.action == SKIPPED]
    assert len(skipped) == 1 and "wrote no FLYWHEEL_REFERENCE_DATA" in skipped[0].detail["why"]
    router.down = "connection refused"
    for _ in range(3):
        engine.tick()
        clock.advance(CHECK)
    failed = store.audit(model="churn", actions=(FAILED,))
    assert len(failed) == 1
    assert "reading the drift of production: connection refused" in failed[0].detail["why"]
    assert proposer.reasons == []


def test_flywheel_triggers_shows_the_drift_trigger(store: Any, clock: FakeClock) -> None:
    catalog, _ = _catalog()
    router, proposer = Router(report=_report({"a": 2}, a="drift")), Proposer()
    (row,) = trigger_statuses(store, catalog, now=clock.now())
    assert (row.trigger, row.next) == ("drift", "on sustained drift")
    assert row.watches == "production: PSI >= 0.25 or p < 0.05/features, 2 window(s), 100 rows"
    _engine(store, router, proposer, clock).tick()
    (row,) = trigger_statuses(store, catalog, now=clock.now())
    assert row.last_fired == clock.now()
    assert row.next == "after the episode of v1 (drift back under the threshold, or another version)"
    assert row.why == "Retrain churn: drift in production (a) → branch flywheel/retrain/churn"


def test_a_report_reads_back_from_its_json() -> None:
    report = _report({"a": 2}, a="drift", b="not enough data")
    again = DriftReport.from_json(report.to_json())
    assert replace(again, window_started=report.window_started) == report
