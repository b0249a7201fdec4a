"""How the controller reaches a Kubernetes API: the kubeconfig FLYWHEEL_KUBECONFIG names, else the pod's own.

The image builds (:mod:`controller.backends.images.buildkit`), KServe's
serving (:mod:`controller.cluster_serving`) and the leader's Lease
(:mod:`controller.cli.leader`) all take their ``kubernetes`` client from
:func:`kube_client`, so one setting points all of them at one cluster.
"""

from __future__ import annotations

from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

__all__ = ["KubeConfigError", "kube_client"]


class KubeConfigError(RuntimeError):
    """No Kubernetes configuration could be read; the message says which and why, in one line."""


def kube_client(kubeconfig: Path | None) -> k8s.ApiClient:
    """A ``kubernetes`` client from ``kubeconfig`` (its current context), else the in-cluster config."""
    configuration = k8s.Configuration()
    try:
        if kubeconfig is not None:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), client_configuration=configuration
            )
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except (k8s_config.ConfigException, OSError, ValueError) as error:
        where = f"kubeconfig {kubeconfig}" if kubeconfig is not None else "the in-cluster config"
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise KubeConfigError(f"{where}: {detail}") from None
    return k8s.ApiClient(configuration)
