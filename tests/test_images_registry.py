"""The registry check before a build: a manifest's HEAD on Debian's docker-registry, open and token-gated."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.backends.images import ImageError
from controller.backends.images.registry import Credentials, Registry, credentials_for, read_docker_config
from tests.fakes.oci_registry import PASSWORD, USERNAME, RunningRegistry, push_image, running_registry


def docker_config(host: str, user: str, password: str) -> dict[str, object]:
    return {"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}


@pytest.mark.unit
def test_credentials_are_read_from_a_dockerconfigjson_by_host() -> None:
    config = {
        "auths": {
            "https://r.example:5000/v1/": {"auth": base64.b64encode(b"me:pw:with:colons").decode()},
            "other.example": {"username": "u", "password": "p"},
        }
    }
    assert credentials_for(config, "r.example:5000") == Credentials("me", "pw:with:colons")
    assert credentials_for(config, "other.example") == Credentials("u", "p")
    assert credentials_for(config, "unknown.example") is None
    assert "pw" not in repr(Credentials("me", "pw"))


@pytest.mark.unit
def test_a_file_that_is_not_a_docker_config_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("[]")
    with pytest.raises(ImageError, match=f"registry credentials {bad}: not a docker config"):
        read_docker_config(bad)
    with pytest.raises(ImageError, match=r"registry credentials .*missing\.json"):
        read_docker_config(tmp_path / "missing.json")


@pytest.fixture
def open_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path / "registry") as registry:
        yield registry


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path / "registry", token=True) as registry:
        yield registry


@pytest.mark.integration
def test_the_registry_has_a_pushed_tag_and_not_another(open_registry: RunningRegistry) -> None:
    digest = push_image(open_registry, "ml/iris", "abc123")
    with Registry(open_registry.host, insecure=True) as registry:
        assert registry.digest("ml/iris", "abc123") == digest
        assert registry.digest("ml/iris", "def456") is None
        assert registry.digest("ml/other", "abc123") is None


@pytest.mark.integration
def test_the_bearer_token_flow_is_followed_with_the_configured_credentials(
    token_registry: RunningRegistry,
) -> None:
    digest = push_image(token_registry, "ml/iris", "abc123")
    assert token_registry.tokens is not None
    config = docker_config(token_registry.host, USERNAME, PASSWORD)
    with Registry(
        token_registry.host, insecure=True, credentials=credentials_for(config, token_registry.host)
    ) as registry:
        assert registry.digest("ml/iris", "abc123") == digest
        asked = token_registry.tokens.requests[-1]
        assert asked["scope"] == ["repository:ml/iris:pull"] and asked["service"] == [
            "flywheel-test-registry"
        ]
        requests_before = len(token_registry.tokens.requests)
        assert registry.digest("ml/iris", "missing") is None  # the same scope: the token is reused
    assert len(token_registry.tokens.requests) == requests_before


@pytest.mark.integration
@pytest.mark.parametrize("credentials", [None, Credentials(USERNAME, "wrong")])
def test_without_good_credentials_the_token_is_refused_in_one_line(
    token_registry: RunningRegistry, credentials: Credentials | None
) -> None:
    with (
        Registry(token_registry.host, insecure=True, credentials=credentials) as registry,
        pytest.raises(
            ImageError, match=rf"registry {token_registry.host}: HEAD ml/iris:abc: token from .*401"
        ),
    ):
        registry.digest("ml/iris", "abc")


@pytest.mark.integration
def test_an_unreachable_registry_is_an_image_error() -> None:
    from tests.fakes.oci_registry import free_port

    with (
        Registry(f"127.0.0.1:{free_port()}", insecure=True, timeout=2) as registry,
        pytest.raises(ImageError, match=r"registry 127\.0\.0\.1:\d+: HEAD ml/iris:abc: "),
    ):
        registry.digest("ml/iris", "abc")
