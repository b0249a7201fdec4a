"""Backends: one narrow interface per kind (store, git, pipelines, serving, metrics, forge, notify).

These are the only modules that talk to the outside world.
"""
