"""Which repository paths hold specs, and which kind each holds.

Called by the git reader and the CLI to pick spec files out of a tree, and by
:mod:`controller.specs.parse` to know which kind a file must contain; both
readers word a spec linked from outside the repository the same way.
"""

from __future__ import annotations

from controller.specs.types import Kind

_YAML = (".yaml", ".yml")

LINK_OUT_OF_REPOSITORY = "is a symbolic link that leads out of the repository; it is not followed"
LINK_TO_NOTHING = "is a symbolic link that leads to no file in the repository"
"""The errors for a spec file reached through a symbolic link that leads out of the repository, or nowhere.

Links inside the repository are followed, on disk and in git alike; what a
link out of it points at is never read, so no outside file is shown under a
spec's name.
"""


def spec_kind(path: str) -> Kind | None:
    """The kind a repo-relative POSIX ``path`` must hold, or None if it is not a spec path.

    ``specs/<model>/model.yaml`` (exactly one level under ``specs/``) holds a
    Model, ``policies/*.yaml`` a Policy, ``environments/*.yaml`` an Environment
    (``.yml`` too).
    """
    parts = path.split("/")
    if (
        len(parts) == 3
        and parts[0] == "specs"
        and parts[1]
        and parts[1][0] != "."
        and parts[2] in ("model.yaml", "model.yml")
    ):
        return "Model"
    if len(parts) == 2 and parts[1].endswith(_YAML) and len(parts[1]) > 5 and not parts[1].startswith("."):
        if parts[0] == "policies":
            return "Policy"
        if parts[0] == "environments":
            return "Environment"
    return None


def is_spec_path(path: str) -> bool:
    """Whether a repo-relative POSIX ``path`` is where a spec lives (see :func:`spec_kind`)."""
    return spec_kind(path) is not None
