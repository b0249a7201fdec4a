"""Flywheel: GitOps continuous training.

Layers, from the outside in: ``controller.cli`` (entry points) calls
``controller.engine`` (reconcile, rollout, triggers), which calls
``controller.backends`` (pipelines, serving, metrics, forge, notify, store,
git), which use ``controller.specs`` (the spec language and plain data types).
Only backend modules talk to the outside world.
"""

__version__ = "0.1.0"
