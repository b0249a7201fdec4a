"""Whether an OCI registry has an image, and its digest: the check before any build.

:meth:`Registry.digest` asks ``HEAD /v2/<name>/manifests/<tag>`` (OCI
distribution API) with the Accept headers of OCI and Docker manifests and
indexes, and returns the ``Docker-Content-Digest`` (``None`` on 404). A
registry that answers 401 is followed through its challenge: ``Bearer
realm=…,service=…,scope=…`` asks the realm for a token (with the credentials,
when there are any) and retries with it; ``Basic`` retries with the
credentials. The credentials come from a ``dockerconfigjson`` document, the
content of the Environment's ``images.pushSecret`` (:func:`credentials_for`).
The builders (:mod:`.buildkit`, :mod:`.buildah`) call it before they build and
after they push.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from controller.backends.images import ImageError
from controller.specs.types import ImagesSpec

__all__ = ["MANIFEST_TYPES", "Credentials", "Registries", "Registry", "credentials_for", "read_docker_config"]

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = ""

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(username={self.username!r})"


def read_docker_config(path: Path) -> dict[str, Any]:
    """The ``dockerconfigjson`` document in ``path``; :class:`ImageError` naming the file if it is not one."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ImageError(f"registry credentials {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("auths", {}), dict):
        raise ImageError(f"registry credentials {path}: not a docker config (no 'auths' object)")
    return document


def credentials_for(docker_config: Mapping[str, Any], registry: str) -> Credentials | None:
    """The credentials a ``dockerconfigjson`` document holds for ``registry`` (``host[:port]``), if any.

    An entry's key may be the bare host or a URL (``https://host/v1/``); its
    ``auth`` is base64 of ``user:password``, or it has ``username`` and ``password``.
    """
    auths = docker_config.get("auths") or {}
    for key, entry in auths.items():
        host = re.sub(r"^[a-z]+://", "", str(key)).split("/", 1)[0]
        if host != registry or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except ValueError:
                raise ImageError(f"registry credentials for {registry}: 'auth' is not base64") from None
            username, _, password = decoded.partition(":")
            return Credentials(username, password)
        if entry.get("username"):
            return Credentials(str(entry["username"]), str(entry.get("password", "")))
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


class Registry:
    """One registry (``host[:port]``), over HTTPS or, when ``insecure``, plain HTTP."""

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.registry = registry
        self.base_url = f"{'http' if insecure else 'https'}://{registry}"
        self.credentials = credentials
        self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)
        self._tokens: dict[str, str] = {}  # scope -> bearer token

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def digest(self, name: str, tag: str) -> str | None:
        """The manifest digest of ``<name>:<tag>``; ``None`` when the registry does not have it."""
        url = f"{self.base_url}/v2/{name}/manifests/{tag}"
        where = f"registry {self.registry}: HEAD {name}:{tag}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        scope = f"repository:{name}:pull"
        if scope in self._tokens:
            headers["Authorization"] = f"Bearer {self._tokens[scope]}"
        response = self._send(url, headers, where)
        if response.status_code == 401:
            headers["Authorization"] = self._authorization(response, scope, where)
            response = self._send(url, headers, where)
        if response.status_code == 404:
            return None
        if response.status_code == 401:
            raise ImageError(f"{where}: 401 unauthorized with the credentials given")
        if response.status_code != 200:
            raise ImageError(f"{where}: HTTP {response.status_code}")
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise ImageError(f"{where}: the answer has no Docker-Content-Digest header")
        return str(digest)

    def _send(self, url: str, headers: dict[str, str], where: str) -> httpx.Response:
        try:
            return self._client.head(url, headers=headers)
        except httpx.HTTPError as error:
            raise ImageError(f"{where}: {error or type(error).__name__}") from None

    def _authorization(self, response: httpx.Response, scope: str, where: str) -> str:
        """The Authorization header the 401's challenge asks for (fetching a token for Bearer)."""
        scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self.credentials is None:
                raise ImageError(f"{where}: the registry asks for credentials and none are configured")
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        if scheme != "bearer" or not params.get("realm"):
            raise ImageError(f"{where}: 401 with an unsupported challenge {scheme or '(none)'!r}")
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        try:
            answer = self._client.get(params["realm"], params=query, auth=auth)
        except httpx.HTTPError as error:
            raise ImageError(
                f"{where}: token from {params['realm']}: {error or type(error).__name__}"
            ) from None
        if answer.status_code != 200:
            raise ImageError(f"{where}: token from {params['realm']}: HTTP {answer.status_code}")
        try:
            body = answer.json()
            token = str(body.get("token") or body.get("access_token") or "")
        except (ValueError, AttributeError):
            token = ""
        if not token:
            raise ImageError(f"{where}: token from {params['realm']}: the answer holds no token")
        self._tokens[scope] = token
        return f"Bearer {token}"


class Registries:
    """The registries a builder talks to, one connection each, with the credentials ``docker_config``
    (a ``dockerconfigjson`` document) holds for them; :meth:`close` closes them all. Safe to share
    between threads (the argo runner ensures each run's image from the run's own thread)."""

    def __init__(self, docker_config: Mapping[str, Any] | None = None) -> None:
        self.docker_config: Mapping[str, Any] = docker_config or {}
        self._open: dict[tuple[str, bool], Registry] = {}
        self._lock = threading.Lock()

    def get(self, images: ImagesSpec) -> Registry:
        """The connection to ``images``' registry, opened the first time it is asked for."""
        key = (images.registry, images.insecure)
        with self._lock:  # two runs asking at once open one connection, not one each (and leak one)
            if key not in self._open:
                credentials = credentials_for(self.docker_config, images.registry)
                self._open[key] = Registry(images.registry, insecure=images.insecure, credentials=credentials)
            return self._open[key]

    def close(self) -> None:
        with self._lock:
            for registry in self._open.values():
                registry.close()
            self._open.clear()
