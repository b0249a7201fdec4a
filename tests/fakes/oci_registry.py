"""Debian's real ``docker-registry`` (distribution 2.8) on a loopback port, open or behind a token server.

:func:`running_registry` starts ``docker-registry serve`` with its storage in
a temporary directory and stops it after the test. With ``token=True`` it is
configured for the distribution token flow (``auth.token``) and a small
:class:`TokenServer` beside it plays the authorization service: it checks the
client's basic credentials and hands out an RS256 JWT carrying its
certificate in the ``x5c`` header, which the registry verifies against the
same certificate (its ``rootcertbundle``). The registry package ships no
token server of its own, so this one is the stand-in; the registry's side of
the flow is the real one. Tokens are valid from 1970 to 2100, so no clock
(faked or not) decides a test.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.fixtures.required import program

SERVICE = "flywheel-test-registry"
ISSUER = "flywheel-test-issuer"
USERNAME, PASSWORD = "builder", "s3cret"
_NOT_AFTER = 4102444800  # 2100-01-01


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class TokenServer:
    """The authorization service of the token flow: basic credentials in, a signed JWT out."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    @classmethod
    def create(cls, directory: Path) -> TokenServer:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        (directory / "token-root.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(key=key, certificate=certificate)

    def token(self, scope: str) -> str:
        access = []
        if scope:
            kind, name, actions = scope.split(":", 2)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        claims = {
            "iss": ISSUER,
            "sub": USERNAME,
            "aud": SERVICE,
            "nbf": 0,
            "iat": 0,
            "exp": _NOT_AFTER,
            "jti": f"t{len(self.requests)}",
            "access": access,
        }
        return jwt.encode(
            claims, self.key, algorithm="RS256", headers={"x5c": [base64.b64encode(der).decode()]}
        )

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                outer.requests.append(query)
                expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected or query.get("service") != [SERVICE]:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": outer.token(query.get("scope", [""])[0])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class RunningRegistry:
    host: str  # 127.0.0.1:<port>
    storage: Path
    tokens: TokenServer | None


@contextmanager
def running_registry(directory: Path, *, token: bool = False) -> Iterator[RunningRegistry]:
    """``docker-registry serve`` on a free loopback port with its storage under ``directory``."""
    binary = program("docker-registry")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(directory / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    tokens = None
    if token:
        tokens = TokenServer.create(directory)
        tokens.start()
        config["auth"] = {
            "token": {
                "realm": tokens.url,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(directory / "token-root.pem"),
            }
        }
    config_path = directory / "registry.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (directory / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/v2/", process, directory / "registry.log")
        yield RunningRegistry(host=f"127.0.0.1:{port}", storage=directory / "storage", tokens=tokens)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        if tokens is not None:
            tokens.stop()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Ask ``/v2/`` until the registry answers (any status); fail with its log if it exits first."""
    for _ in range(500):
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited {process.returncode}: {log.read_text()}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            threading.Event().wait(0.02)
    raise RuntimeError(f"docker-registry did not answer on {url}: {log.read_text()}")


def push_image(registry: RunningRegistry, name: str, tag: str, *, note: str = "") -> str:
    """Put a minimal OCI image (a config blob, no layers) at ``name:tag`` through the registry's push API.

    Returns the manifest's digest. ``note`` goes into the config, so different
    notes give different digests.
    """
    base = f"http://{registry.host}"
    headers = {}
    if registry.tokens is not None:
        headers["Authorization"] = f"Bearer {registry.tokens.token(f'repository:{name}:pull,push')}"
    with httpx.Client(headers=headers, timeout=30) as client:
        config = json.dumps({"architecture": "amd64", "os": "linux", "note": note}).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        started = client.post(f"{base}/v2/{name}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        location = location if location.startswith("http") else base + location
        separator = "&" if "?" in location else "?"
        put = client.put(
            f"{location}{separator}digest={config_digest}",
            content=config,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert put.status_code == 201, put.text
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [],
            }
        ).encode()
        stored = client.put(
            f"{base}/v2/{name}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert stored.status_code == 201, stored.text
    return "sha256:" + hashlib.sha256(manifest).hexdigest()
