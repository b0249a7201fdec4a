"""The spec library's public behaviour beyond the corpus.

Pins down: the example repository loads clean into typed records with
resolved paths and parsed durations, promising nothing that is not built;
every error in a file is reported; a bad model (a field not supported yet
included) leaves the other models in the catalog; every field refused as not
supported yet has its corpus case; ``load_catalog`` equals
``check_catalog`` over ``parse_document``; which paths are spec paths; the
shipped schemas' shape; the compiled fast check agrees with jsonschema; the
loader resolves scalars exactly as PyYAML's safe loader; and hostile bytes
never raise.
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from controller.specs import (
    Catalog,
    check_catalog,
    find_spec_files,
    format_duration,
    is_spec_path,
    load_catalog,
    load_tree,
    parse_document,
    parse_duration,
    schemas,
)
from controller.specs.build import build_model
from controller.specs.checks import NOT_YET, not_supported
from controller.specs.fastschema import UnsupportedSchema, compile_schema
from controller.specs.loader import YamlError, load_yaml
from controller.specs.parse import render_path
from controller.specs.types import Resources, Triggers

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "spec_corpus"


def example_files() -> dict[str, bytes]:
    return {rel: (REPO / rel).read_bytes() for rel in find_spec_files(REPO)}


def test_example_repository_is_valid() -> None:
    catalog = load_tree(REPO)
    assert catalog.errors == ()
    assert sorted(catalog.models) == ["breast-cancer", "iris"]
    assert sorted(catalog.policies) == ["default"]
    assert sorted(catalog.environments) == ["production", "staging"]


def test_example_model_is_typed() -> None:
    iris = load_tree(REPO).models["iris"]
    assert iris.spec_path == "specs/iris/model.yaml"
    assert iris.source.path == "specs/iris"
    assert iris.source.requirements == "specs/iris/requirements.txt"
    assert [s.name for s in iris.steps] == ["train", "evaluate"]
    assert iris.steps[0].timeout_seconds == 600.0
    assert iris.steps[1].needs == ("train",)
    assert iris.metric("log_loss") is not None and iris.metric("log_loss").direction == "lower"  # type: ignore[union-attr]
    assert [g.is_change_gate for g in iris.gates] == [False, False, True]
    production = iris.rollout.stages[1]
    assert production.approval == "production-signoff"
    assert [(c.weight, c.duration_seconds) for c in production.canary] == [(20, 30.0), (50, 30.0)]
    latency = iris.rollout.analysis.checks[1]
    assert (latency.builtin, latency.percentile, latency.max) == ("latency", 99.0, 0.5)
    assert [(n.channel, n.target) for n in iris.notifications] == [("console", ""), ("slack", "#ml-releases")]
    bc = load_tree(REPO).models["breast-cancer"]
    # the examples promise nothing Flywheel does not do yet: no trigger, no step resources
    assert iris.triggers == bc.triggers == Triggers()
    assert {s.resources for s in (*iris.steps, *bc.steps)} == {Resources()}
    assert "{{model}}" in (bc.rollout.analysis.checks[2].query or "")


def test_example_policy_and_environment_are_typed() -> None:
    catalog = load_tree(REPO)
    policy = catalog.policies["default"]
    assert policy.groups["business-owners"] == ("carol", "dave")
    assert policy.commands["help"] == ("*",)
    assert policy.trusted_groups == ("ml-engineers", "platform")
    rule = catalog.approval_rule("production-signoff")
    assert rule is not None and rule.expires_after_seconds == 72 * 3600 and not rule.allow_author
    production = catalog.environments["production"]
    assert production.production and production.port is None and production.runner == "local"


def test_source_paths_resolve_relative_to_the_spec() -> None:
    text = (CORPUS / "_base/specs/demo/model.yaml").read_text()
    text = text.replace("path: .\n", "path: ../../code/demo\n    requirements: ./reqs/../req.txt\n")
    parsed = parse_document("specs/demo/model.yaml", text.encode())
    assert parsed.errors == ()
    source = parsed.document.source  # type: ignore[union-attr]
    assert (source.path, source.requirements, source.dockerfile) == ("code/demo", "code/demo/req.txt", None)
    # a Dockerfile resolves the same way; it is refused where the model trains on the embedded home
    text = text.replace('python: "3.11"\n', 'python: "3.11"\n    dockerfile: docker/Dockerfile\n')
    model, problems = build_model(yaml.safe_load(text), "specs/demo/model.yaml")
    assert problems == [] and model.source.dockerfile == "code/demo/docker/Dockerfile"
    assert parse_document("specs/demo/model.yaml", text.encode()).errors == ()
    base = CORPUS / "_base"
    files = {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*.yaml")}
    catalog = load_catalog({**files, "specs/demo/model.yaml": text.encode()})
    assert [e.path for e in catalog.errors] == ["spec.source.dockerfile"]


def test_a_model_without_a_source_section_is_valid_in_a_catalog() -> None:
    base = CORPUS / "_base"
    files = {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*.yaml")}
    text = (base / "specs/demo/model.yaml").read_text()
    without = text.replace('  source:\n    path: .\n    python: "3.11"\n', "")
    assert "source:" not in without  # the source directory defaults to the spec's own
    catalog = load_catalog({**files, "specs/demo/model.yaml": without.encode()})
    assert catalog.errors == () and "demo" in catalog.models


def test_every_error_in_a_file_is_reported() -> None:
    text = (CORPUS / "_base/specs/demo/model.yaml").read_text()
    for old, new in [
        ("min: 0.8", "min: high"),
        ("weight: 20", "weight: 0"),
        ("runtime: sklearn", "runtime: onnx"),
    ]:
        text = text.replace(old, new)
    text = text.replace("direction: higher", "direction: higher\n        unit: percent")
    errors = parse_document("specs/demo/model.yaml", text.encode()).errors
    assert [e.path for e in errors] == [
        "spec.metrics.reported[0]",
        "spec.validation.gates[0].min",
        "spec.serving.runtime",
        "spec.rollout.stages[1].canary[0].weight",
    ]
    assert all(e.kind == "Model" and e.name == "demo" for e in errors)


def test_bad_model_blocks_only_itself() -> None:
    files = example_files()
    files["specs/iris/model.yaml"] = files["specs/iris/model.yaml"].replace(b"min: 0.85", b"min: high")
    catalog = load_catalog(files)
    assert sorted(catalog.models) == ["breast-cancer"]
    assert sorted(catalog.environments) == ["production", "staging"]
    assert [str(e) for e in catalog.errors] == [
        "specs/iris/model.yaml:44:14: spec.validation.gates[0].min: expected a number, got 'high'"
    ]
    assert catalog.errors_for("specs/iris/model.yaml") == catalog.errors


def test_a_field_not_supported_yet_blocks_only_its_own_model() -> None:
    files = example_files()
    files["specs/iris/model.yaml"] = files["specs/iris/model.yaml"].replace(
        b"runtime: sklearn", b"runtime: lightgbm"
    )
    catalog = load_catalog(files)
    assert sorted(catalog.models) == ["breast-cancer"]
    assert sorted(catalog.environments) == ["production", "staging"]
    assert [(e.location.file, e.path) for e in catalog.errors] == [
        ("specs/iris/model.yaml", "spec.serving.runtime")
    ]
    assert "is not supported yet: " in catalog.errors[0].message


def test_every_field_not_supported_yet_has_a_corpus_case() -> None:
    expected = "\n".join(
        (CORPUS / case / "expected.txt").read_text() for case in sorted(os.listdir(CORPUS)) if case != "_base"
    )
    for rule in NOT_YET:
        shown = render_path(tuple(0 if part == "*" else part for part in rule.path))
        refusal = "not supported yet" if rule.value is None else f"'{rule.value}' is not supported yet"
        assert f": {shown}: {refusal}: {rule.why}\n" in expected, (rule.kind, shown)


def test_not_supported_looks_only_where_the_fields_are() -> None:
    odd: list[Any] = [None, 1, "x", [], {}, {"spec": []}, {"spec": {"pipeline": {"steps": {"resources": 1}}}}]
    for doc in odd:
        assert not_supported("Model", doc) == [] and not_supported("Environment", doc) == []
    env = {"spec": {"pipeline": {"runner": "local"}, "serving": {"backend": ["kserve"]}, "home": "embedded"}}
    assert not_supported("Environment", env) == []
    assert not_supported("Policy", {"spec": {"triggers": {"schedule": "@daily"}}}) == []


def test_broken_duplicate_does_not_block_the_valid_model() -> None:
    files = example_files()
    broken = files["specs/iris/model.yaml"].replace(b"timeout: 10m", b"timeout: later")
    files["specs/iris-copy/model.yaml"] = broken
    catalog = load_catalog(files)
    assert "iris" in catalog.models and catalog.models["iris"].spec_path == "specs/iris/model.yaml"
    assert {e.location.file for e in catalog.errors} == {"specs/iris-copy/model.yaml"}
    assert any("also defined in specs/iris/model.yaml" in e.message for e in catalog.errors)


def test_load_catalog_is_check_catalog_of_parse_document() -> None:
    files = example_files()
    files["environments/staging.yaml"] = b"apiVersion: flywheel.dev/v1alpha1\nkind: Environment\n"
    together = load_catalog(files)
    parsed = [parse_document(path, data) for path, data in files.items()]
    assert check_catalog(reversed(parsed)) == together
    assert isinstance(together, Catalog) and "staging" not in together.environments


def test_parse_document_outside_the_layout_uses_the_documents_kind() -> None:
    data = (REPO / "environments/staging.yaml").read_bytes()
    parsed = parse_document("elsewhere/staging.yaml", data)
    assert parsed.kind == "Environment" and parsed.errors == ()
    bad = parse_document("elsewhere/x.yaml", b"apiVersion: flywheel.dev/v1alpha1\nkind: Job\n")
    assert [str(e) for e in bad.errors] == [
        "elsewhere/x.yaml:2:7: kind: expected one of Model, Policy, Environment, got 'Job'"
    ]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("specs/iris/model.yaml", True),
        ("specs/iris/model.yml", True),
        ("specs/model.yaml", False),
        ("specs/a/b/model.yaml", False),
        ("specs/iris/train.py", False),
        ("specs/.hidden/model.yaml", False),
        ("policies/default.yaml", True),
        ("policies/default.yml", True),
        ("policies/sub/default.yaml", False),
        ("policies/.yaml", False),
        ("environments/prod.yaml", True),
        ("environments/prod.json", False),
        ("other/prod.yaml", False),
        ("model.yaml", False),
    ],
)
def test_is_spec_path(path: str, expected: bool) -> None:
    assert is_spec_path(path) is expected


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30s", "10m", "1h30m", "72h", "1h0m5s")] == [
        30,
        600,
        5400,
        259200,
        3605,
    ]
    assert format_duration(5400) == "1h30m"
    with pytest.raises(ValueError):
        parse_duration("10 minutes")


def _walk(schema: Any, where: str = "#") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, dict):
        found.append((where, schema))
        for key, value in schema.items():
            if isinstance(value, dict):
                found += _walk(value, f"{where}/{key}")
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    found += _walk(item, f"{where}/{key}/{i}")
    return found


FREE_MAPS = {"params", "labels", "annotations", "env", "groups"}


def test_schemas_shape() -> None:
    all_schemas = schemas()
    assert sorted(all_schemas) == ["Environment", "Model", "Policy"]
    for kind, schema in all_schemas.items():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"/{kind.lower()}.schema.json")
        for where, sub in _walk(schema):
            if sub.get("type") == "object" and "properties" in sub:
                assert sub.get("additionalProperties") is False, f"{kind} {where}"
                for name, prop in sub["properties"].items():
                    assert "description" in prop or "$ref" in prop, (
                        f"{kind} {where}/{name} has no description"
                    )
            elif sub.get("type") == "object" and where.rsplit("/", 1)[-1] not in FREE_MAPS:
                assert sub.get("additionalProperties") is False, f"{kind} {where} is open"
    schemas()["Model"]["title"] = "changed"
    assert schemas()["Model"]["title"] != "changed"


def test_fast_check_refuses_unknown_keywords() -> None:
    with pytest.raises(UnsupportedSchema):
        compile_schema({"type": "string", "format": "email", "contentMediaType": "text/plain"})


def _corpus_documents() -> list[tuple[str, Any]]:
    kinds = {"specs": "Model", "policies": "Policy", "environments": "Environment"}
    docs: list[tuple[str, Any]] = []
    for path in sorted(CORPUS.rglob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_bytes())
        except (yaml.YAMLError, UnicodeDecodeError, ValueError):
            continue
        top = path.relative_to(CORPUS).parts[1]
        docs.append((kinds[top], data))
    return docs


def _mutations(doc: Any, rng: random.Random) -> list[Any]:
    """Small random damage: drop a key, change a scalar's type, add a key, empty a list."""
    out = []
    for _ in range(30):
        copy_ = copy.deepcopy(doc)
        node = copy_
        for _ in range(rng.randint(1, 6)):
            if isinstance(node, dict) and node:
                key = rng.choice(list(node))
                child = node[key]
                if not isinstance(child, dict | list) or rng.random() < 0.3:
                    node[key] = rng.choice([None, True, 7, 0.5, -1, "", "x", [], {}, "10m", [1]])
                    break
                node = child
            elif isinstance(node, list) and node:
                index = rng.randrange(len(node))
                if rng.random() < 0.2:
                    node.append(copy.deepcopy(node[index]))
                    break
                node = node[index]
            else:
                break
        out.append(copy_)
    return out


def test_fast_check_agrees_with_jsonschema() -> None:
    rng = random.Random(7)
    raw = schemas()
    fast = {kind: compile_schema(schema) for kind, schema in raw.items()}
    slow = {kind: Draft202012Validator(schema) for kind, schema in raw.items()}
    checked = 0
    for kind, doc in _corpus_documents():
        for candidate in [doc, *_mutations(doc, rng)]:
            assert fast[kind](candidate) == slow[kind].is_valid(candidate), json.dumps(candidate)[:300]
            checked += 1
    assert checked > 1000


SCALARS = [
    *("yes", "No", "TRUE", "off", "On", "y", "n", "~", "null", "NULL", "Null"),
    *("0", "007", "08", "0x1F", "0b101", "0o17", "-3", "+4", "1_000", "1:30", "190:20:30"),
    *("3.10", "1e3", "1.5e+3", "-.inf", ".NaN", ".5", "1.", "0.", "-0", "1__0", "٣", "²"),
    *("2024-01-31", "2001-12-14t21:59:43.10-05:00", "=", "<<x", "hello", "true story", "12abc", "+", "."),
]


@pytest.mark.parametrize("scalar", SCALARS)
def test_plain_scalars_resolve_like_pyyaml(scalar: str) -> None:
    text = f"key: {scalar}\n"
    try:
        expected = yaml.safe_load(text)["key"]
    except yaml.constructor.ConstructorError:
        expected = scalar  # PyYAML has no constructor for "="; specs keep it as a string
    if type(expected).__name__ in ("date", "datetime"):
        expected = scalar  # timestamps stay strings in specs
    got = load_yaml(text.encode()).data["key"]
    assert type(got) is type(expected)
    assert got == expected or (got != got and expected != expected)  # NaN


def test_locations_are_one_based_and_point_at_keys_or_values() -> None:
    doc = load_yaml(b"a:\n  b: [1, {c: 2}]\n")
    assert doc.locate(("a", "b", 1, "c")) == (2, 14)
    assert doc.locate(("a", "b", 1, "c"), key=True) == (2, 11)
    assert doc.locate(("a", "missing")) == (2, 3)  # nearest existing ancestor


NOISE = b"\t :-[]{}&*!|>'\"#%@`\n\x00\xff"


def test_hostile_bytes_never_raise() -> None:
    rng = random.Random(11)
    base = (REPO / "specs/iris/model.yaml").read_bytes()
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            data[position : position + rng.randint(0, 3)] = bytes([rng.choice(NOISE)])
        parsed = parse_document("specs/iris/model.yaml", bytes(data))
        assert all(e.location.file == "specs/iris/model.yaml" for e in parsed.errors)
    with pytest.raises(YamlError):
        load_yaml(b"a: 1", max_bytes=3)
