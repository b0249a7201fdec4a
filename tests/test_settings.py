"""One settings tree, loaded once, for ``flywheel run`` and ``flywheel serve`` alike.

Pins down: :func:`load_settings` keeps the command line's values and reads
GitHub (only when a repository is named), Slack (only with a bot token) and,
for ``serve`` only, the webhook service's secrets and address; a malformed
value is a :class:`SettingsError` naming its variable (the CLI's one-line
errors are pinned in ``test_cli_errors.py``); no secret shows in the tree's
``repr``; the tree cannot be changed once loaded; the shared virtualenv cache
defaults to ``$FLYWHEEL_VENV_CACHE``, else the user's cache directory; the argo
runner's artifacts directory and the Argo Server token the spec names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controller.settings import (
    ENV_ARGO_ARTIFACTS_DIR,
    ENV_KUBECONFIG,
    ENV_REGISTRY_AUTH_FILE,
    ENV_SECRET,
    ArgoSettings,
    ControllerSettings,
    LeaderSettings,
    LocalSettings,
    Settings,
    SettingsError,
    SlackSettings,
    argo_token,
    database_url,
    default_venv_cache,
    load_settings,
)

pytestmark = pytest.mark.unit
OPTIONS = ControllerSettings(repo="/srv/ml", state_dir=Path("/srv/state"), interval_seconds=2.0)
GITHUB = {"FLYWHEEL_GITHUB_REPOSITORY": "octo/ml", "FLYWHEEL_GITHUB_TOKEN": "ghp_secret"}


def test_run_gets_the_command_line_and_nothing_it_was_not_given() -> None:
    settings = load_settings(OPTIONS, local=LocalSettings(venv_dir=Path("/srv/venvs")), environ={})
    assert settings == Settings(controller=OPTIONS, local=LocalSettings(venv_dir=Path("/srv/venvs")))
    assert (settings.github, settings.slack, settings.webhooks) == (None, None, None)


def test_github_and_slack_come_from_the_environment() -> None:
    environ = {
        **GITHUB,
        "FLYWHEEL_GITHUB_POLL_SECONDS": "30",
        "FLYWHEEL_SLACK_BOT_TOKEN": "xoxb-from-env",
        "FLYWHEEL_SLACK_API_URL": "http://127.0.0.1:9/api/",
    }
    settings = load_settings(OPTIONS, environ=environ)
    assert settings.github is not None
    assert (settings.github.repository, settings.github.poll_seconds, settings.github.check_mode) == (
        "octo/ml",
        30,
        "statuses",
    )
    assert settings.slack == SlackSettings(token="xoxb-from-env", api_url="http://127.0.0.1:9/api/")
    assert load_settings(OPTIONS, environ={"FLYWHEEL_GITHUB_TOKEN": "t"}).github is None  # no repository


def test_the_slack_token_is_read_from_the_environment_only_when_set() -> None:
    assert load_settings(OPTIONS, environ={"FLYWHEEL_SLACK_BOT_TOKEN": "xoxb-1"}).slack == SlackSettings(
        token="xoxb-1"
    )
    assert load_settings(OPTIONS, environ={}).slack is None
    with pytest.raises(SettingsError, match=r"FLYWHEEL_SLACK_API_URL is 'slack\.com/api'"):
        load_settings(OPTIONS, environ={"FLYWHEEL_SLACK_API_URL": "slack.com/api"})  # checked without a token


def test_serve_gets_the_webhook_service_and_needs_its_secret() -> None:
    settings = load_settings(OPTIONS, webhooks=("0.0.0.0", 9000), environ={ENV_SECRET: "s3cret"})
    assert settings.webhooks is not None
    assert (settings.webhooks.host, settings.webhooks.port) == ("0.0.0.0", 9000)
    assert settings.webhooks.github_secrets == ("s3cret",)
    with pytest.raises(SettingsError, match=f"{ENV_SECRET} is not set"):
        load_settings(OPTIONS, webhooks=("127.0.0.1", 8080), environ={})
    assert load_settings(OPTIONS, environ={}).webhooks is None  # run: no secret needed


def test_github_settings_name_the_variable_that_is_wrong() -> None:
    environ = {"FLYWHEEL_GITHUB_REPOSITORY": "o/r", "FLYWHEEL_GITHUB_PRIVATE_KEY": "k"}
    with pytest.raises(SettingsError, match="FLYWHEEL_GITHUB_APP_ID and FLYWHEEL_GITHUB_INSTALLATION_ID"):
        load_settings(OPTIONS, environ=environ)


def test_no_secret_shows_in_the_settings_repr() -> None:
    environ = {**GITHUB, "FLYWHEEL_SLACK_BOT_TOKEN": "xoxb-secret", ENV_SECRET: "hook-secret"}
    settings = load_settings(OPTIONS, webhooks=("127.0.0.1", 8080), environ=environ)
    shown = repr(settings)
    assert "octo/ml" in shown
    assert not any(secret in shown for secret in ("ghp_secret", "xoxb-secret", "hook-secret"))


def test_the_settings_cannot_change_once_loaded() -> None:
    settings = load_settings(OPTIONS, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.controller.repo = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.github = None  # type: ignore[misc]


def test_the_shared_virtualenv_cache(tmp_path: Path) -> None:
    assert default_venv_cache({"FLYWHEEL_VENV_CACHE": str(tmp_path)}) == tmp_path
    assert default_venv_cache({"XDG_CACHE_HOME": "/cache"}) == Path("/cache/flywheel/venvs")
    assert default_venv_cache({}) == Path.home() / ".cache" / "flywheel" / "venvs"


def test_the_argo_artifacts_directory_is_absolute_and_holds_each_claim_by_name(tmp_path: Path) -> None:
    assert ArgoSettings.from_env({}).claim_dir("models", "/artifacts") == Path("/artifacts")
    settings = load_settings(ControllerSettings(repo="."), environ={ENV_ARGO_ARTIFACTS_DIR: str(tmp_path)})
    assert settings.argo.claim_dir("models", "/artifacts") == tmp_path / "models"
    with pytest.raises(SettingsError, match="FLYWHEEL_ARGO_ARTIFACTS_DIR is 'claims': give an absolute"):
        ArgoSettings.from_env({ENV_ARGO_ARTIFACTS_DIR: "claims"})


def test_the_kubeconfig_and_registry_auth_file_are_files_that_exist(tmp_path: Path) -> None:
    assert (ArgoSettings.from_env({}).kubeconfig, ArgoSettings.from_env({}).registry_auth_file) == (
        None,
        None,
    )
    kubeconfig, auth = tmp_path / "kubeconfig", tmp_path / "config.json"
    kubeconfig.write_text("apiVersion: v1\n")
    auth.write_text("{}")
    settings = ArgoSettings.from_env({ENV_KUBECONFIG: str(kubeconfig), ENV_REGISTRY_AUTH_FILE: str(auth)})
    assert (settings.kubeconfig, settings.registry_auth_file) == (kubeconfig, auth)
    with pytest.raises(SettingsError, match=r"^FLYWHEEL_KUBECONFIG is '/nowhere': give a kubeconfig file"):
        ArgoSettings.from_env({ENV_KUBECONFIG: "/nowhere"})
    with pytest.raises(
        SettingsError, match=r"^FLYWHEEL_REGISTRY_AUTH_FILE is '/nowhere': give a \.dockerconfigjson"
    ):
        ArgoSettings.from_env({ENV_REGISTRY_AUTH_FILE: "/nowhere"})


def test_the_argo_token_comes_from_the_variable_or_file_the_spec_names(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    assert argo_token(variable="ARGO_TOKEN", file=None, environ={"ARGO_TOKEN": "t0k"}) == "t0k"
    assert argo_token(variable=None, file=str(token_file), environ={}) == "from-a-file"
    assert argo_token(variable=None, file=None, environ={"ARGO_TOKEN": "unused"}) is None
    with pytest.raises(SettingsError, match=r"^ARGO_TOKEN \(the Argo Server token of .*\) is not set$"):
        argo_token(variable="ARGO_TOKEN", file=None, environ={})
    with pytest.raises(SettingsError, match="is empty"):
        argo_token(variable="ARGO_TOKEN", file=None, environ={"ARGO_TOKEN": " "})
    with pytest.raises(SettingsError, match=f"cannot read {tmp_path / 'missing'} .*: No such file"):
        argo_token(variable=None, file=str(tmp_path / "missing"), environ={})


def test_the_database_url_selects_postgresql_through_psycopg_and_is_refused_without_its_password() -> None:
    assert database_url({}) is None and database_url({"FLYWHEEL_DATABASE_URL": " "}) is None
    for given in ("postgresql://u:pw@db/flywheel", "postgres://u:pw@db/flywheel"):
        assert database_url({"FLYWHEEL_DATABASE_URL": given}) == "postgresql+psycopg://u:pw@db/flywheel"
    settings = load_settings(
        ControllerSettings(repo="."), environ={"FLYWHEEL_DATABASE_URL": "postgresql+psycopg://u@db/f"}
    )
    assert settings.store_location == settings.database_url == "postgresql+psycopg://u@db/f"
    assert load_settings(ControllerSettings(repo="."), environ={}).store_location == Path(".flywheel")
    for wrong, says in (
        (
            "mysql://u:topsecret@db/flywheel",
            "mysql://u:\\*\\*\\*@db/flywheel: Flywheel keeps its state in PostgreSQL",
        ),
        ("postgresql://u:topsecret@db", "names no database"),
        ("not a url topsecret", "is not a database URL"),
    ):
        with pytest.raises(SettingsError, match=f"^FLYWHEEL_DATABASE_URL.*{says}") as raised:
            database_url({"FLYWHEEL_DATABASE_URL": wrong})
        assert "topsecret" not in str(raised.value)


def test_leader_election_is_off_by_default_and_its_settings_name_the_variable_when_wrong(
    tmp_path: Path,
) -> None:
    nowhere = tmp_path / "namespace"
    alone = LeaderSettings.from_env({}, namespace_file=nowhere)
    assert (alone.election, alone.lease_name, alone.lease_namespace, alone.lease_seconds) == (
        "none",
        "flywheel-controller",
        "default",
        15,
    )
    nowhere.write_text("ml-prod\n")
    env = {
        "FLYWHEEL_LEADER_ELECTION": "lease",
        "FLYWHEEL_LEASE_SECONDS": "30",
        "HOSTNAME": "controller-7d9-x2",
    }
    lease = LeaderSettings.from_env(env, namespace_file=nowhere)
    assert (lease.election, lease.lease_namespace, lease.name, lease.renew_seconds) == (
        "lease",
        "ml-prod",
        "controller-7d9-x2",
        10,
    )
    named = LeaderSettings.from_env({**env, "FLYWHEEL_INSTANCE": "a", "FLYWHEEL_LEASE_NAMESPACE": "ops"})
    assert (named.name, named.lease_namespace) == ("a", "ops")
    pod = LeaderSettings.from_env({**env, "POD_NAME": "controller-0", "POD_NAMESPACE": "ml"})  # deploy/'s
    assert (pod.name, pod.lease_namespace) == ("controller-0", "ml")
    for wrong, says in (
        ({"FLYWHEEL_LEADER_ELECTION": "raft"}, "FLYWHEEL_LEADER_ELECTION is 'raft'"),
        ({"FLYWHEEL_LEADER_ELECTION": "postgres"}, "set FLYWHEEL_DATABASE_URL"),
        ({"FLYWHEEL_LEASE_SECONDS": "2"}, "FLYWHEEL_LEASE_SECONDS is '2'"),
        ({"FLYWHEEL_LEASE_SECONDS": "ten"}, "FLYWHEEL_LEASE_SECONDS is 'ten'"),
    ):
        with pytest.raises(SettingsError, match=says):
            LeaderSettings.from_env(wrong, namespace_file=nowhere)
    assert (
        LeaderSettings.from_env(
            {"FLYWHEEL_LEADER_ELECTION": "postgres"}, database_url="postgresql+psycopg://u@h/d"
        ).election
        == "postgres"
    )
