"""Turn schema-valid documents into the typed records of :mod:`controller.specs.types`.

Called by :mod:`controller.specs.parse` only after a document has passed its
JSON Schema, so nothing here re-checks validity; it fills in defaults, parses
durations and resolves the model's source paths against the repository. A
path that escapes the repository (or is absolute) is the one problem found
here.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from controller.specs.durations import parse_duration
from controller.specs.loader import DocPath
from controller.specs.schema import Problem
from controller.specs.types import (
    DriftMonitoring,
    Analysis,
    AnalysisCheck,
    ApprovalRule,
    ArgoSpec,
    ArtifactsSpec,
    CanaryStep,
    DataInput,
    Drift,
    Environment,
    Gate,
    Identity,
    ImagesSpec,
    Metric,
    Model,
    Notification,
    Policy,
    PvcArtifacts,
    Resources,
    Rollout,
    S3Artifacts,
    Serving,
    Source,
    Stage,
    Schedule,
    Step,
    Triggers,
)

Document = Model | Policy | Environment

DEFAULT_TIMEOUT = "1h"
DEFAULT_INTERVAL = "10s"
DEFAULT_LATENCY_PERCENTILE = 99.0


def build(kind: str, doc: dict[str, Any], spec_path: str) -> tuple[Document, list[Problem]]:
    """The typed record of a schema-valid document of ``kind`` read from ``spec_path``."""
    if kind == "Model":
        return build_model(doc, spec_path)
    if kind == "Policy":
        return build_policy(doc, spec_path), []
    return build_environment(doc, spec_path), []


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# A normalised relative path: non-empty segments, none of them "." or "..".
_NORMAL = re.compile(r"(?!\.\.?(?:/|$))[^/]+(?:/(?!\.\.?(?:/|$))[^/]+)*")


def resolve_path(base: str, relative: str, where: DocPath, problems: list[Problem]) -> str:
    """``relative`` joined to the repo-relative directory ``base``, normalised; "." is the root."""
    if relative.startswith("/") or relative.startswith("\\") or (len(relative) > 1 and relative[1] == ":"):
        problems.append(Problem(where, f"must be a path relative to the spec, got {relative!r}"))
        return relative
    if _NORMAL.fullmatch(relative) and (not base or _NORMAL.fullmatch(base)):
        return f"{base}/{relative}" if base else relative  # what normpath would give, without its work
    if relative == "." and _NORMAL.fullmatch(base):
        return base
    joined = posixpath.normpath(posixpath.join(base or ".", relative))
    if joined == ".." or joined.startswith("../"):
        problems.append(Problem(where, f"path {relative!r} leads outside the repository"))
    return joined


def build_model(doc: dict[str, Any], spec_path: str) -> tuple[Model, list[Problem]]:
    problems: list[Problem] = []
    spec: dict[str, Any] = doc["spec"]
    source_doc = spec.get("source", {})
    spec_dir = posixpath.dirname(spec_path)
    where = ("spec", "source")
    code = resolve_path(spec_dir, source_doc.get("path", "."), (*where, "path"), problems)
    inner: list[Problem] = []  # files under an escaping directory: one error is enough
    requirements = resolve_path(
        code, source_doc.get("requirements", "requirements.txt"), (*where, "requirements"), inner
    )
    dockerfile = source_doc.get("dockerfile")
    if dockerfile is not None:
        dockerfile = resolve_path(code, dockerfile, (*where, "dockerfile"), inner)
    if not problems:
        problems += inner
    source = Source(
        path=code, requirements=requirements, python=source_doc.get("python", "3.11"), dockerfile=dockerfile
    )

    metrics_doc = spec.get("metrics", {})
    triggers_doc = spec.get("triggers", {})
    drift_doc = triggers_doc.get("drift")
    serving_doc = spec.get("serving", {})
    model = Model(
        name=doc["metadata"]["name"],
        spec_path=spec_path,
        source=source,
        # (tuples of list comprehensions: quicker than of generators, and this runs per spec)
        data=tuple(
            [
                DataInput(name=d["name"], uri=d["uri"], version=d.get("version"), digest=d.get("digest"))
                for d in spec.get("data", ())
            ]
        ),
        params=dict(spec.get("params", {})),
        steps=tuple([_step(s) for s in spec["pipeline"]["steps"]]),
        metrics=tuple(
            [
                Metric(name=m["name"], direction=m.get("direction", "higher"))
                for m in metrics_doc.get("reported", ())
            ]
        ),
        primary_metric=metrics_doc.get("primary"),
        gates=tuple([_gate(g) for g in spec.get("validation", {}).get("gates", ())]),
        serving=Serving(
            runtime=serving_doc.get("runtime", "sklearn"),
            command=serving_doc.get("command"),
            sample_inputs=tuple([tuple(row) for row in serving_doc.get("sampleInputs", ())]),
            drift=_drift_monitoring(serving_doc.get("drift", {})),
        ),
        rollout=_rollout(spec.get("rollout", {})),
        triggers=Triggers(
            schedule=_schedule(triggers_doc.get("schedule")),
            data_change=triggers_doc.get("dataChange", False),
            drift=_drift_trigger(drift_doc),
        ),
        notifications=tuple([_notification(n) for n in spec.get("notifications", ())]),
        labels=dict(doc["metadata"].get("labels", {})),
        description=spec.get("description", ""),
    )
    return model, problems


def _schedule(doc: str | dict[str, Any] | None) -> Schedule | None:
    """The string form is a cron expression in UTC; the object form may name its time zone."""
    if doc is None:
        return None
    if isinstance(doc, str):
        return Schedule(cron=doc.strip())
    return Schedule(cron=str(doc["cron"]).strip(), timezone=doc.get("timezone", "UTC"))


def _gate(doc: dict[str, Any]) -> Gate:
    low, high = doc.get("min"), doc.get("max")
    drop, relative = doc.get("maxRegression"), doc.get("maxRelativeRegression")
    return Gate(
        metric=doc["metric"],
        min=None if low is None else float(low),
        max=None if high is None else float(high),
        max_regression=None if drop is None else float(drop),
        max_relative_regression=None if relative is None else float(relative),
    )


def _step(doc: dict[str, Any]) -> Step:
    resources = doc.get("resources", {})
    return Step(
        name=doc["name"],
        run=doc["run"],
        needs=tuple(doc.get("needs", ())),
        timeout_seconds=parse_duration(doc.get("timeout", DEFAULT_TIMEOUT)),
        retries=int(doc.get("retries", 0)),
        resources=Resources(
            cpu=resources.get("cpu"),
            memory=resources.get("memory"),
            gpu=None if resources.get("gpu") is None else int(resources["gpu"]),
        ),
        env=tuple(doc.get("env", {}).items()),
    )


def _rollout(doc: dict[str, Any]) -> Rollout:
    analysis = doc.get("analysis", {})
    return Rollout(
        stages=tuple(
            [
                Stage(
                    environment=s["environment"],
                    canary=tuple(
                        [
                            CanaryStep(
                                weight=int(c["weight"]), duration_seconds=parse_duration(c["duration"])
                            )
                            for c in s.get("canary", ())
                        ]
                    ),
                    approval=s.get("approval"),
                )
                for s in doc.get("stages", ())
            ]
        ),
        analysis=Analysis(
            interval_seconds=parse_duration(analysis.get("interval", DEFAULT_INTERVAL)),
            failure_limit=int(analysis.get("failureLimit", 2)),
            no_data=analysis.get("noData", "inconclusive"),
            checks=tuple([_check(c) for c in analysis.get("checks", ())]),
        ),
    )


def _check(doc: dict[str, Any]) -> AnalysisCheck:
    builtin = doc.get("builtin")
    percentile = _float(doc.get("percentile"))
    if builtin == "latency" and percentile is None:
        percentile = DEFAULT_LATENCY_PERCENTILE
    return AnalysisCheck(
        name=doc["name"],
        builtin=builtin,
        query=doc["prometheus"]["query"] if "prometheus" in doc else None,
        percentile=percentile,
        min=_float(doc.get("min")),
        max=_float(doc.get("max")),
    )


def _notification(doc: dict[str, Any]) -> Notification:
    if "slack" in doc:
        return Notification(channel="slack", target=doc["slack"]["channel"])
    return Notification(channel="console")


def build_policy(doc: dict[str, Any], spec_path: str) -> Policy:
    spec: dict[str, Any] = doc["spec"]
    trust = spec.get("trust", {})
    return Policy(
        name=doc["metadata"]["name"],
        spec_path=spec_path,
        groups={name: tuple(group["members"]) for name, group in spec.get("groups", {}).items()},
        identities=tuple(
            Identity(user=i["user"], github=i.get("github"), slack=i.get("slack"), login=i.get("login"))
            for i in spec.get("identities", ())
        ),
        trusted_groups=tuple(trust.get("groups", ())),
        trusted_users=tuple(trust.get("users", ())),
        commands={command: tuple(groups) for command, groups in spec.get("commands", {}).items()},
        approvals=tuple(
            ApprovalRule(
                name=r["name"],
                groups=tuple(r["groups"]),
                required=int(r.get("required", 1)),
                allow_author=r.get("allowAuthor", False),
                expires_after_seconds=None if "expiresAfter" not in r else parse_duration(r["expiresAfter"]),
            )
            for r in spec.get("approvals", ())
        ),
    )


def build_environment(doc: dict[str, Any], spec_path: str) -> Environment:
    spec: dict[str, Any] = doc["spec"]
    pipeline = spec.get("pipeline", {})
    serving = spec.get("serving", {})
    metrics = spec.get("metrics", {})
    return Environment(
        name=doc["metadata"]["name"],
        spec_path=spec_path,
        home=spec.get("home", "embedded"),
        production=spec.get("production", False),
        runner=pipeline.get("runner", "local"),
        max_parallel=int(pipeline.get("maxParallel", 2)),
        serving_backend=serving.get("backend", "local"),
        port=None if serving.get("port") is None else int(serving["port"]),
        namespace=serving.get("namespace") or pipeline.get("namespace"),
        metrics_source=metrics.get("source", "builtin"),
        prometheus_url=metrics.get("prometheusUrl"),
        pipeline_namespace=pipeline.get("namespace"),
        serving_namespace=serving.get("namespace"),
        serving_service_account=serving.get("serviceAccountName"),
        argo=_argo(pipeline.get("argo")),
        images=_images(spec.get("images")),
        artifacts=_artifacts(spec.get("artifacts")),
    )


def _argo(doc: dict[str, Any] | None) -> ArgoSpec | None:
    if doc is None:
        return None
    token = doc.get("token", {})
    tls = doc.get("tls", {})
    return ArgoSpec(
        server=doc["server"],
        service_account=doc.get("serviceAccount"),
        git_secret=doc.get("git", {}).get("secret"),
        token_env=token.get("env"),
        token_file=token.get("file"),
        ca_file=tls.get("caFile"),
        insecure_skip_verify=tls.get("insecureSkipVerify", False),
    )


def _images(doc: dict[str, Any] | None) -> ImagesSpec | None:
    if doc is None:
        return None
    return ImagesSpec(
        registry=doc["registry"],
        repository=doc["repository"],
        base_image=doc["baseImage"],
        push_secret=doc.get("pushSecret"),
        insecure=doc.get("insecure", False),
    )


def _artifacts(doc: dict[str, Any] | None) -> ArtifactsSpec | None:
    if doc is None:
        return None
    if "s3" in doc:
        s3 = doc["s3"]
        return S3Artifacts(
            bucket=s3["bucket"],
            prefix=s3.get("prefix", ""),
            endpoint=s3.get("endpoint"),
            secret=s3.get("secret"),
        )
    pvc = doc["pvc"]
    return PvcArtifacts(claim_name=pvc["claimName"], mount_path=pvc.get("mountPath", "/artifacts"))


def _drift_trigger(doc: Any) -> Drift | None:
    """``triggers.drift``: ``true``, or ``{features: [...]}``; ``false`` or absent: no drift trigger."""
    if doc is None or doc is False:
        return None
    return Drift(features=tuple(doc.get("features", ())) if isinstance(doc, dict) else ())


def _drift_monitoring(doc: dict[str, Any]) -> DriftMonitoring:
    psi = doc.get("psi", {})
    defaults = DriftMonitoring()
    return DriftMonitoring(
        psi_warn=float(psi.get("warn", defaults.psi_warn)),
        psi_alert=float(psi.get("alert", defaults.psi_alert)),
        p_value=float(doc.get("pValue", defaults.p_value)),
        min_samples=int(doc.get("minSamples", defaults.min_samples)),
        window_seconds=parse_duration(doc["window"]) if "window" in doc else defaults.window_seconds,
        sustained_windows=int(doc.get("sustainedWindows", defaults.sustained_windows)),
        sample_size=int(doc.get("sampleSize", defaults.sample_size)),
        features=tuple(doc.get("features", ())),
    )
