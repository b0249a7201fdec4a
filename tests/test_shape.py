"""The size limits the code keeps to (issue 12): narrow interfaces, modules one can read whole.

Pins down: no :class:`~typing.Protocol` defined in ``controller/`` or
``webhooks/`` has more than 12 methods, those it inherits from other
protocols included (a part needing more combines narrow ones, or takes
several); and no module there is over 600 lines, apart from the ones listed
in :data:`WAITING` with the reason they still are (that list must shrink: a
module on it that is no longer over fails the test until it is taken off).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import pytest

import controller
import webhooks

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
MAX_METHODS = 12
MAX_LINES = 600
# The model code the scaffold copies into a new repository: not Flywheel's own modules.
NOT_IMPORTED = ("controller.scaffold.template",)


def _modules() -> list[ModuleType]:
    found = []
    for package in (controller, webhooks):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if not info.name.startswith(NOT_IMPORTED):
                found.append(importlib.import_module(info.name))
    return found


def _protocols() -> dict[str, type]:
    return {
        f"{module.__name__}.{name}": value
        for module in [controller, webhooks, *_modules()]
        for name, value in vars(module).items()
        if inspect.isclass(value) and value.__module__ == module.__name__ and _is_protocol(value)
    }


def _is_protocol(cls: type) -> bool:
    return cls is not Protocol and bool(cls.__dict__.get("_is_protocol", False))


def methods(protocol: type) -> set[str]:
    """The methods (and properties) ``protocol`` declares or inherits from the protocols it extends."""
    names = set()
    for klass in protocol.__mro__:
        if not _is_protocol(klass):
            continue
        for name, member in vars(klass).items():
            function: Any = member.fget if isinstance(member, property) else member
            function = getattr(function, "__func__", function)  # a classmethod's or staticmethod's
            if inspect.isfunction(function) and function.__module__ != "typing":  # not typing's own
                names.add(name)
    return names


def test_methods_counts_inherited_ones_and_not_typings_own() -> None:
    class Small(Protocol):
        def one(self) -> None: ...

        @property
        def two(self) -> int: ...

    class Bigger(Small, Protocol):
        def three(self) -> None: ...

    class Concrete(Bigger):
        def four(self) -> None: ...

    assert methods(Small) == {"one", "two"}
    assert methods(Bigger) == {"one", "two", "three"}
    assert not _is_protocol(Concrete)


def test_the_walk_finds_the_protocols_of_every_layer() -> None:
    found = _protocols()
    for name in (
        "controller.backends.store.runs.RunRecords",
        "controller.backends.serving.ServingBackend",
        "controller.engine.commands.CommandRecords",
        "controller.app.Poller",
    ):
        assert name in found


def test_no_protocol_has_more_than_twelve_methods() -> None:
    too_big = {
        name: sorted(methods(protocol))
        for name, protocol in _protocols().items()
        if len(methods(protocol)) > MAX_METHODS
    }
    assert too_big == {}


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("package", ["controller", "webhooks"])
def test_no_module_is_over_six_hundred_lines(package: str) -> None:
    over = {
        path.relative_to(ROOT).as_posix(): _lines(path)
        for path in sorted((ROOT / package).rglob("*.py"))
        if _lines(path) > MAX_LINES
    }
    assert over == {}
