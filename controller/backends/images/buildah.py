"""Images built on one machine with buildah: the cluster's Dockerfile, tag and skip, without a cluster.

:class:`BuildahImages` is the :class:`~controller.backends.images.ImageBuilder`
``flywheel build`` uses. :meth:`~BuildahImages.ensure` asks the registry for
the tag first (:mod:`.registry`) and, when pushing is not asked for, buildah's
own storage too; it builds only when neither has it: the build context of
:mod:`.dockerfile` unpacked into a temporary directory, then ``buildah
--storage-driver vfs build --isolation chroot -t <ref> -f <Dockerfile>
<context>`` and, with ``push``, ``buildah push --tls-verify=<not insecure>
--digestfile … <ref> docker://<ref>``, whose digest file names the pushed
manifest. vfs storage and chroot isolation need neither overlay mounts nor
user namespaces, so it works inside an unprivileged container too. buildah's
own configuration (``CONTAINERS_STORAGE_CONF``, ``REGISTRY_AUTH_FILE``) is
left to it; ``auth_file`` passes a docker config to both the registry check
and the push.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.backends.images import BuiltImage, ImageError, ImageRequest
from controller.backends.images.dockerfile import unpack
from controller.backends.images.registry import Registries, Registry, read_docker_config
from controller.specs.types import ImagesSpec

__all__ = ["BuildahImages"]

LOG_TAIL_LINES = 20


class BuildahImages:
    """Builds missing images with the local ``buildah``; pushes them when ``push`` is set."""

    def __init__(
        self,
        *,
        push: bool,
        auth_file: Path | None = None,
        buildah: str | None = None,
        registry: Callable[[ImagesSpec], Registry] | None = None,
        logs_dir: Path | None = None,
    ) -> None:
        found = buildah or shutil.which("buildah")
        if found is None:
            raise ImageError(
                "buildah is not installed (it builds images on this machine; apt-get install buildah)"
            )
        self.buildah = found
        self.push = push
        self.auth_file = auth_file
        self.logs_dir = logs_dir
        self._registries = Registries(read_docker_config(auth_file) if auth_file else None)
        self._registry = registry or self._registries.get

    def close(self) -> None:
        self._registries.close()

    def manifests(self, request: ImageRequest) -> list[dict[str, Any]]:
        """Nothing: a local build creates no cluster objects."""
        return []

    def ensure(self, request: ImageRequest) -> BuiltImage:
        """The registry's image when it has the tag (or, without push, the local one); else built now."""
        name = f"{request.images.repository.strip('/')}/{request.model}"
        registry = self._registry(request.images)
        digest = registry.digest(name, request.tag)
        if digest is not None:
            return BuiltImage(reference=request.reference, digest=digest, built=False)
        if not self.push and self._has_locally(request.reference):
            return BuiltImage(reference=request.reference, digest=None, built=False)
        with tempfile.TemporaryDirectory(prefix="flywheel-build-") as scratch:
            context = Path(scratch) / "context"
            dockerfile = unpack(request, context)
            self._buildah(
                request,
                "build",
                [
                    "build",
                    "--isolation",
                    "chroot",
                    "-t",
                    request.reference,
                    "-f",
                    str(dockerfile),
                    str(context),
                ],
            )
            if not self.push:
                return BuiltImage(reference=request.reference, digest=None, built=True)
            digest_file = Path(scratch) / "digest"
            push = ["push", f"--tls-verify={'false' if request.images.insecure else 'true'}"]
            if self.auth_file is not None:
                push += ["--authfile", str(self.auth_file)]
            push += ["--digestfile", str(digest_file), request.reference, f"docker://{request.reference}"]
            self._buildah(request, "push", push)
            pushed = digest_file.read_text().strip() if digest_file.is_file() else ""
        return BuiltImage(
            reference=request.reference, digest=pushed or registry.digest(name, request.tag), built=True
        )

    def _has_locally(self, reference: str) -> bool:
        found = subprocess.run(
            [self.buildah, "--storage-driver", "vfs", "inspect", "--type", "image", reference],
            capture_output=True,
            check=False,
        )
        return found.returncode == 0

    def _buildah(self, request: ImageRequest, what: str, args: list[str]) -> None:
        done = subprocess.run(
            [self.buildah, "--storage-driver", "vfs", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        where = ""
        if self.logs_dir is not None:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            log = self.logs_dir / f"{request.model}-{request.tag[:12]}-{what}.log"
            log.write_text(done.stdout, encoding="utf-8")
            where = f" (log: {log})"
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-LOG_TAIL_LINES:])
            raise ImageError(
                f"image {request.reference}: buildah {what} exited {done.returncode}{where}\n{tail}"
            )
