"""Reading a data input's current version where it lives, against servers that speak the real protocols.

Pins down: a ``file://`` input's version is its content digest; ``https://``
is read with ``HEAD`` over TLS (a local server with a test CA): its ETag, else
its Last-Modified, and an answer with neither or an error status is a
:class:`DataError` naming the input; ``s3://`` is read with boto3's
``head_object`` against moto's S3 server: the ETag of an unversioned
bucket's object, the version id of a versioned one, and a missing object is a
:class:`DataError`; an input in the repository or of a scheme without versions
is not watched, and says why.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import trustme

from controller.backends.data import DataError
from controller.backends.data_versions import DataVersions, Observed, watchable
from controller.specs.types import DataInput
from tests.fixtures.s3 import s3_server

pytestmark = pytest.mark.integration

HEADERS: dict[str, dict[str, str]] = {
    "/etag.csv": {"ETag": '"v1-abc"', "Last-Modified": "Wed, 01 May 2024 12:00:00 GMT"},
    "/modified.csv": {"Last-Modified": "Wed, 01 May 2024 12:00:00 GMT"},
    "/neither.csv": {},
}


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        headers = HEADERS.get(self.path)
        self.send_response(404 if headers is None else 200)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def https() -> Iterator[tuple[str, httpx.Client]]:
    """A local HTTPS server, and an httpx client that trusts its test CA."""
    ca = trustme.CA()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client = httpx.Client(verify=client_context, timeout=5)
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", client
    finally:
        client.close()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """A boto3 S3 client of moto's S3 server on a loopback port."""
    with s3_server() as endpoint:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        try:
            yield client
        finally:
            client.close()


def test_a_file_is_versioned_by_its_content(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("a\n1\n")
    source = DataInput(name="train", uri=data.as_uri())
    first = DataVersions().current(source)
    assert first.pin == "digest" and first.value.startswith("sha256:")
    data.write_text("a\n2\n")
    assert DataVersions().current(source).value != first.value
    data.unlink()
    with pytest.raises(DataError, match=r"data input 'train': .*train.csv does not exist"):
        DataVersions().current(source)


def test_https_is_versioned_by_etag_else_last_modified(https: tuple[str, httpx.Client]) -> None:
    base, client = https
    versions = DataVersions(http=client)
    assert versions.current(DataInput(name="a", uri=f"{base}/etag.csv")) == Observed(
        "a", "version", '"v1-abc"'
    )
    assert versions.current(DataInput(name="b", uri=f"{base}/modified.csv")) == Observed(
        "b", "version", "Wed, 01 May 2024 12:00:00 GMT"
    )
    with pytest.raises(
        DataError, match=r"data input 'c': .*/neither.csv has no ETag nor Last-Modified header"
    ):
        versions.current(DataInput(name="c", uri=f"{base}/neither.csv"))
    with pytest.raises(DataError, match=r"data input 'd': HEAD .*/gone.csv answered 404"):
        versions.current(DataInput(name="d", uri=f"{base}/gone.csv"))


def test_s3_is_versioned_by_etag_or_by_version_id(s3: Any) -> None:
    versions = DataVersions(s3=s3)
    s3.create_bucket(Bucket="plain")
    s3.put_object(Bucket="plain", Key="data/train.csv", Body=b"a\n1\n")
    source = DataInput(name="train", uri="s3://plain/data/train.csv")
    first = versions.current(source)
    assert first.pin == "version" and first.value.startswith('"')  # an ETag
    s3.put_object(Bucket="plain", Key="data/train.csv", Body=b"a\n2\n")
    assert versions.current(source).value not in (first.value, "")

    s3.create_bucket(Bucket="kept")
    s3.put_bucket_versioning(Bucket="kept", VersioningConfiguration={"Status": "Enabled"})
    put = s3.put_object(Bucket="kept", Key="train.csv", Body=b"a\n1\n")
    assert versions.current(DataInput(name="kept", uri="s3://kept/train.csv")) == Observed(
        "kept", "version", put["VersionId"]
    )
    with pytest.raises(DataError, match=r"data input 'gone': s3://plain/nothing.csv: 404"):
        versions.current(DataInput(name="gone", uri="s3://plain/nothing.csv"))


def test_what_is_not_watched_says_why() -> None:
    assert watchable(DataInput(name="a", uri="data/train.csv")) == "in the repository: a commit changes it"
    assert watchable(DataInput(name="b", uri="sklearn://iris")) == "sklearn:// has no version to watch"
    assert watchable(DataInput(name="c", uri="s3://bucket/key")) is None
    with pytest.raises(DataError, match="data input 'b': sklearn:// has no version to watch"):
        DataVersions().current(DataInput(name="b", uri="sklearn://iris"))
