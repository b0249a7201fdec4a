"""Flywheel's Dockerfile, built for real by buildah from this repository, on a base the test makes.

No image can be pulled here and ``pip install .`` needs the package index, so the base that takes
``python:3.11-slim``'s place (buildah's ``--from``) is busybox with stand-ins of ``apt-get``, ``pip``,
``groupadd`` and ``useradd`` that record how they are called; ``pip``'s checks that the build context
(after ``.dockerignore``) holds the package's sources and not the tests, and installs a ``flywheel``
script. What is checked is the builder's reading of the Dockerfile: the context it sends, the
instructions it runs, and the image's user, entrypoint and command.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.required import program

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
BASE = "localhost/flywheel-test/python:3.11-slim"
IMAGE = "localhost/flywheel-test/flywheel:test"

STUB = """#!/bin/sh
# a stand-in of the program it is linked as: records the call
echo "$(basename "$0") $*" >> /calls
case "$(basename "$0")" in
  pip)
    for f in pyproject.toml README.md controller/cli/__init__.py webhooks/app.py; do
      test -f "/src/$f" || { echo "pip: /src/$f is missing" >&2; exit 1; }
    done
    test ! -e /src/tests || { echo "pip: tests/ is in the context" >&2; exit 1; }
    printf '#!/bin/sh\\necho flywheel "$@"\\n' > /usr/local/bin/flywheel
    chmod 755 /usr/local/bin/flywheel ;;
  useradd) echo "flywheel:x:10001:10001::/home/flywheel:/bin/sh" >> /etc/passwd ;;
esac
"""
BASE_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY stub /usr/local/bin/stub
RUN chmod 755 /usr/local/bin/stub && echo "root:x:0:0::/root:/bin/sh" > /etc/passwd \\
    && for p in apt-get pip groupadd useradd; do ln -s /usr/local/bin/stub /usr/local/bin/$p; done
ENV PATH=/usr/local/bin:/usr/bin:/bin
"""


def test_the_dockerfile_builds_and_the_image_runs_flywheel_as_its_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildah = program("buildah")
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        busybox = Path(program("busybox", package="busybox-static"))
    conf = tmp_path / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "graph"}"\nrunroot = "{tmp_path / "run"}"\n'
    )
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    base = tmp_path / "base"
    base.mkdir()
    (base / "busybox").write_bytes(busybox.read_bytes())
    (base / "busybox").chmod(0o755)
    (base / "stub").write_text(STUB)
    (base / "Dockerfile").write_text(BASE_DOCKERFILE)

    def run(*args: str) -> str:
        done = subprocess.run(
            [buildah, "--storage-driver", "vfs", *args], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("build", "-q", "--isolation", "chroot", "-t", BASE, str(base))
    run("build", "-q", "--isolation", "chroot", "--from", BASE, "-t", IMAGE, str(ROOT))

    config = json.loads(run("inspect", "--type", "image", IMAGE))["OCIv1"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["flywheel"] and config["Cmd"] == ["--help"]
    container = run("from", "--quiet", IMAGE).strip()
    calls = run("run", "--isolation", "chroot", container, "--", "cat", "/calls").splitlines()
    assert any(c.startswith("apt-get install") and " git" in c for c in calls), calls
    assert [c for c in calls if c.startswith("pip ")] == ["pip install --no-cache-dir /src"]
    # the entrypoint resolves on the image's PATH, and /src is gone
    assert run("run", "--isolation", "chroot", container, "--", "flywheel", "run").strip() == "flywheel run"
    assert run(
        "run", "--isolation", "chroot", container, "--", "sh", "-c", "test ! -e /src && echo gone"
    ) == ("gone\n")
    run("rm", container)
