"""Isolated virtualenvs for the embedded home, one per environment hash.

:class:`VenvCache` builds each :class:`~controller.backends.python_env.PythonEnvironment`
once under a root directory, named by its hash, and hands out the same path
afterwards. The local pipeline runner calls it before a run, and local
serving to build a model server's environment (the model's own, extended with
the server's packages); the composition root gives both the same cache.

How a build stays safe:

* it happens in a temporary directory beside the final one, which is renamed
  into place (one atomic ``rename``) only after every package installed, with
  a marker file inside recording the environment; so a venv path either does
  not exist or is complete, and checking for it is one ``stat`` of the marker;
* an ``flock`` on a per-environment lock file keeps two processes from
  building the same environment at once (the second waits, then reuses);
* a failed build removes its temporary directory and raises
  :class:`VenvBuildError` with the tail of the installer's output.

``uv`` (``uv venv --relocatable`` + ``uv pip install``) is used when it can be
found on PATH or as the ``uv`` Python package; otherwise the standard
``venv`` module and ``pip``, whose absolute script paths are rewritten after
the rename. uv's download cache makes rebuilding a known environment fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from controller.backends.python_env import PythonEnvironment
from controller.specs.types import Model

__all__ = [
    "MARKER",
    "VENV_PREFIX",
    "VenvBuildError",
    "VenvCache",
    "find_uv",
    "model_environment",
]

MARKER = ".flywheel-env.json"
"""Written last into a complete virtualenv; its presence is what "built" means."""

VENV_PREFIX = "env-"
"""A virtualenv's directory is this prefix and the start of its environment's hash."""

_OUTPUT_TAIL_LINES = 40


class VenvBuildError(RuntimeError):
    """A virtualenv could not be built; the message ends with the installer's output tail."""


def model_environment(model: Model, source_dir: Path) -> PythonEnvironment:
    """The environment of ``model`` whose code was exported to ``source_dir``.

    ``Source.requirements`` is repo-relative, like ``Source.path``; the file is
    looked up at the same place relative to the exported directory.
    """
    relative = os.path.relpath(model.source.requirements, model.source.path or ".")
    path = (source_dir / relative).resolve()
    if relative.startswith(".."):
        raise VenvBuildError(
            f"requirements file {model.source.requirements} lies outside the model's source "
            f"directory {model.source.path}"
        )
    try:
        content = path.read_text()
    except OSError as exc:
        raise VenvBuildError(f"cannot read requirements file {model.source.requirements}: {exc}") from exc
    return PythonEnvironment(requirements=content, python=model.source.python)


def find_uv() -> str | None:
    """The uv executable: on PATH, else the one shipped by the ``uv`` Python package."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        return str(find_uv_bin())
    except (FileNotFoundError, OSError):
        return None


class VenvCache:
    """Virtualenvs under ``root``, one directory per environment hash, built once."""

    def __init__(
        self,
        root: Path,
        *,
        use_uv: bool | None = None,
        find_links: Sequence[Path] = (),
    ) -> None:
        self.root = root
        self.find_links = tuple(find_links)
        self._uv = find_uv() if use_uv is not False else None
        if use_uv and self._uv is None:
            raise VenvBuildError("uv was asked for but is neither on PATH nor importable")

    def path_for(self, spec: PythonEnvironment) -> Path:
        # A prefix of the hash keeps script shebangs well under the kernel's 127-byte limit;
        # the full hash is in the marker.
        return self.root / f"{VENV_PREFIX}{spec.hash[:24]}"

    def is_built(self, spec: PythonEnvironment) -> bool:
        return (self.path_for(spec) / MARKER).is_file()

    def ensure(self, spec: PythonEnvironment) -> Path:
        """The virtualenv for ``spec``, built now if it does not exist yet."""
        final = self.path_for(spec)
        if (final / MARKER).is_file():
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(final.name):
            if (final / MARKER).is_file():  # built by another process while we waited
                return final
            for stale in self.root.glob(f".tmp-{final.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():  # no marker: left by something that is not us; not trusted
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=self.root))
            try:
                self._build(spec, tmp, final)
                (tmp / MARKER).write_text(
                    json.dumps(
                        {
                            "hash": spec.hash,
                            "python": spec.python,
                            "platform": spec.platform,
                            "requirements": list(spec.canonical_requirements()),
                            "installer": "uv" if self._uv else "pip",
                        },
                        indent=2,
                    )
                )
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final

    # ------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{name}.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _build(self, spec: PythonEnvironment, tmp: Path, final: Path) -> None:
        requirements = spec.canonical_requirements()
        req_file = tmp.parent / f"{tmp.name}.requirements.txt"
        req_file.write_text("".join(f"{line}\n" for line in requirements))
        try:
            if self._uv:
                self._build_with_uv(self._uv, spec, tmp, final, req_file, bool(requirements))
            else:
                self._build_with_pip(spec, tmp, final, req_file, bool(requirements))
        finally:
            req_file.unlink(missing_ok=True)

    def _find_links_args(self) -> list[str]:
        return [arg for path in self.find_links for arg in ("--find-links", str(path))]

    def _build_with_uv(
        self, uv: str, spec: PythonEnvironment, tmp: Path, final: Path, req_file: Path, any_req: bool
    ) -> None:
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
        env.pop("VIRTUAL_ENV", None)
        create = [
            uv,
            "venv",
            "--no-config",
            "--quiet",
            "--relocatable",
            "--allow-existing",
            "--prompt",
            final.name,
        ]
        found = _run([*create, "--python", spec.python, str(tmp)], env=env)
        if found.returncode != 0:
            fallback = _current_interpreter_if(spec.python)
            if fallback is None:
                raise VenvBuildError(
                    f"Python {spec.python} is not available on this machine (the controller runs "
                    f"{_current_version()}); install it or change source.python\n{_tail(found.stdout)}"
                )
            _check(_run([*create, "--python", fallback, str(tmp)], env=env), "creating the virtualenv")
        if any_req:
            install = [uv, "pip", "install", "--no-config", "--python", str(tmp / "bin" / "python")]
            _check(
                _run([*install, *self._find_links_args(), "-r", str(req_file)], env=env),
                "installing the requirements",
            )

    def _build_with_pip(
        self, spec: PythonEnvironment, tmp: Path, final: Path, req_file: Path, any_req: bool
    ) -> None:
        wanted = ".".join(spec.python.split(".")[:2])
        interpreter = _current_interpreter_if(spec.python) or shutil.which(f"python{wanted}")
        if interpreter is None:
            raise VenvBuildError(
                f"Python {spec.python} is not available on this machine (the controller runs "
                f"{_current_version()}); install it or change source.python"
            )
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        _check(
            _run([interpreter, "-m", "venv", "--prompt", final.name, str(tmp)], env=env),
            "creating the virtualenv",
        )
        if any_req:
            pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
            _check(
                _run([*pip, *self._find_links_args(), "-r", str(req_file)], env=env),
                "installing the requirements",
            )
        _retarget_scripts(tmp, final)


def _current_version() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


def _current_interpreter_if(requested: str) -> str | None:
    """The controller's own interpreter, when its major.minor is the one requested."""
    wanted = requested.strip().split(".")[:2]
    have = [str(sys.version_info.major), str(sys.version_info.minor)]
    if wanted != have:
        return None
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(base)


def _run(cmd: list[str], *, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise VenvBuildError(f"cannot run {cmd[0]}: {exc}") from exc


def _check(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise VenvBuildError(f"{what} failed (exit {done.returncode}):\n{_tail(done.stdout)}")


def _tail(output: str) -> str:
    return "\n".join(output.rstrip().splitlines()[-_OUTPUT_TAIL_LINES:])


def _retarget_scripts(tmp: Path, final: Path) -> None:
    """Point the absolute paths that ``venv``/``pip`` wrote into bin/ at the final location."""
    old, new = str(tmp).encode(), str(final).encode()
    for script in (tmp / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if old in data and b"\0" not in data[:1024]:
            script.write_bytes(data.replace(old, new))
