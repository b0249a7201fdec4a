"""The read commands against a shared Flywheel: ``models``, ``status``, ``versions``, ``history``, ``audit``.

Pins down, against a dashboard served over real HTTP on a store the rollout
engine wrote (iris v1 in production, v2 at production's approval gate) and
the scaffolded repository's main, that each read command prints with
``--server`` exactly what it prints on the same state locally, as ``--json``
and as text; that a server reading only for those signed in answers no
token, or a wrong one, with one line saying which; that a model the server
does not have is the server's one-line reason; and that a server nobody
answers at is one line too. The API answers the documents' schemas as its
OpenAPI document declares them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import jsonschema
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from controller.backends.serving.server import free_port
from controller.cli import main
from controller.cli.options import main_catalog
from controller.clock import SYSTEM_CLOCK
from controller.ui import create_app
from controller.ui.access import Access
from controller.ui.tokens import issue_token, token_user
from tests.fixtures.rollout_world import RolloutWorld, rollout_world
from tests.fixtures.served import served

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path_factory.mktemp("remote"), people=True) as world:
        world.to_gate()
        yield world


@pytest.fixture(scope="module")
def token(world: RolloutWorld) -> str:
    return issue_token(world.store, name="carols-laptop", user="carol", by="cli:test")


@pytest.fixture(scope="module")
def server(world: RolloutWorld, token: str) -> Iterator[str]:
    """The dashboard on the world's store, reading main as the local commands do, at the same clock."""
    read_main = functools.partial(main_catalog, str(world.repo), None, world.state, required=True)
    app = create_app(
        models=world.store,
        history=world.store,
        clock=SYSTEM_CLOCK,
        catalog=read_main,
        access=Access(read="signed-in", tokens=functools.partial(token_user, world.store)),
    )
    with served(app) as url:
        yield url


def flywheel(*args: str, token: str = "") -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env={"FLYWHEEL_TOKEN": token, "FLYWHEEL_SERVER": ""})
    return result.exit_code, result.output


READS = [
    ("models",),
    ("status", "iris"),
    ("versions", "iris"),
    ("history", "iris"),
    ("history", "iris", "--env", "production"),
    ("audit",),
    ("audit", "iris", "--limit", "4"),
]


@pytest.mark.parametrize("command", READS, ids=" ".join)
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_a_read_command_prints_the_same_from_the_server_as_from_the_local_state(
    world: RolloutWorld, server: str, token: str, command: tuple[str, ...], as_json: bool
) -> None:
    here: tuple[str, ...] = ("--state-dir", str(world.state))
    if command[0] in ("models", "status"):
        here += ("--repo", str(world.repo))
    shown = ("--json",) if as_json else ()
    local = flywheel(*command, *shown, *here)
    remote = flywheel(*command, *shown, "--server", server, token=token)
    assert local[0] == 0, local[1]
    assert remote == local
    if as_json and command[0] != "audit":
        assert json.loads(remote[1])  # a document with something in it, not an empty one


def test_the_documents_say_what_the_store_holds(world: RolloutWorld, server: str, token: str) -> None:
    code, out = flywheel("status", "iris", "--json", "--server", server, token=token)
    status = json.loads(out)
    assert code == 0 and status["rollout"]["version"] == 2 and status["rollout"]["condition"] == "holding"
    assert status["rollout"]["approval"]["rule"] is not None  # the server read main's policy
    code, out = flywheel("versions", "iris", "--json", "--server", server, token=token)
    assert [row["version"] for row in json.loads(out)] == [1, 2]
    code, out = flywheel("history", "iris", "--json", "--server", server, token=token)
    assert json.loads(out)["environments"]["production"][0]["version"] == 1
    at = world.store.serving_history(environment="staging", model="iris")[0].at.isoformat()
    here = flywheel("history", "iris", "--at", at, "--state-dir", str(world.state))
    there = flywheel("history", "iris", "--at", at, "--server", server, token=token)
    assert here == there and "production: v1 (80%), v2 (20%) at " in there[1]
    code, out = flywheel("audit", "iris", "--limit", "2", "--json", "--server", server, token=token)
    entries = [json.loads(line) for line in out.splitlines()]
    assert [e["id"] for e in entries] == [e.id for e in world.store.audit(model="iris", limit=2)]


def test_a_missing_or_refused_token_and_an_unknown_model_are_one_line(
    world: RolloutWorld, server: str, token: str
) -> None:
    code, out = flywheel("models", "--server", server)
    assert (code, out) == (
        1,
        f"Error: {server} answered 401: reading it needs a token in FLYWHEEL_TOKEN "
        "(flywheel ui token create)\n",
    )
    code, out = flywheel("versions", "iris", "--server", server, token="not-a-token")
    assert (code, out) == (
        1,
        f"Error: {server} answered 401: the token in FLYWHEEL_TOKEN was refused "
        "(this bearer token is unknown or revoked)\n",
    )
    code, out = flywheel("status", "nope", "--server", server + "/", token=token)
    assert (code, out) == (1, f"Error: {server} answered 404: no model 'nope' (models: iris)\n")
    code, out = flywheel("versions", "nope", "--server", server, token=token)
    assert (code, out) == (1, f"Error: {server} answered 404: nope has no registered versions\n")
    code, out = flywheel("history", "nope", "--server", server, token=token)
    assert (code, out) == (1, f"Error: {server} answered 404: nope has never been rolled out\n")


def test_a_server_nobody_answers_at_is_one_line() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    code, out = flywheel("audit", "--server", nobody)
    assert code == 1 and out.startswith(f"Error: cannot reach {nobody}: ") and out.count("\n") == 1, out


def test_an_open_dashboard_reads_without_a_token_but_refuses_a_wrong_one(
    world: RolloutWorld, token: str
) -> None:
    tokens = functools.partial(token_user, world.store)
    app = create_app(
        models=world.store, history=world.store, clock=SYSTEM_CLOCK, access=Access(tokens=tokens)
    )
    api = TestClient(app)
    assert api.get("/api/v1/models/iris/versions").status_code == 200
    good = api.get("/api/v1/models/iris/versions", headers={"Authorization": f"Bearer {token}"})
    assert good.status_code == 200
    wrong = api.get("/api/v1/models/iris/versions", headers={"Authorization": "Bearer not-a-token"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "this bearer token is unknown or revoked"})


def test_the_answers_fit_the_schemas_the_openapi_document_declares(world: RolloutWorld) -> None:
    api = TestClient(create_app(models=world.store, history=world.store, clock=SYSTEM_CLOCK))
    document = api.get("/api/v1/openapi.json").json()
    at = world.store.serving_history(environment="staging", model="iris")[0].at.isoformat()
    for path in (
        "/api/v1/status",
        "/api/v1/models/iris/status",
        "/api/v1/models/iris/versions",
        "/api/v1/models/iris/history",
        f"/api/v1/models/iris/history?at={at.replace('+', '%2B')}",
        "/api/v1/audit/entries?model=iris",
    ):
        answer = api.get(path)
        assert answer.status_code == 200, path
        template = path.split("?")[0].replace("/iris/", "/{model}/")
        answers = document["paths"][template]["get"]["responses"]["200"]
        schema = answers["content"]["application/json"]["schema"]
        jsonschema.validate(
            answer.json(),
            {**schema, "components": document["components"]},
            format_checker=jsonschema.FormatChecker(),
        )
