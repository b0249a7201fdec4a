"""Checks within one document that a JSON Schema cannot express.

Unique names inside a list, references to a declared step, metric or group,
and the pipeline's steps forming a DAG. Called by :mod:`controller.specs.parse`
on schema-valid documents only; it also lists the names a document refers to
in other documents (environments, approval rules) or declares for them, for
the cross-document checks of :mod:`controller.specs.validate`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from controller.specs.loader import DocPath
from controller.specs.schema import Problem

Target = Literal["Environment", "approval rule", "cluster home", "custom server"]
"""``cluster home``: a field that acts only where the model's pipeline runs in a cluster environment;
``custom server``: a custom serving runtime, which KServe runs in the model's image (its code only with the
model's own Dockerfile)."""


@dataclass(frozen=True)
class Mention:
    """A name a document refers to (or declares) for another document, and where."""

    target: Target
    name: str
    path: DocPath


def unknown(what: str, name: str, known: Iterable[str]) -> str:
    """``unknown metric 'acc'; did you mean 'accuracy'?`` and the like."""
    names = sorted(set(known))
    message = f"unknown {what} '{name}'"
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"{message}; did you mean '{close[0]}'?"
    if names:
        return f"{message} (declared: {', '.join(names)})"
    return f"{message} (none is declared)"


def _duplicates(items: list[Any], field: str, base: DocPath, what: str) -> Iterable[Problem]:
    first: dict[Any, int] = {}
    for index, item in enumerate(items):
        name = item[field]
        if name in first:
            yield Problem(
                (*base, index, field), f"duplicate {what} '{name}' (first at {base[-1]}[{first[name]}])"
            )
        else:
            first[name] = index


def check_document(kind: str, doc: dict[str, Any]) -> list[Problem]:
    """Every problem of a schema-valid document that its schema cannot see."""
    if kind == "Model":
        return _check_model(doc["spec"])
    if kind == "Policy":
        return _check_policy(doc["spec"])
    return _check_environment(doc["spec"])


def _check_model(spec: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    problems += _duplicates(spec.get("data", []), "name", ("spec", "data"), "data input")
    problems += _check_data(spec.get("data", []))
    problems += _check_steps(spec["pipeline"]["steps"])

    metrics = spec.get("metrics", {})
    reported = metrics.get("reported", [])
    problems += _duplicates(reported, "name", ("spec", "metrics", "reported"), "metric")
    declared = {m["name"] for m in reported}

    def need_metric(name: str, path: DocPath) -> None:
        if name not in declared:
            problems.append(Problem(path, unknown("metric", name, declared)))

    if "primary" in metrics:
        need_metric(metrics["primary"], ("spec", "metrics", "primary"))
    for index, gate in enumerate(spec.get("validation", {}).get("gates", [])):
        need_metric(gate["metric"], ("spec", "validation", "gates", index, "metric"))
    problems += _check_schedule(spec.get("triggers", {}).get("schedule"))
    problems += _check_drift_features(spec)

    psi = spec.get("serving", {}).get("drift", {}).get("psi", {})
    if psi.get("warn", 0.1) >= psi.get("alert", 0.25):
        problems.append(Problem(
            ("spec", "serving", "drift", "psi"),
            f"warn ({psi.get('warn', 0.1)}) must be below alert ({psi.get('alert', 0.25)})",
        ))

    rollout = spec.get("rollout", {})
    problems += _duplicates(rollout.get("stages", []), "environment", ("spec", "rollout", "stages"), "stage")
    checks = rollout.get("analysis", {}).get("checks", [])
    problems += _duplicates(checks, "name", ("spec", "rollout", "analysis", "checks"), "check")
    return problems


def _check_data(inputs: list[dict[str, Any]]) -> Iterable[Problem]:
    """A pinned digest is checked against a file:// input's content; another input's cannot be (yet)."""
    for index, item in enumerate(inputs):
        if "digest" in item and urlparse(item["uri"]).scheme != "file":
            yield Problem(
                ("spec", "data", index, "digest"),
                "not supported yet: only a file:// input's digest is checked (by its content); "
                "an input in the repository is pinned by its commit, a remote one by version",
                at_key=True,
                named=True,
            )


def _check_schedule(schedule: str | dict[str, Any] | None) -> Iterable[Problem]:
    """The cron expression is one croniter reads, and the time zone one the zone database has."""
    if schedule is None:
        return
    where: DocPath = ("spec", "triggers", "schedule")
    cron, zone = (schedule, None) if isinstance(schedule, str) else (schedule["cron"], schedule.get("timezone"))
    if not isinstance(schedule, str):
        where = (*where, "cron")
    if not croniter.is_valid(cron.strip()):
        yield Problem(where, f"{cron.strip()!r} is not a valid cron expression (a field is out of range)")
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            yield Problem(("spec", "triggers", "schedule", "timezone"), f"unknown time zone {zone!r}")


def _check_drift_features(spec: dict[str, Any]) -> list[Problem]:
    """A drift trigger's features are among those ``serving.drift`` watches (when it names some)."""
    drift = spec.get("triggers", {}).get("drift")
    watched = spec.get("serving", {}).get("drift", {}).get("features") or []
    if not isinstance(drift, dict) or not watched:
        return []
    return [
        Problem(("spec", "triggers", "drift", "features", index),
                f"{name!r} is not watched for drift (serving.drift.features: {', '.join(watched)})")
        for index, name in enumerate(drift.get("features", ()))
        if name not in watched and name != "__prediction__"
    ]


def _check_environment(spec: dict[str, Any]) -> list[Problem]:
    """The cluster home's fields go together: each asks for the others, and none is set for nothing."""
    problems: list[Problem] = []
    home = spec.get("home", "embedded")
    pipeline = spec.get("pipeline", {})
    runner = pipeline.get("runner", "local")
    if runner == "argo":
        if home != "cluster":
            where: DocPath = ("spec", "home") if "home" in spec else ("spec", "pipeline", "runner")
            problems.append(Problem(where, "runner 'argo' needs home: cluster"))
        if "argo" not in pipeline:
            problems.append(
                Problem(("spec", "pipeline", "runner"), "runner 'argo' needs pipeline.argo (the Argo Server)")
            )
    elif home == "cluster":
        where = ("spec", "pipeline", "runner") if "runner" in pipeline else ("spec", "home")
        problems.append(Problem(where, "home 'cluster' needs pipeline.runner: argo"))
    else:
        for field_name in ("argo", "namespace"):
            if field_name in pipeline:
                where = ("spec", "pipeline", field_name)
                problems.append(Problem(where, "is for runner 'argo' only", at_key=True, named=True))
    problems += _check_serving(spec, home)
    for field_name, what in (("images", "models' images"), ("artifacts", "where steps save models")):
        if home == "cluster" and field_name not in spec:
            problems.append(Problem(("spec", "home"), f"home 'cluster' needs {field_name} ({what})"))
        elif home != "cluster" and field_name in spec:
            problems.append(
                Problem(("spec", field_name), "is for home 'cluster' only", at_key=True, named=True)
            )
    return problems


def _check_serving(spec: dict[str, Any], home: str) -> list[Problem]:
    """``serving.backend: kserve`` serves in a cluster, is analysed by Prometheus, alone has a namespace,
    and alone runs as a ServiceAccount, which it needs to read models from a bucket."""
    serving = spec.get("serving", {})
    if serving.get("backend", "local") != "kserve":
        return [
            Problem(("spec", "serving", name), "is for serving.backend 'kserve' only", at_key=True, named=True)
            for name in ("namespace", "serviceAccountName")
            if name in serving
        ]
    problems: list[Problem] = []
    if "s3" in spec.get("artifacts", {}) and "serviceAccountName" not in serving:
        problems.append(
            Problem(
                ("spec", "serving", "backend"),
                "'kserve' with artifacts.s3 needs serving.serviceAccountName (the ServiceAccount whose "
                "Secret gives KServe's storage initializer the bucket's credentials)",
            )
        )
    if home != "cluster":
        problems.append(
            Problem(
                ("spec", "serving", "backend"),
                "'kserve' needs home: cluster "
                "(KServe serves in a Kubernetes cluster; use local on one machine)",
            )
        )
    if spec.get("metrics", {}).get("source", "builtin") != "prometheus":
        problems.append(
            Problem(
                ("spec", "serving", "backend"),
                "'kserve' needs metrics.source: prometheus (the builtin source reads the local router only)",
            )
        )
    return problems


def _check_steps(steps: list[dict[str, Any]]) -> list[Problem]:
    base: DocPath = ("spec", "pipeline", "steps")
    problems = list(_duplicates(steps, "name", base, "step"))
    index_of: dict[str, int] = {}
    for index, step in enumerate(steps):
        index_of.setdefault(step["name"], index)
    edges: dict[str, list[str]] = {}
    for index, step in enumerate(steps):
        if index_of[step["name"]] != index:
            continue  # a duplicate, already reported
        edges[step["name"]] = []
        for n, need in enumerate(step.get("needs", [])):
            if need == step["name"]:
                problems.append(Problem((*base, index, "needs", n), f"step '{need}' cannot need itself"))
            elif need not in index_of:
                problems.append(Problem((*base, index, "needs", n), unknown("step", need, index_of)))
            else:
                edges[step["name"]].append(need)
    for cycle in _cycles(edges):
        first = cycle[0]
        problems.append(
            Problem((*base, index_of[first], "needs"), f"steps form a cycle: {' -> '.join([*cycle, first])}")
        )
    return problems


def _cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly tangled group, each starting at its earliest-declared step."""
    order = {name: i for i, name in enumerate(edges)}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    found: list[list[str]] = []
    for start in edges:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        trail: list[str] = [start]
        state[start] = 1
        while stack:
            node, i = stack[-1]
            if i < len(edges[node]):
                stack[-1] = (node, i + 1)
                nxt = edges[node][i]
                if state.get(nxt) == 1:
                    cycle = trail[trail.index(nxt) :]
                    pivot = min(range(len(cycle)), key=lambda k: order[cycle[k]])
                    # follow "needs" backwards so the cycle reads in run order: train -> evaluate -> train
                    cycle = cycle[pivot:] + cycle[:pivot]
                    cycle = [cycle[0], *reversed(cycle[1:])]
                    found.append(cycle)
                elif not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, 0))
                    trail.append(nxt)
            else:
                state[node] = 2
                stack.pop()
                trail.pop()
    return found


def _check_policy(spec: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    groups: dict[str, Any] = spec.get("groups", {})

    def need_group(name: str, path: DocPath) -> None:
        if name != "*" and name not in groups:
            problems.append(Problem(path, unknown("group", name, groups)))

    for index, name in enumerate(spec.get("trust", {}).get("groups", [])):
        if name == "*":
            problems.append(
                Problem(("spec", "trust", "groups", index), "'*' cannot be trusted; name the groups")
            )
        else:
            need_group(name, ("spec", "trust", "groups", index))
    for command, allowed in spec.get("commands", {}).items():
        for index, name in enumerate(allowed):
            need_group(name, ("spec", "commands", command, index))
    identities = spec.get("identities", [])
    problems += _duplicates(identities, "user", ("spec", "identities"), "identity for user")
    rules = spec.get("approvals", [])
    problems += _duplicates(rules, "name", ("spec", "approvals"), "approval rule")
    for index, rule in enumerate(rules):
        members: set[str] = set()
        for n, name in enumerate(rule["groups"]):
            if name == "*":
                problems.append(
                    Problem(("spec", "approvals", index, "groups", n), "approvals must name groups, not '*'")
                )
                continue
            need_group(name, ("spec", "approvals", index, "groups", n))
            members.update(groups.get(name, {}).get("members", []))
        required = rule.get("required", 1)
        if all(g in groups for g in rule["groups"]) and required > len(members):
            problems.append(
                Problem(
                    ("spec", "approvals", index, "required"),
                    f"needs {required} approvals but its groups have only {len(members)} "
                    + ("member" if len(members) == 1 else "members"),
                )
            )
    return problems


def mentions(kind: str, doc: dict[str, Any]) -> tuple[list[Mention], list[Mention]]:
    """(names this document refers to in others, names it declares for others) of a valid document."""
    refers: list[Mention] = []
    declares: list[Mention] = []
    if kind == "Model":
        spec = doc["spec"]
        for index, stage in enumerate(spec.get("rollout", {}).get("stages", [])):
            base: DocPath = ("spec", "rollout", "stages", index)
            refers.append(Mention("Environment", stage["environment"], (*base, "environment")))
            if "approval" in stage:
                refers.append(Mention("approval rule", stage["approval"], (*base, "approval")))
        if "dockerfile" in spec.get("source", {}):
            refers.append(Mention("cluster home", "dockerfile", ("spec", "source", "dockerfile")))
        serving = spec.get("serving", {})
        if serving.get("runtime") == "custom" and "dockerfile" not in spec.get("source", {}):
            refers.append(Mention("custom server", "runtime", ("spec", "serving", "runtime")))
        for index, step in enumerate(spec["pipeline"]["steps"]):
            if "resources" in step:
                where: DocPath = ("spec", "pipeline", "steps", index, "resources")
                refers.append(Mention("cluster home", "resources", where))
    elif kind == "Policy":
        for index, rule in enumerate(doc["spec"].get("approvals", [])):
            declares.append(Mention("approval rule", rule["name"], ("spec", "approvals", index, "name")))
    return refers, declares


# ------------------------------------------------------------ not supported yet


@dataclass(frozen=True)
class NotYet:
    """A field the language keeps for what a later version builds, refused until it is built.

    ``path`` is the field's path in the document, ``"*"`` standing for every
    item of a list; ``value`` is the one refused value, or ``None`` when the
    field is refused whatever its value. ``why`` says what Flywheel does
    instead and what to do.
    """

    kind: str
    path: tuple[str, ...]
    value: str | None
    why: str


NOT_YET: tuple[NotYet, ...] = (
    NotYet(
        "Model",
        ("spec", "serving", "runtime"),
        "lightgbm",
        "no lightgbm model server is built; use sklearn, xgboost or custom",
    ),
)


@dataclass
class _Node:
    """The refused fields of one kind as a tree of paths, so one walk of a document visits each once."""

    children: dict[str, _Node] = field(default_factory=dict)
    rule: NotYet | None = None


def _tree(rules: Iterable[NotYet]) -> _Node:
    root = _Node()
    for rule in rules:
        node = root
        for part in rule.path:
            node = node.children.setdefault(part, _Node())
        node.rule = rule
    return root


_NOT_YET_BY_KIND: dict[str, _Node] = {
    kind: _tree(rule for rule in NOT_YET if rule.kind == kind) for kind in ("Model", "Policy", "Environment")
}


def not_supported(kind: str, doc: Any) -> list[Problem]:
    """A problem for every field of ``doc`` that asks for what this version does not do yet.

    Safe on any document, valid or not, so these are reported with the
    document's other errors. A refused field is located at its key (a refused
    value at the value) and named by its own path.
    """
    problems: list[Problem] = []
    tree = _NOT_YET_BY_KIND.get(kind)
    if tree is not None:
        _walk(doc, tree, (), problems)
    return problems


def _walk(node: Any, tree: _Node, at: DocPath, problems: list[Problem]) -> None:
    if type(node) is list:
        items = tree.children.get("*")
        if items is not None:
            for index, item in enumerate(node):
                _walk(item, items, (*at, index), problems)
        return
    if type(node) is not dict:
        return
    for key, child in tree.children.items():
        if key not in node or key == "*":
            continue
        value = node[key]
        rule = child.rule
        if rule is None:
            _walk(value, child, (*at, key), problems)
        elif rule.value is None:
            problems.append(Problem((*at, key), f"not supported yet: {rule.why}", at_key=True, named=True))
        elif type(value) is str and value == rule.value:
            problems.append(Problem((*at, key), f"{value!r} is not supported yet: {rule.why}"))
