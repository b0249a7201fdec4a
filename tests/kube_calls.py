"""What Flywheel's code asks of the Kubernetes API, read from its source: (API group, resource, verb) triples.

``tests/test_deploy.py`` compares them, both ways, with the Role in ``deploy/``. Two kinds of call are
found in the syntax tree of every module under ``controller/``:

* a method of one of the ``kubernetes`` client's API classes (``create_namespaced_job``,
  ``read_namespaced_pod_log``, ``patch_namespaced_custom_object``...). Its resource is read from the
  client itself (the request path its method sends, e.g. ``/apis/batch/v1/namespaces/{namespace}/jobs``),
  its verb from the method's name (create, read or get -> get, list, patch, replace -> update, delete,
  delete_collection -> deletecollection); a ``list_*`` method handed to ``watch.Watch().stream`` (or
  called with ``watch=True``) is a ``watch``. A path's ``{group}`` and ``{plural}`` (custom objects) are
  the call's arguments, as string literals or string constants of the module or imported from the package.
* a method of the ``argo-workflows`` SDK's ``WorkflowServiceApi``. The Argo Server, in its ``client``
  auth mode, makes the Kubernetes calls with the caller's token; :data:`ARGO_SERVER` says which calls
  each endpoint makes (argo-workflows' ``server/workflow`` and ``workflow/util`` packages, v3.7).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from argo_workflows.api.workflow_service_api import WorkflowServiceApi
from kubernetes import client

Permission = tuple[str, str, str]  # (API group, resource[/subresource], verb)

ARGO = "argoproj.io"
# What the Argo Server asks of Kubernetes for each WorkflowServiceApi call, with the caller's identity.
ARGO_SERVER: dict[str, tuple[Permission, ...]] = {
    "create_workflow": ((ARGO, "workflows", "create"),),
    "get_workflow": ((ARGO, "workflows", "get"),),
    "list_workflows": ((ARGO, "workflows", "list"),),
    "watch_workflows": ((ARGO, "workflows", "watch"),),
    "delete_workflow": ((ARGO, "workflows", "delete"),),
    # reads the Workflow, then sets spec.shutdown with a merge patch
    "stop_workflow": ((ARGO, "workflows", "get"), (ARGO, "workflows", "patch")),
    "terminate_workflow": ((ARGO, "workflows", "get"), (ARGO, "workflows", "patch")),
    # reads the Workflow, lists its pods by label, streams each pod's log (no follow: no watch)
    "pod_logs": ((ARGO, "workflows", "get"), ("", "pods", "list"), ("", "pods/log", "get")),
    "workflow_logs": ((ARGO, "workflows", "get"), ("", "pods", "list"), ("", "pods/log", "get")),
}

_VERBS = {
    "create": "create",
    "read": "get",
    "get": "get",  # the custom objects API reads with get_*
    "list": "list",
    "patch": "patch",
    "replace": "update",
    "delete_collection": "deletecollection",
    "delete": "delete",
}
_PATH = re.compile(r"""['"](/apis?/[^'"]*)['"]""")


class UnknownCall(Exception):
    """A call whose resource cannot be told from the source; the message names the file and line."""


@dataclass(frozen=True)
class _ClientMethod:
    path: str
    module: str  # the API class's module, e.g. kubernetes.client.api.core_v1_api
    name: str

    @functools.cached_property
    def parameters(self) -> tuple[str, ...]:
        """The method's required positional parameters, without self (imports its API class)."""
        module = importlib.import_module(self.module)
        cls = next(v for k, v in vars(module).items() if k.endswith("Api") and inspect.isclass(v))
        signature = inspect.signature(getattr(cls, self.name))
        return tuple(
            p.name
            for p in list(signature.parameters.values())[1:]
            if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
        )


@functools.cache
def _client_methods() -> dict[str, _ClientMethod]:
    """Every public method of the ``kubernetes`` client's API classes that sends a request to a path.

    Read from the API modules' text: importing them all would import every model of the client.
    """
    methods: dict[str, _ClientMethod] = {}
    api_dir = Path(client.__file__).parent / "api"
    for path in sorted(api_dir.glob("*_api.py")):
        module = f"kubernetes.client.api.{path.stem}"
        for name, request_path in _method_paths(path.read_text()).items():
            methods[name] = _ClientMethod(path=request_path, module=module, name=name)
    return methods


_DEF = re.compile(r"def (?:_(\w+)_serialize|(\w+)_with_http_info)\(")


def _method_paths(source: str) -> dict[str, str]:
    """Each method's request path in an API class's module: the first path after its serializer (newer
    clients) or its ``_with_http_info`` (older ones)."""
    paths: dict[str, str] = {}
    for match in _DEF.finditer(source):
        name = match.group(1) or match.group(2)
        found = _PATH.search(source, match.end())
        if found and (match.group(1) or name not in paths):
            paths[name] = found.group(1)
    return paths


def verb_of(method: str) -> str:
    """The RBAC verb of a client method's name: ``read_namespaced_lease`` -> ``get``."""
    for prefix, verb in _VERBS.items():
        if method.startswith(prefix + "_"):
            return verb
    raise UnknownCall(f"{method}: no RBAC verb for this kind of method")


def resource_of(path: str, arguments: dict[str, str]) -> tuple[str, str]:
    """(group, resource[/subresource]) of a request path; ``{group}``/``{plural}`` from ``arguments``."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    if rest[:2] == ["namespaces", "{namespace}"]:
        rest = rest[2:]
    names = [part for part in rest if part not in ("{name}", "{path}")]

    def fill(text: str) -> str:
        if text.startswith("{") and text.endswith("}"):
            key = text[1:-1]
            if key not in arguments:
                raise UnknownCall(f"{path}: the call does not say its {key}")
            return arguments[key]
        return text

    return fill(group), "/".join(fill(part) for part in names)


def _constants(tree: ast.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]  # type: ignore[union-attr]
            out.update((t.id, value.value) for t in targets if isinstance(t, ast.Name))
    return out


def _string(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def calls_in_source(
    source: str, where: str, *, package: str = "", modules: Mapping[str, Mapping[str, str]] | None = None
) -> Iterator[Permission]:
    """The permissions the code in ``source`` (a module at ``where``, in ``package``) needs.

    ``modules`` (dotted name -> its module-level string constants) resolves constants the module
    imports by name (``from .kserve import GROUP``).
    """
    tree = ast.parse(source, filename=where)
    constants = _imported(tree, package, modules or {}) | _constants(tree)
    parents = _parents(tree)
    methods = _client_methods()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if node.attr in ARGO_SERVER:
            yield from ARGO_SERVER[node.attr]
            continue
        if node.attr in _argo_methods():
            raise UnknownCall(
                f"{where}:{node.lineno}: {node.attr}: say in ARGO_SERVER what the Argo Server does"
            )
        method = methods.get(node.attr)
        if method is None:
            continue
        parent = parents.get(node)
        call = parent if isinstance(parent, ast.Call) and parent.func is node else None
        streamed = (
            isinstance(parent, ast.Call)
            and parent.func is not node
            and isinstance(parent.func, ast.Attribute)
            and parent.func.attr == "stream"
        )
        arguments: dict[str, str] = {}
        if call is not None:
            for name, arg in zip(method.parameters, call.args, strict=False):
                text = _string(arg, constants)
                if text is not None:
                    arguments[name] = text
            for keyword in call.keywords:
                text = _string(keyword.value, constants) if keyword.arg else None
                if keyword.arg and text is not None:
                    arguments[keyword.arg] = text
            watched = any(
                k.arg == "watch" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in call.keywords
            )
        else:
            watched = False
        try:
            group, resource = resource_of(method.path, arguments)
            verb = "watch" if streamed or watched else verb_of(node.attr)
        except UnknownCall as exc:
            raise UnknownCall(f"{where}:{node.lineno}: {node.attr}: {exc}") from None
        yield (group, resource, verb)


@functools.cache
def _argo_methods() -> frozenset[str]:
    return frozenset(name for name in dir(WorkflowServiceApi) if not name.startswith("_"))


def _imported(tree: ast.Module, package: str, modules: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The string constants ``tree`` imports by name from the ``modules`` given."""
    out: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        base = package.split(".")
        origin = node.module or ""
        if node.level:
            parent = base[: len(base) - (node.level - 1)]
            origin = ".".join([*parent, origin] if origin else parent)
        for alias in node.names:
            value = modules.get(origin, {}).get(alias.name)
            if value is not None:
                out[alias.asname or alias.name] = value
    return out


def calls_in_tree(root: Path, *, skip: Iterable[str] = ()) -> set[Permission]:
    """The permissions every module under ``root`` (a package) needs, less modules whose path contains a
    ``skip``."""
    sources: dict[str, tuple[Path, str, str]] = {}  # dotted name -> (path, its package, source)
    for path in sorted(root.rglob("*.py")):
        if any(part in path.as_posix() for part in skip):
            continue
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        package = ".".join(parts if is_package else parts[:-1])
        sources[".".join(parts)] = (path, package, path.read_text())
    modules = {name: _constants(ast.parse(text)) for name, (_, _, text) in sources.items()}
    found: set[Permission] = set()
    for path, package, text in sources.values():
        found.update(calls_in_source(text, str(path), package=package, modules=modules))
    return found
