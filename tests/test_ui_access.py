"""Who may do what on the dashboard: sign-in, a trusted proxy's header, form tokens, the engine's checks.

Pins down, over a store the real rollout engine wrote (iris v2 waiting at
production's approval gate, authored by alice), that: a person a trusted
proxy names approves through the page's form, recorded and audited with the
channel ``dashboard``, and the rollout's page says so; the same header from
an address outside the trusted networks is ignored; a form post without the
session's CSRF token, or with another session's, is answered 403 and changes
nothing; the change's author and a person in no group are refused with the
engine's reason shown on the page; the one-time sign-in address signs in
once, as the operating-system login that the policy's identities map; with
reading limited to those signed in, pages and the API answer 401 to anybody
else; the API's door takes a bearer token only; and no page shows the
sign-in token or the session key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from controller.ui import create_app
from controller.ui.access import Access, SignIn, networks, token_digest
from tests.fixtures.rollout_world import RolloutWorld, rollout_world

pytestmark = pytest.mark.integration
PROXY = ("10.0.0.7", 40000)
SECRET = "s3cret-session-key-for-the-tests"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path, people=True) as world:
        world.to_gate()
        yield world


def client(
    world: RolloutWorld,
    *,
    peer: tuple[str, int] = PROXY,
    access: Access | None = None,
    user: str | None = None,
) -> TestClient:
    gate = access or Access(trusted_proxies=networks(["10.0.0.0/24"]))
    app = create_app(
        models=world.store,
        history=world.store,
        clock=world.clock,
        catalog=lambda: world.catalog,
        records=world.store,
        access=gate,
        secret=SECRET,
    )
    headers = {"X-Forwarded-User": user} if user else None
    return TestClient(app, client=peer, headers=headers)


def text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page carries no form token"
    return found.group(1)


def approve(browser: TestClient, **extra: str) -> tuple[int, str]:
    """Open rollout #2 and press Approve on its form; the status and text of the page it ends on."""
    page = browser.get("/rollouts/2")
    assert page.status_code == 200
    form = {"csrf": csrf(page.text), "command": "approve", "version": "2", "environment": "production"}
    form.update({"next": "/rollouts/2", **extra})
    answer = browser.post("/models/iris/actions", data={k: v for k, v in form.items() if v != "-"})
    return answer.status_code, text(answer.text)


def decisions(world: RolloutWorld) -> list[tuple[str, str, str]]:
    found = world.store.approvals_for(model="iris", version=2, environment="production")
    return [(a.user, a.decision, a.channel) for a in found]


def test_a_person_the_trusted_proxy_names_approves_recorded_and_audited_as_the_dashboard(
    world: RolloutWorld,
) -> None:
    status, page = approve(client(world, user="carol"))
    assert status == 200
    assert "carol approved iris v2 for production. iris v2 for production was approved by carol." in page
    assert "signed in as carol" in page
    assert decisions(world) == [("carol", "approve", "dashboard")]
    entry = world.store.audit(model="iris")[-1]
    assert (entry.actor, entry.action, entry.detail["channel"]) == ("carol", "approval.approve", "dashboard")
    assert world.store.get_rollout(2).state == "gate"
    world.settle(seconds=11, ticks=8)
    assert (world.store.get_rollout(2).state, world.store.get_rollout(2).active) == ("succeeded", False)


def test_the_header_from_an_address_outside_the_trusted_networks_is_ignored(world: RolloutWorld) -> None:
    status, page = approve(client(world, user="carol", peer=("192.0.2.9", 40000)))
    assert status == 403 and "sign in first" in page
    assert "not signed in" in page
    assert decisions(world) == []


@pytest.mark.parametrize("token", ["-", "", "forged-token"])
def test_a_form_post_without_the_sessions_token_changes_nothing(world: RolloutWorld, token: str) -> None:
    before = len(world.store.audit(model="iris"))
    status, page = approve(client(world, user="carol"), csrf=token)
    assert status == 403 and "CSRF token is missing or wrong" in page
    assert decisions(world) == []
    assert len(world.store.audit(model="iris")) == before


def test_another_sessions_token_is_refused(world: RolloutWorld) -> None:
    other = client(world, user="carol")
    stolen = csrf(other.get("/rollouts/2").text)
    status, _ = approve(client(world, user="carol"), csrf=stolen)
    assert status == 403 and decisions(world) == []


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("alice", "alice made this change and cannot approve it: production-signoff needs someone else"),
        ("grace", "grace may not approve: the policy on main does not allow it."),
        ("mallory", "mallory is not a known Flywheel user on dashboard; ask to be added to the policy."),
    ],
)
def test_the_author_and_people_in_no_group_are_refused_with_the_engines_reason(
    world: RolloutWorld, user: str, reason: str
) -> None:
    status, page = approve(client(world, user=user))
    assert status == 200 and reason in page
    assert decisions(world) == []
    refused = world.store.audit(model="iris")[-1]
    assert (refused.action, refused.detail["channel"]) == ("command.refused", "dashboard")


def test_the_one_time_sign_in_signs_in_once_as_the_login_the_identities_map(world: RolloutWorld) -> None:
    sign_in = SignIn("cmiller", token="t0ken-from-the-terminal")
    gate = Access(read="signed-in", sign_in=sign_in)
    browser = client(world, access=gate)
    assert browser.get("/").status_code == 401
    assert browser.get("/api/v1/models").status_code == 401
    assert browser.get("/signin?token=wrong").status_code == 403
    home = browser.get("/signin?token=t0ken-from-the-terminal")
    assert home.status_code == 200 and "signed in as cmiller" in text(home.text)
    assert browser.get("/api/v1/models").status_code == 200
    _, page = approve(browser)
    assert "carol approved iris v2 for production" in page
    assert decisions(world) == [("carol", "approve", "dashboard")]
    later = client(world, access=gate)
    assert later.get("/signin?token=t0ken-from-the-terminal").status_code == 403  # once only
    for path in ("/", "/rollouts/2", "/approvals", "/audit"):
        shown = browser.get(path).text
        assert sign_in.token not in shown and SECRET not in shown


def test_signing_out_needs_the_form_token(world: RolloutWorld) -> None:
    browser = client(world, access=Access(sign_in=SignIn("cmiller", token="t")))
    page = browser.get("/signin?token=t").text
    assert browser.post("/signout", data={}).status_code == 403
    assert "signed in as cmiller" in text(browser.get("/").text)
    browser.post("/signout", data={"csrf": csrf(page)})
    assert "not signed in" in text(browser.get("/").text)


def test_the_api_door_takes_a_bearer_token_and_nothing_else(world: RolloutWorld) -> None:
    tokens = {token_digest("carols-token"): "carol"}
    gate = Access(trusted_proxies=networks(["10.0.0.0/24"]), tokens=tokens.get)
    by_proxy = client(world, access=gate, user="carol")
    refused = by_proxy.post("/api/v1/models/iris/actions", json={"command": "approve", "version": 2})
    assert refused.status_code == 401 and decisions(world) == []
    api = client(world, access=gate, peer=("192.0.2.9", 1))
    wrong = {"Authorization": "Bearer not-a-token"}
    assert (
        api.post("/api/v1/models/iris/actions", json={"command": "approve"}, headers=wrong).status_code == 401
    )
    good = {"Authorization": "Bearer carols-token"}
    done = api.post("/api/v1/models/iris/actions", json={"command": "approve", "version": 2}, headers=good)
    assert done.status_code == 200 and done.json()["ok"] and done.json()["user"] == "carol"
    assert decisions(world) == [("carol", "approve", "dashboard")]
    again = api.post("/api/v1/models/iris/actions", json={"command": "pause"}, headers=good)
    assert again.status_code == 403 and "carol may not pause" in again.json()["message"]


def test_a_state_the_controller_would_refuse_takes_no_decision_from_the_dashboard(
    world: RolloutWorld,
) -> None:
    """As ``flywheel approve`` does, the dashboard checks the state first: a damaged one records nothing."""
    from controller.cli.ui import dashboard

    gate = Access(trusted_proxies=networks(["10.0.0.0/24"]))
    app = dashboard(
        world.store, clock=world.clock, catalog=lambda: world.catalog, github_repository=None, access=gate
    )
    browser = TestClient(app, client=PROXY, headers={"X-Forwarded-User": "carol"})
    mark = world.store.audit_mark_path
    assert mark is not None and mark.is_file()
    mark.write_text("{not json")
    entries = len(world.store.audit())
    status, page = approve(browser)
    assert status == 200  # back on the rollout's page, the refusal shown there
    assert "the state store must not be acted on as it is, so nothing was recorded" in page
    assert f"the audit mark {mark} is damaged" in page
    assert decisions(world) == [] and len(world.store.audit()) == entries
    mark.unlink()  # what `flywheel state accept` settles; without a mark the log is taken as it is
    status, page = approve(browser)
    assert "carol approved iris v2 for production" in page
    assert decisions(world) == [("carol", "approve", "dashboard")]


def test_flywheel_ui_prints_a_sign_in_address_that_works_once_and_keeps_its_key_private(
    world: RolloutWorld,
) -> None:
    import getpass
    import os
    import subprocess
    import sys

    import httpx

    from controller.backends.serving.server import free_port

    port = free_port()
    command = [str(Path(sys.executable).parent / "flywheel"), "ui", "--state-dir", str(world.state)]
    command += ["--repo", str(world.repo), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_UI_")}
    ui = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert ui.stdout is not None
        lines = [ui.stdout.readline(), ui.stdout.readline()]
        found = re.search(r"^sign in as (\S+) \(once\) at (http://\S+)$", lines[1].strip())
        assert found, lines
        assert found.group(1) == getpass.getuser()
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            signed = browser.get(found.group(2))
            assert signed.status_code == 200 and f"signed in as {getpass.getuser()}" in text(signed.text)
        with httpx.Client(timeout=30) as other:
            assert other.get(found.group(2)).status_code == 403
    finally:
        ui.terminate()
        ui.communicate(timeout=30)
    assert (world.state / "ui-secret").stat().st_mode & 0o777 == 0o600


def test_the_dashboards_settings_are_read_once_and_a_malformed_one_is_one_line_naming_it() -> None:
    from controller.settings import SettingsError, ui_settings

    read = ui_settings({"FLYWHEEL_UI_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7", "FLYWHEEL_UI_SECRET": "k"})
    assert (read.read, read.trusted_proxies, read.user_header) == (
        None,
        ("10.0.0.0/8", "192.0.2.7"),
        "X-Forwarded-User",
    )
    assert "k" not in repr(read)
    with pytest.raises(SettingsError, match=r"^FLYWHEEL_UI_TRUSTED_PROXIES: '10\.0\.0\.0/33' is not"):
        ui_settings({"FLYWHEEL_UI_TRUSTED_PROXIES": "10.0.0.0/33"})
    with pytest.raises(SettingsError, match=r"^FLYWHEEL_UI_READ is 'everyone': give open or signed-in$"):
        ui_settings({"FLYWHEEL_UI_READ": "everyone"})
