"""Helpers for model code: this directory goes on a pipeline step's ``PYTHONPATH``.

Each module here is importable at top level by a step (``import flywheel_reference``)
and uses the standard library only.
"""
