"""Typed domain records for validated specs.

The JSON Schemas in ``controller/specs/schemas/`` are the one definition of
what is valid. Once a document has passed them, :mod:`controller.specs.build`
turns it into these frozen dataclasses, which is what the engine and the
backends work with. Nothing here re-checks validity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

API_VERSION = "flywheel.dev/v1alpha1"

Direction = Literal["higher", "lower"]
Kind = Literal["Model", "Policy", "Environment"]


@dataclass(frozen=True)
class Location:
    """Where something is in the repository: file path (repo-relative), 1-based line and column."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


@dataclass(frozen=True)
class SpecError:
    """One problem in one document, located and worded for a person.

    ``path`` is the path inside the document (``spec.validation.gates[0].min``),
    empty when the problem is with the file as a whole.
    """

    location: Location
    path: str
    message: str
    kind: str = ""  # kind of the document, when known
    name: str = ""  # metadata.name of the document, when known

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.location}: {where}{self.message}"


# --------------------------------------------------------------------- Model


@dataclass(frozen=True)
class Source:
    path: str  # repo-relative directory of the model's code
    requirements: str  # repo-relative path of the requirements file
    python: str = "3.11"
    dockerfile: str | None = None  # repo-relative, cluster image only


@dataclass(frozen=True)
class DataInput:
    name: str
    uri: str
    version: str | None = None
    digest: str | None = None

    @property
    def env_name(self) -> str:
        """The step-contract variable name: ``FLYWHEEL_DATA_<NAME>``."""
        cleaned = "".join(c if c.isalnum() else "_" for c in self.name.upper())
        return f"FLYWHEEL_DATA_{cleaned}"


@dataclass(frozen=True)
class Resources:
    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = None


@dataclass(frozen=True)
class Step:
    name: str
    run: str
    needs: tuple[str, ...] = ()
    timeout_seconds: float = 3600.0
    retries: int = 0
    resources: Resources = field(default_factory=Resources)
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Metric:
    name: str
    direction: Direction = "higher"


@dataclass(frozen=True)
class Gate:
    """A validation gate on one metric.

    Exactly one of the bounds is set. ``min``/``max`` are absolute thresholds;
    ``max_regression`` (absolute) and ``max_relative_regression`` (fraction of
    the baseline) compare with the version in production, in the metric's
    worse direction.
    """

    metric: str
    min: float | None = None
    max: float | None = None
    max_regression: float | None = None
    max_relative_regression: float | None = None

    @property
    def is_change_gate(self) -> bool:
        return self.max_regression is not None or self.max_relative_regression is not None


@dataclass(frozen=True)
class DriftMonitoring:
    """``serving.drift``: how a served version's live inputs are compared with its training data.

    Every served version that has a reference profile is watched; these are
    the thresholds (defaults: the usual PSI bands 0.1/0.25, a family-wise
    p-value of 0.05 split over the features).
    """

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    p_value: float = 0.05  # for all features together; each is tested at p_value / number of features
    min_samples: int = 500  # fewer live rows in a window: not enough data
    window_seconds: float = 3600.0
    sustained_windows: int = 3
    sample_size: int = 5000  # live rows kept per window (reservoir)
    features: tuple[str, ...] = ()  # empty: every feature of the reference

    def to_json(self) -> dict[str, Any]:
        return {
            "psi": {"warn": self.psi_warn, "alert": self.psi_alert},
            "pValue": self.p_value,
            "minSamples": self.min_samples,
            "windowSeconds": self.window_seconds,
            "sustainedWindows": self.sustained_windows,
            "sampleSize": self.sample_size,
            "features": list(self.features),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DriftMonitoring:
        """The inverse of :meth:`to_json` (``windowSeconds``, not the spec's ``window`` duration)."""
        psi = doc.get("psi", {})
        return cls(
            psi_warn=float(psi.get("warn", cls.psi_warn)),
            psi_alert=float(psi.get("alert", cls.psi_alert)),
            p_value=float(doc.get("pValue", cls.p_value)),
            min_samples=int(doc.get("minSamples", cls.min_samples)),
            window_seconds=float(doc.get("windowSeconds", cls.window_seconds)),
            sustained_windows=int(doc.get("sustainedWindows", cls.sustained_windows)),
            sample_size=int(doc.get("sampleSize", cls.sample_size)),
            features=tuple(doc.get("features", ())),
        )


@dataclass(frozen=True)
class Serving:
    runtime: str = "sklearn"  # sklearn | xgboost | custom
    command: str | None = None  # custom server command honouring the serving contract
    sample_inputs: tuple[tuple[Any, ...], ...] = ()
    drift: DriftMonitoring = field(default_factory=DriftMonitoring)


@dataclass(frozen=True)
class CanaryStep:
    weight: int  # percent of traffic to the canary
    duration_seconds: float


@dataclass(frozen=True)
class Stage:
    environment: str
    canary: tuple[CanaryStep, ...] = ()
    approval: str | None = None  # name of an approval rule in a Policy


@dataclass(frozen=True)
class AnalysisCheck:
    """One analysis check: a built-in one or a PromQL query, with its bounds."""

    name: str
    builtin: str | None = None  # successRate | latency | requestCount
    query: str | None = None  # PromQL with {{model}}, {{version}}, {{environment}}
    percentile: float | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Analysis:
    interval_seconds: float = 10.0
    failure_limit: int = 2
    no_data: Literal["inconclusive", "fail"] = "inconclusive"
    checks: tuple[AnalysisCheck, ...] = ()


@dataclass(frozen=True)
class Rollout:
    stages: tuple[Stage, ...] = ()
    analysis: Analysis = field(default_factory=Analysis)


@dataclass(frozen=True)
class Drift:
    """``triggers.drift``: sustained drift of the version serving the rollout's last environment retrains.

    The thresholds, the window, the minimum rows and how many windows in a
    row make drift sustained are the model's ``serving.drift``
    (:class:`DriftMonitoring`): one place for each threshold.
    """

    features: tuple[str, ...] = ()  # only these features' drift counts; any watched feature when empty


@dataclass(frozen=True)
class Schedule:
    """A cron expression and the IANA time zone it is read in."""

    cron: str
    timezone: str = "UTC"


@dataclass(frozen=True)
class Triggers:
    schedule: Schedule | None = None
    data_change: bool = False
    drift: Drift | None = None


@dataclass(frozen=True)
class Notification:
    channel: str  # "console" | "slack"
    target: str = ""  # e.g. the Slack channel


@dataclass(frozen=True)
class Model:
    name: str
    spec_path: str  # repo-relative path of the model.yaml
    source: Source
    data: tuple[DataInput, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()
    metrics: tuple[Metric, ...] = ()
    primary_metric: str | None = None
    gates: tuple[Gate, ...] = ()
    serving: Serving = field(default_factory=Serving)
    rollout: Rollout = field(default_factory=Rollout)
    triggers: Triggers = field(default_factory=Triggers)
    notifications: tuple[Notification, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


# -------------------------------------------------------------------- Policy


@dataclass(frozen=True)
class Identity:
    """One person and their names on the outside services."""

    user: str
    github: str | None = None
    slack: str | None = None
    login: str | None = None  # the operating-system login name (the CLI and the dashboard's local sign-in)


@dataclass(frozen=True)
class ApprovalRule:
    name: str
    groups: tuple[str, ...]
    required: int = 1
    allow_author: bool = False
    expires_after_seconds: float | None = None


@dataclass(frozen=True)
class Policy:
    name: str
    spec_path: str
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> members
    identities: tuple[Identity, ...] = ()
    trusted_groups: tuple[str, ...] = ()
    trusted_users: tuple[str, ...] = ()
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)  # command -> groups ("*" = anyone)
    approvals: tuple[ApprovalRule, ...] = ()


# --------------------------------------------------------------- Environment


@dataclass(frozen=True)
class ArgoSpec:
    """How the argo runner reaches the Argo Server (``pipeline.argo``)."""

    server: str  # base URL, http(s)
    service_account: str | None = None  # the Workflow's serviceAccountName
    token_env: str | None = None  # environment variable holding the bearer token
    token_file: str | None = None  # file holding the bearer token
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    git_secret: str | None = None  # the Secret with the repository's credentials for the pods' checkout


@dataclass(frozen=True)
class ImagesSpec:
    """Where a model's image goes: ``<registry>/<repository>/<model>:<tag>``, built on ``base_image``."""

    registry: str  # host[:port]
    repository: str  # prefix inside the registry
    base_image: str  # FROM of the generated Dockerfile
    push_secret: str | None = None  # a kubernetes.io/dockerconfigjson Secret's name
    insecure: bool = False  # plain-HTTP registry


@dataclass(frozen=True)
class S3Artifacts:
    """Models saved to an S3-compatible bucket under ``prefix``."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # None: AWS S3
    secret: str | None = None  # a Secret with accessKey and secretKey


@dataclass(frozen=True)
class PvcArtifacts:
    """Models saved on a PersistentVolumeClaim mounted at ``mount_path`` in every step's pod."""

    claim_name: str
    mount_path: str = "/artifacts"


ArtifactsSpec = S3Artifacts | PvcArtifacts


@dataclass(frozen=True)
class Environment:
    name: str
    spec_path: str
    home: Literal["embedded", "cluster"] = "embedded"
    production: bool = False
    runner: str = "local"  # local | argo
    max_parallel: int = 2
    serving_backend: str = "local"  # local | kserve
    port: int | None = None  # the router's port on the embedded home
    namespace: str | None = None  # cluster home: serving.namespace, else pipeline.namespace
    metrics_source: str = "builtin"  # builtin | prometheus
    prometheus_url: str | None = None
    pipeline_namespace: str | None = None  # cluster home: where Argo runs the steps
    serving_namespace: str | None = None  # cluster home: where KServe serves
    serving_service_account: str | None = None  # kserve: the predictors' serviceAccountName
    argo: ArgoSpec | None = None  # runner argo: the Argo Server
    images: ImagesSpec | None = None  # cluster home: where models' images go
    artifacts: ArtifactsSpec | None = None  # cluster home: where steps save models


# ------------------------------------------------------------------- Catalog


@dataclass(frozen=True)
class Catalog:
    """Every valid document of one commit, and every error found.

    A document with an error is left out of the maps (it blocks only itself);
    ``errors`` says why.
    """

    models: dict[str, Model] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    environments: dict[str, Environment] = field(default_factory=dict)
    errors: tuple[SpecError, ...] = ()

    def approval_rule(self, name: str) -> ApprovalRule | None:
        for policy in self.policies.values():
            for rule in policy.approvals:
                if rule.name == name:
                    return rule
        return None

    def errors_for(self, spec_path: str) -> tuple[SpecError, ...]:
        return tuple(e for e in self.errors if e.location.file == spec_path)
