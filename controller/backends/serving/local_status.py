"""What serves an environment on the embedded home, as a record: ``flywheel serving ls`` prints it.

:class:`~controller.backends.serving.local.LocalServing` builds these from
its router and server records (``status``, ``start``, ``stop``);
:mod:`controller.cli.serving` prints them as a table or JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["EnvironmentServing", "ServerState"]


@dataclass(frozen=True, kw_only=True)
class ServerState:
    """One recorded model server: what it serves, where, whether it runs, its weight in the routes."""

    model: str
    version: str
    url: str
    metrics_url: str  # the server's own Prometheus endpoint
    pid: int | None
    running: bool
    weight: int | None  # None: not in the routes


@dataclass(frozen=True, kw_only=True)
class EnvironmentServing:
    """What serves one environment on the embedded home, as ``flywheel serving ls`` shows it."""

    environment: str
    port: int | None  # the router's port (None: no router started yet)
    router_pid: int | None  # None: not running
    routes: Mapping[str, Mapping[str, int]]  # model -> version -> percent
    servers: tuple[ServerState, ...]

    @property
    def endpoint(self) -> str | None:
        return None if self.port is None else f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.router_pid is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "endpoint": self.endpoint,
            "port": self.port,
            "router": {"running": self.running, "pid": self.router_pid},
            "models": {
                model: {
                    "url": f"{self.endpoint}/v2/models/{model}" if self.endpoint else None,
                    "weights": dict(versions),
                }
                for model, versions in sorted(self.routes.items())
            },
            "servers": [dataclasses.asdict(server) for server in self.servers],
        }
