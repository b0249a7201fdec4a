"""The run cache key changes with every input that can change a result, and with nothing else."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.engine.identity import RunInputs

pytestmark = pytest.mark.unit


def _inputs() -> RunInputs:
    return RunInputs(
        model="iris",
        source_tree="a" * 40,
        requirements_blob="b" * 40,
        params={"C": 1.0},
        pipeline=({"name": "train", "run": "python train.py", "needs": [], "env": []},),
        data_fingerprints={"iris": "sha256:1"},
        environment_hash="e" * 64,
    )


def test_same_inputs_same_key() -> None:
    assert _inputs().cache_key == _inputs().cache_key


def test_each_input_changes_the_key() -> None:
    base = _inputs()
    variants = [
        replace(base, source_tree="c" * 40),
        replace(base, requirements_blob="d" * 40),
        replace(base, params={"C": 0.5}),
        replace(base, pipeline=({"name": "train", "run": "python train2.py", "needs": [], "env": []},)),
        replace(base, data_fingerprints={"iris": "sha256:2"}),
        replace(base, environment_hash="f" * 64),
    ]
    keys = {v.cache_key for v in variants}
    assert base.cache_key not in keys
    assert len(keys) == len(variants)


def test_param_order_does_not_matter() -> None:
    a = replace(_inputs(), params={"a": 1, "b": 2})
    b = replace(_inputs(), params={"b": 2, "a": 1})
    assert a.cache_key == b.cache_key
