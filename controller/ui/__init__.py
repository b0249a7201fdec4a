"""The web dashboard: pages and a JSON API over the store (``flywheel ui``, and ``flywheel serve`` at /ui).

An entry point like the webhook service: it reads the store's protocols
and the engine's status views (:mod:`controller.engine.status`), and nothing
but the command line imports it. :func:`create_app` builds the Starlette app
(:mod:`controller.ui.app`); the facts it shows are read in
:mod:`controller.ui.facts`, shaped by :mod:`controller.ui.schemas` and drawn
by :mod:`controller.ui.charts`.
"""

from __future__ import annotations

from controller.ui.app import API_PREFIX, create_app
from controller.ui.facts import HistoryReads, LinkMaker, ModelReads

__all__ = ["API_PREFIX", "HistoryReads", "LinkMaker", "ModelReads", "create_app"]
