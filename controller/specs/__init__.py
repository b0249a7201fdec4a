"""The spec language: loading, validating and typing Model, Policy and Environment documents.

Callers read specs through these names only:

- :func:`load_catalog` / :func:`load_tree`: every spec of one commit (bytes in
  memory) or of a working tree, parsed and checked, as a :class:`Catalog`.
- :func:`parse_document` + :func:`check_catalog`: the same in two steps, so
  the per-file step can be cached by blob id.
- :func:`is_spec_path`: which repository paths hold specs.
- :func:`schemas`: the JSON Schemas (the one definition of validity).
"""

from controller.specs.durations import format_duration, parse_duration
from controller.specs.loader import MAX_BYTES
from controller.specs.parse import ParsedFile, Reference, parse_document
from controller.specs.paths import is_spec_path, spec_kind
from controller.specs.schema import schemas
from controller.specs.tree import find_spec_files, load_tree
from controller.specs.types import (
    API_VERSION,
    Analysis,
    AnalysisCheck,
    ApprovalRule,
    CanaryStep,
    Catalog,
    DataInput,
    Direction,
    Drift,
    Environment,
    Gate,
    Identity,
    Kind,
    Location,
    Metric,
    Model,
    Notification,
    Policy,
    Resources,
    Rollout,
    Serving,
    Source,
    SpecError,
    Stage,
    Step,
    Schedule,
    Triggers,
)
from controller.specs.validate import check_catalog, load_catalog, summary

__all__ = [
    "API_VERSION",
    "MAX_BYTES",
    "Analysis",
    "AnalysisCheck",
    "ApprovalRule",
    "CanaryStep",
    "Catalog",
    "DataInput",
    "Direction",
    "Drift",
    "Environment",
    "Gate",
    "Identity",
    "Kind",
    "Location",
    "Metric",
    "Model",
    "Notification",
    "ParsedFile",
    "Policy",
    "Reference",
    "Resources",
    "Rollout",
    "Serving",
    "Source",
    "SpecError",
    "Stage",
    "Step",
    "Schedule",
    "Triggers",
    "check_catalog",
    "find_spec_files",
    "format_duration",
    "is_spec_path",
    "load_catalog",
    "load_tree",
    "parse_document",
    "parse_duration",
    "schemas",
    "spec_kind",
    "summary",
]
