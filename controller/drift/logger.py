"""The cluster's drift path: where KServe's inference logger posts a served model's requests and answers.

In the cluster home a version is served by a KServe InferenceService; its
``spec.predictor.logger`` (mode ``all``) posts every request and answer as a
CloudEvent (``org.kubeflow.serving.inference.request`` / ``.response``, the
pair sharing one ``ce-id``) to Flywheel's webhook service at
``POST /drift/{model}/{environment}``, which verifies the token and queues
them (:mod:`webhooks.drift`). The KServe serving backend renders the logger
with :func:`predictor_logger`; nothing here talks to the world.

KServe's logger sends no headers of its own choosing, so the token travels in
the logger's URL (``?token=``); other senders may use the
``X-Flywheel-Drift-Token`` header instead.
"""

from __future__ import annotations

import urllib.parse

__all__ = [
    "DRIFT_EVENT_KIND",
    "DRIFT_EVENT_SOURCE",
    "DRIFT_LOGGER_PATH",
    "REQUEST_EVENT",
    "RESPONSE_EVENT",
    "TOKEN_HEADER",
    "TOKEN_PARAMETER",
    "logger_url",
    "predictor_logger",
]

DRIFT_LOGGER_PATH = "/drift/{model}/{environment}"
DRIFT_EVENT_SOURCE = "kserve"  # the inbox's source of the logger's events
DRIFT_EVENT_KIND = "drift.inference"  # their kind: one request or one answer, by ce-id
REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
TOKEN_PARAMETER = "token"
TOKEN_HEADER = "X-Flywheel-Drift-Token"


def logger_url(base_url: str, *, model: str, environment: str, token: str) -> str:
    """The URL the logger of ``model``'s InferenceService in ``environment`` posts to."""
    path = DRIFT_LOGGER_PATH.format(model=urllib.parse.quote(model, safe=""),
                                    environment=urllib.parse.quote(environment, safe=""))
    query = urllib.parse.urlencode({TOKEN_PARAMETER: token})
    return f"{base_url.rstrip('/')}{path}?{query}"


def predictor_logger(base_url: str, *, model: str, environment: str, token: str) -> dict[str, str]:
    """``spec.predictor.logger`` of an InferenceService: every request and answer to the webhook service."""
    return {"mode": "all", "url": logger_url(base_url, model=model, environment=environment, token=token)}
