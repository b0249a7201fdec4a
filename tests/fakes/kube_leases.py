"""``coordination.k8s.io/v1`` Leases for the stand-in Kubernetes API (:class:`tests.fakes.kube_api.FakeKube`).

:class:`FakeLeases` is one of :attr:`FakeKube.plugins`: GET, POST (create: 409
``AlreadyExists`` when the Lease exists) and PUT (replace: 409 ``Conflict``
when the body's ``metadata.resourceVersion`` is not the stored one, as the
API server answers an optimistic-concurrency loss) of
``/apis/coordination.k8s.io/v1/namespaces/<ns>/leases[/<name>]``. Each write
gets a new ``resourceVersion``. ``down`` makes every Lease request fail with
503, as an API server that cannot be reached would for the controller; the
tests of :mod:`controller.backends.leader.lease` use it, and ``before_put``
to let a rival write first.
"""

from __future__ import annotations

import copy
import itertools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.kube_api import FakeKube

__all__ = ["FakeLeases", "with_leases"]

_LEASES = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")


def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    return code, {**body, "message": message, "reason": reason, "code": code}


@dataclass
class FakeLeases:
    leases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    down: bool = False
    before_put: Callable[[dict[str, Any]], None] | None = None  # may change the stored Lease: a rival's write
    writes: int = 0
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(100))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spec(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """The stored Lease's spec (a copy)."""
        return copy.deepcopy(self.leases[(namespace, name)]["spec"])

    def handles(self, path: str) -> bool:
        return _LEASES.match(path) is not None

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        match = _LEASES.match(path)
        assert match is not None  # asked only for what it handles
        if self.down:
            return _status(503, "ServiceUnavailable", "the API server is down")
        namespace, name = match.groups()
        with self._lock:
            if method == "GET" and name is not None:
                lease = self.leases.get((namespace, name))
                if lease is None:
                    return _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                return 200, lease
            if method == "POST" and name is None:
                key = (namespace, body["metadata"]["name"])
                if key in self.leases:
                    return _status(
                        409, "AlreadyExists", f'leases.coordination.k8s.io "{key[1]}" already exists'
                    )
                return 201, self._store(key, body)
            if method == "PUT" and name is not None:
                key = (namespace, name)
                if self.before_put is not None and key in self.leases:
                    self.before_put(self.leases[key])
                current = self.leases.get(key)
                if current is None:
                    return _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                given = body.get("metadata", {}).get("resourceVersion")
                if given != current["metadata"]["resourceVersion"]:
                    return _status(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the object '
                        "has been modified; please apply your changes to the latest version and try again",
                    )
                return 200, self._store(key, body, uid=current["metadata"]["uid"])
        return _status(405, "MethodNotAllowed", f"{method} {path} is not served")

    def bump(self, lease: dict[str, Any]) -> None:
        """Give ``lease`` a new ``resourceVersion``, as another replica's write would (for ``before_put``)."""
        lease["metadata"]["resourceVersion"] = str(next(self._versions))

    def _store(self, key: tuple[str, str], body: dict[str, Any], *, uid: str | None = None) -> dict[str, Any]:
        version = str(next(self._versions))
        lease = copy.deepcopy(body)
        lease.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
        lease["metadata"].update(
            name=key[1], namespace=key[0], resourceVersion=version, uid=uid or f"lease-uid-{version}"
        )
        self.leases[key] = lease
        self.writes += 1
        return copy.deepcopy(lease)


def with_leases(kube: FakeKube) -> FakeLeases:
    """Serve Leases on ``kube``; the Leases' state."""
    leases = FakeLeases()
    kube.plugins.append(leases)
    return leases
