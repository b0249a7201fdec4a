"""The GitHub payload models (controller.backends.forge.payloads) against GitHub's schemas and real payloads.

Pins down that the receiver and ``@octokit/webhooks-schemas`` (draft-07, one
definition per ``event$action``, in ../shared/reference/) agree on the fields
Flywheel reads: every real payload of an event Flywheel handles is accepted;
a real payload with one of those fields removed, set to null or set to a
value of another JSON type is answered 400, with nothing stored, exactly when
the published schema rejects it (the one exception: a push without
``deleted`` is taken as not deleted). Hypothesis mutates those fields with
arbitrary JSON values: whatever the schema rejects is a 400 and stores
nothing. Also: a delivery whose ``number`` is ``false`` — the event that
used to stop the controller — is refused at the door and, already in the
inbox, is failed without recording anything. Needs ../shared (see
tests.fixtures.required).
"""

from __future__ import annotations

import copy
import json
import sqlite3
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from pydantic import BaseModel
from starlette.testclient import TestClient

from controller.backends.forge.github import GitHubForge
from controller.backends.forge.payloads import payload_model
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import Commands
from controller.engine.github_events import GITHUB_EVENT_KINDS, GitHubEvents
from controller.engine.inbox import InboxDispatcher
from controller.settings import WebhookSettings
from controller.specs import Catalog, load_tree
from tests.fixtures.required import REFERENCE_ROOT
from webhooks.app import GITHUB_HOOK_PATH, create_app
from webhooks.github import HANDLED_EVENTS, BadDelivery, parse_delivery, sign

REFERENCE = REFERENCE_ROOT / "github-webhooks"
SCHEMA = REFERENCE_ROOT / "github-webhooks.schema.json"
pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("reference_payloads", "reference_schema")]
SECRET = "payload models"

# Every field the handlers read (controller.engine.github_events, controller.engine.trust.record_pull_request,
# controller.engine.comments.handle_comment), by event.
READS: dict[str, tuple[str, ...]] = {
    "pull_request": (
        "action",
        "number",
        "pull_request",
        "pull_request.number",
        "pull_request.state",
        "pull_request.merged",
        "pull_request.merged_at",
        "pull_request.updated_at",
        "pull_request.user",
        "pull_request.user.login",
        "pull_request.head",
        "pull_request.head.ref",
        "pull_request.head.sha",
        "pull_request.head.repo",
        "pull_request.head.repo.id",
        "pull_request.base",
        "pull_request.base.ref",
        "pull_request.base.repo",
        "pull_request.base.repo.id",
    ),
    "push": ("ref", "deleted"),
    "issue_comment": (
        "action",
        "issue",
        "issue.number",
        "issue.pull_request",
        "comment",
        "comment.id",
        "comment.body",
        "comment.user",
        "comment.user.login",
        "comment.user.type",
        "comment.html_url",
        "sender",
        "sender.login",
        "sender.type",
        "repository",
        "repository.full_name",
    ),
    "ping": ("zen", "hook_id"),
}
# Required by the schema, defaulted by Flywheel: a push without ``deleted`` is a push to a branch.
DEFAULTED = {("push", "deleted")}
DELETE = object()
OTHER_TYPES: tuple[object, ...] = (None, True, 0, 1.5, "x", [], {})


def json_type(value: object) -> str:
    return type(value).__name__


def handled_files() -> list[Path]:
    if not REFERENCE.is_dir():
        return []
    return sorted(p for p in REFERENCE.glob("*.json") if p.name.split(".")[0] in HANDLED_EVENTS)


def one_file_per_definition() -> list[Path]:
    """The smallest real payload of each ``event$action`` Flywheel handles."""
    chosen: dict[str, Path] = {}
    for path in sorted(handled_files(), key=lambda p: p.stat().st_size):
        chosen.setdefault(definition_of(path, json.loads(path.read_bytes())), path)
    return sorted(chosen.values())


def event_of(path: Path) -> str:
    return path.name.split(".")[0]


def definition_of(path: Path, payload: dict[str, Any]) -> str:
    return f"{event_of(path)}${payload.get('action', 'event')}"


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_bytes())
    return loaded


@cache
def validator(definition: str) -> Draft7Validator:
    return Draft7Validator({"$ref": f"#/definitions/{definition}", "definitions": schema()["definitions"]})


def mutated(payload: dict[str, Any], path: str, value: object) -> dict[str, Any] | None:
    """A copy of ``payload`` with ``path`` removed (``DELETE``) or set to ``value``; ``None`` if not there."""
    copied = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node: Any = copied
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        return None
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return copied


def value_at(payload: dict[str, Any], path: str) -> object:
    """The value at ``path`` in ``payload``; ``DELETE`` when it is not there."""
    current: object = payload
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return DELETE
        current = current[part]
    return current


def accepted(event: str, payload: dict[str, Any]) -> bool:
    try:
        parse_delivery(event=event, delivery_id="d-1", body=json.dumps(payload).encode())
    except BadDelivery:
        return False
    return True


def headers(body: bytes, event: str, *, content_type: str = "application/json") -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body, SECRET),
        "Content-Type": content_type,
    }


def inbox_count(state: Path) -> int:
    with sqlite3.connect(state / "state.db") as db:
        return int(db.execute("SELECT count(*) FROM inbox_events").fetchone()[0])


@pytest.fixture
def client(store: SqlStore) -> Iterator[TestClient]:
    with TestClient(create_app(WebhookSettings(github_secrets=(SECRET,)), store)) as test_client:
        yield test_client


# ------------------------------------------------------------- real payloads


def test_every_handled_kind_is_one_of_githubs_and_every_read_field_is_declared() -> None:
    definitions = set(schema()["definitions"])
    for kind in GITHUB_EVENT_KINDS:
        event, _, action = kind.partition(".")
        assert f"{event}${action or 'event'}" in definitions, kind
    for event, paths in READS.items():
        for path in paths:  # each model declares each field Flywheel reads, down the path
            model: Any = payload_model(event)
            for part in path.split("."):
                assert model is not None and part in model.model_fields, (event, path)
                annotation = model.model_fields[part].annotation
                models = [a for a in (annotation, *getattr(annotation, "__args__", ())) if _is_model(a)]
                model = models[0] if models else None


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def test_every_real_payload_of_a_handled_event_fits_its_schema_and_its_model() -> None:
    """(tests/test_webhooks.py posts each of them too: every one is stored.)"""
    files = handled_files()
    assert {event_of(path) for path in files} == HANDLED_EVENTS
    for path in files:
        payload = json.loads(path.read_bytes())
        assert validator(definition_of(path, payload)).is_valid(payload), path.name
        assert accepted(event_of(path), payload), path.name


# ------------------------------------------------------------- mutated payloads


def mutations(payload: dict[str, Any], event: str) -> Iterator[tuple[str, object, dict[str, Any]]]:
    """(field, new value or ``DELETE``, mutated payload) for each field Flywheel reads that is there."""
    for field in READS[event]:
        current = value_at(payload, field)
        if current is DELETE:
            continue
        for value in (DELETE, *(v for v in OTHER_TYPES if json_type(v) != json_type(current))):
            changed = mutated(payload, field, value)
            assert changed is not None
            yield field, value, changed


@pytest.mark.parametrize("path", one_file_per_definition(), ids=lambda p: p.name)
def test_the_models_agree_with_the_schema_on_every_field_flywheel_reads(path: Path) -> None:
    """Removed, null or of another type: refused exactly when the published schema refuses it."""
    payload = json.loads(path.read_bytes())
    event, check = event_of(path), validator(definition_of(path, payload))
    disagreements = []
    fields = set()
    for field, value, changed in mutations(payload, event):
        fields.add(field)
        schema_accepts = check.is_valid(changed)
        if value is DELETE and (event, field) in DEFAULTED:
            schema_accepts = True  # Flywheel's documented default; the schema would refuse it
        if accepted(event, changed) != schema_accepts:
            shown = "removed" if value is DELETE else json.dumps(value)
            disagreements.append(f"{field} {shown}: schema {'accepts' if schema_accepts else 'refuses'}")
    assert len(fields) >= len(READS[event]) - 1  # all of them, but for an issue that is no pull request
    assert disagreements == []


def test_a_push_without_deleted_is_taken_as_a_push_to_a_branch() -> None:
    push = json.loads((REFERENCE / "push.payload.json").read_bytes())
    push = mutated(push, "deleted", DELETE)
    assert push is not None and not validator("push$event").is_valid(push) and accepted("push", push)


read_fields = st.sampled_from(
    [(path, field) for path in handled_files() for field in READS[event_of(path)]] or [(Path(), "")]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutations_of_read_fields(draw: st.DrawFn) -> tuple[Path, str, object]:
    """A real payload, a field Flywheel reads in it, and ``DELETE`` or a JSON value of another type."""
    path, field = draw(read_fields)
    original = value_at(json.loads(path.read_bytes()), field)
    if original is DELETE:
        return path, field, DELETE
    value = draw(st.just(DELETE) | json_values.filter(lambda v: json_type(v) != json_type(original)))
    return path, field, value


def test_mutated_fields_the_schema_refuses_are_400_and_store_nothing(client: TestClient, state: Path) -> None:
    @settings(
        max_examples=150,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(mutation=mutations_of_read_fields(), form=st.booleans())
    def case(mutation: tuple[Path, str, object], form: bool) -> None:
        path, field, value = mutation
        payload = json.loads(path.read_bytes())
        changed = mutated(payload, field, value)
        if changed is None or validator(definition_of(path, payload)).is_valid(changed):
            return  # not there; or allowed by the schema (Flywheel may still refuse: 2.0 is no id)
        text = json.dumps(changed)
        body, content_type = text.encode(), "application/json"
        if form:
            body, content_type = urlencode({"payload": text}).encode(), "application/x-www-form-urlencoded"
        before = inbox_count(state)
        response = client.post(
            GITHUB_HOOK_PATH, content=body, headers=headers(body, event_of(path), content_type=content_type)
        )
        if (event_of(path), field) in DEFAULTED and value is DELETE:
            assert response.status_code == 202
            return
        assert (response.status_code, response.json()["status"]) == (400, "bad_request"), (field, value)
        assert inbox_count(state) == before

    case()


# ------------------------------------------------------------- the poison delivery


@pytest.mark.parametrize("where", ["number", "pull_request.number"])
def test_a_pull_request_numbered_false_is_refused_at_the_door(
    client: TestClient, state: Path, where: str
) -> None:
    payload = mutated(json.loads((REFERENCE / "pull_request.opened.payload.json").read_bytes()), where, False)
    assert payload is not None
    body = json.dumps(payload).encode()
    response = client.post(GITHUB_HOOK_PATH, content=body, headers=headers(body, "pull_request"))
    assert response.status_code == 400
    assert response.json() == {
        "status": "bad_request",
        "error": f"the pull_request payload does not fit: {where}: Input should be a valid integer",
    }
    assert inbox_count(state) == 0


def test_a_poison_delivery_already_in_the_inbox_fails_and_records_nothing(store: SqlStore) -> None:
    catalog: Catalog = load_tree(Path(__file__).resolve().parents[1])
    poison = json.loads((REFERENCE / "pull_request.opened.payload.json").read_bytes())
    poison["number"] = poison["pull_request"]["number"] = False
    store.put_event(source="github", delivery_id="old-1", kind="pull_request.opened", payload=poison)
    good = json.loads((REFERENCE / "pull_request.opened.payload.json").read_bytes())
    store.put_event(source="github", delivery_id="old-2", kind="pull_request.opened", payload=good)
    handler = GitHubEvents(
        pulls=store,
        records=store,
        catalog=lambda: catalog,
        commands=Commands(store=store, catalog=lambda: catalog, clock=SYSTEM_CLOCK),
        replies=lambda repository: GitHubForge(store, repository),
        retrain=lambda model, ref: 1,
    )
    refs = InboxDispatcher(store, dict.fromkeys(GITHUB_EVENT_KINDS, handler)).handle_due()
    first, second = store.get_event(1), store.get_event(2)
    assert first.completed_at is not None
    assert "does not fit: number: Input should be a valid integer" in (first.error or "")
    assert second.completed_at is not None and second.error is None and refs == {"changes"}
    assert store.pull_request(False) is None and store.pull_request(0) is None
    assert [(pull.number, pull.fork) for pull in store.open_pull_requests()] == [(good["number"], False)]
