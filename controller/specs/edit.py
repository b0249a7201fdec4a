"""Edits of a model spec that a retrain commits: data pins and annotations, the rest of the file kept.

Called by the retrain proposer (:mod:`controller.engine.retrain`) to write
the reason for a retrain into the model's spec on ``flywheel/retrain/<model>``:
each changed data input's new ``digest`` or ``version``, and annotations
under ``metadata.annotations`` saying why. The file is edited with
ruamel.yaml's round trip, so comments, key order and quoting stay as the
author wrote them and the diff a reviewer reads shows only what changed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

__all__ = ["SpecEditError", "edit_model_spec"]


class SpecEditError(ValueError):
    """The spec is not a Model document with the data inputs the edit names."""


def _yaml() -> YAML:
    yaml = YAML()  # round trip
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # never fold a long line the author wrote on one
    return yaml


def edit_model_spec(
    text: str,
    *,
    pins: Mapping[str, tuple[str, str]] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """``text`` with ``pins`` (data input name -> (``digest`` or ``version``, value)) and ``annotations`` set.

    A pin replaces the other pin field of that input (a ``digest`` drops a
    stale ``version`` and the other way round), since one input is named by
    one of them. Raises :class:`SpecEditError` for a document that is not a
    model or lacks a named input.
    """
    yaml = _yaml()
    doc: Any = yaml.load(text)
    if not isinstance(doc, CommentedMap) or not isinstance(doc.get("spec"), CommentedMap):
        raise SpecEditError("not a model spec (no spec mapping)")
    for name, (field, value) in (pins or {}).items():
        item = next((d for d in doc["spec"].get("data") or () if d.get("name") == name), None)
        if item is None:
            raise SpecEditError(f"no data input {name!r} in the spec")
        item.pop("version" if field == "digest" else "digest", None)
        item[field] = value
    if annotations:
        metadata = doc.get("metadata")
        if not isinstance(metadata, CommentedMap):
            raise SpecEditError("not a model spec (no metadata mapping)")
        existing = metadata.get("annotations")
        if not isinstance(existing, CommentedMap):
            existing = CommentedMap()
            metadata["annotations"] = existing
        for key, value in annotations.items():
            existing[key] = value
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()
