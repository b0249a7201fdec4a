"""Checks across the spec files of one commit, and the :class:`Catalog` they make.

:func:`check_catalog` takes the files parsed one by one
(:func:`controller.specs.parse.parse_document`) and checks what no single
file can: names are unique per kind, approval rules are unique across
policies, and every environment and approval rule a model's rollout names
exists and is valid. A document with any error is left out of the catalog;
it blocks only itself and whatever cannot work without it.
:func:`load_catalog` is both steps for a set of files in memory. Called by the
git reader, the engine and ``flywheel validate``.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from controller.specs.checks import unknown
from controller.specs.parse import ParsedFile, Reference, parse_document
from controller.specs.types import Catalog, Environment, Location, Model, Policy, SpecError


def load_catalog(files: Mapping[str, bytes]) -> Catalog:
    """Parse and check every spec file of one commit (repo-relative path → bytes). Never raises."""
    with gc_paused():
        return check_catalog(parse_document(path, data) for path, data in sorted(files.items()))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many documents are parsed.

    Parsing allocates millions of small acyclic objects; the collector's
    repeated passes over them cost about a quarter of the loading time of a
    large repository. Nothing here creates reference cycles.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def check_catalog(parsed: Iterable[ParsedFile]) -> Catalog:
    """The catalog of the documents that are valid on their own and together."""
    files = sorted(parsed, key=lambda f: f.path)
    extra: dict[str, list[SpecError]] = defaultdict(list)

    def fail(file: ParsedFile, location: Location | None, path: str, message: str) -> None:
        where = location or Location(file.path)
        extra[file.path].append(SpecError(where, path, message, file.kind or "", file.name or ""))

    def ok(file: ParsedFile) -> bool:
        return not file.errors and not extra[file.path]

    # 1. one document per kind and name
    by_name: dict[tuple[str, str], list[ParsedFile]] = defaultdict(list)
    for file in files:
        if file.kind and file.name:
            by_name[(file.kind, file.name)].append(file)
    for (kind, name), same in by_name.items():
        if len(same) < 2:
            continue
        valid = [f for f in same if not f.errors]
        for file in same:
            # a valid document is blocked only by another valid one; an invalid one is told of every clash
            clashing = [f for f in (valid if not file.errors else same) if f is not file]
            if clashing:
                paths = ", ".join(f.path for f in clashing)
                fail(file, file.name_location, "metadata.name", f"{kind} '{name}' is also defined in {paths}")

    # 2. approval rule names unique across the policies
    rules: dict[str, list[tuple[ParsedFile, Location, str]]] = defaultdict(list)
    for file in files:
        if file.kind == "Policy" and ok(file):
            for declared in file.declarations:
                rules[declared.name].append((file, declared.location, declared.path))
    for name, places in rules.items():
        if len({f.path for f, _, _ in places}) < 2:
            continue  # duplicates inside one policy are reported by the policy's own checks
        for file, location, path in places:
            others = sorted({f.path for f, _, _ in places if f is not file})
            fail(file, location, path, f"approval rule '{name}' is also defined in {', '.join(others)}")

    # 3. references from models to environments and approval rules
    environments = {f.name: f for f in files if f.kind == "Environment" and f.name}
    valid_envs = {name for name, f in environments.items() if ok(f)}
    all_rules = {r.name: f for f in files if f.kind == "Policy" for r in f.declarations}
    valid_rules = {r.name for f in files if f.kind == "Policy" and ok(f) for r in f.declarations}
    for file in files:
        if file.kind != "Model":
            continue
        for ref in file.references:
            if ref.target == "cluster home":
                message = _cluster_only(ref.name, file.references, environments)
                if message:
                    fail(file, ref.location, ref.path, message)
                continue
            if ref.target == "custom server":
                message = _custom_on_kserve(file.references, environments)
                if message:
                    fail(file, ref.location, ref.path, message)
                continue
            if ref.target == "Environment":
                if ref.name in valid_envs:
                    continue
                if ref.name in environments:
                    message = f"environment '{ref.name}' has errors (see {environments[ref.name].path})"
                else:
                    message = unknown("environment", ref.name, environments)
            else:
                if ref.name in valid_rules:
                    continue
                if ref.name in all_rules:
                    where = all_rules[ref.name].path
                    message = f"approval rule '{ref.name}' is in a policy with errors (see {where})"
                else:
                    message = unknown("approval rule", ref.name, all_rules)
            fail(file, ref.location, ref.path, message)

    models: dict[str, Model] = {}
    policies: dict[str, Policy] = {}
    envs: dict[str, Environment] = {}
    errors: list[SpecError] = []
    for file in files:
        errors.extend(file.errors)
        errors.extend(extra[file.path])
        if not ok(file) or file.name is None:
            continue
        document = file.document
        if isinstance(document, Model):
            models[file.name] = document
        elif isinstance(document, Policy):
            policies[file.name] = document
        elif isinstance(document, Environment):
            envs[file.name] = document
    errors.sort(key=lambda e: (e.location.file, e.location.line, e.location.column))
    return Catalog(models=models, policies=policies, environments=envs, errors=tuple(errors))


def _cluster_only(field: str, references: Iterable[Reference], environments: Mapping[str, ParsedFile]) -> str:
    """Why ``field`` (``dockerfile``, ``resources``) does nothing for this model, or ``""`` when it acts.

    They act where the model's pipeline runs in a cluster environment: the
    first of its rollout stages' environments that exists, as the engine picks
    it (``controller.engine.training.pipeline_environment``). An environment
    with errors is reported at its stage already.
    """
    stage = next((r.name for r in references if r.target == "Environment" and r.name in environments), None)
    what = "models' images are built" if field == "dockerfile" else "steps run as pods"
    if stage is None:
        return (
            f"acts only where the pipeline runs in a cluster environment ({what} there), and no stage has one"
        )
    environment = environments[stage].document
    if not isinstance(environment, Environment) or environment.home == "cluster":
        return ""
    instead = (
        "steps run in a virtualenv made from the requirements"
        if field == "dockerfile"
        else "steps run as local processes, without resource requests or limits"
    )
    return (
        f"acts only where the pipeline runs in a cluster environment ({what} there); this model trains in "
        f"'{stage}', on the embedded home, where {instead}; remove it"
    )


def _custom_on_kserve(references: Iterable[Reference], environments: Mapping[str, ParsedFile]) -> str:
    """Why a custom server without its own Dockerfile cannot serve on KServe here, or ``""``.

    KServe runs a custom server in the model's image, and the image Flywheel
    generates holds the environment only (the code reaches training pods from
    git): only the model's own Dockerfile can put the server's code in it.
    """
    for ref in references:
        file = environments.get(ref.name) if ref.target == "Environment" else None
        document = file.document if file is not None else None
        if isinstance(document, Environment) and document.serving_backend == "kserve":
            return (
                f"a custom server on KServe ('{ref.name}') runs in the model's image, which holds its code "
                "only when the model builds it from its own Dockerfile (source.dockerfile, copying the "
                "code in); add one, or serve with a built-in runtime"
            )
    return ""


def summary(catalog: Catalog) -> str:
    """``2 models, 1 policy, 2 environments``."""
    counts = [
        (len(catalog.models), "model", "models"),
        (len(catalog.policies), "policy", "policies"),
        (len(catalog.environments), "environment", "environments"),
    ]
    return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts)
