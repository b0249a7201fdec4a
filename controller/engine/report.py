"""The review report: one Markdown document per proposal and model, updated in place.

The local forge stores it and ``flywheel review show`` prints it; the GitHub
forge posts the same text as a sticky pull-request comment, found again by the
hidden marker on its first line. The renderer is pure: it gets a
:class:`ReviewReport` and returns text that always fits GitHub's 65,536
character limit, folding long parts into ``<details>`` and trimming logs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.engine.gates import GateResult

COMMENT_LIMIT = 65_536
LOG_TAIL_LINES = 40

Outcome = Literal["pending", "running", "success", "failure", "error", "cancelled"]

_OUTCOME_WORDS: dict[str, str] = {
    "pending": "⏳ queued",
    "running": "🔄 training",
    "success": "✅ passed",
    "failure": "❌ failed its gates",
    "error": "💥 errored",
    "cancelled": "⏹ cancelled (superseded by a newer commit)",
}


def marker(model: str) -> str:
    """The hidden first line that identifies a model's sticky report on a proposal."""
    return f"<!-- flywheel:report model={model} -->"


@dataclass(frozen=True)
class StepLine:
    name: str
    status: str  # succeeded | failed | error | skipped | cancelled | cached | running | pending
    duration_seconds: float | None = None
    attempts: int = 1
    log_path: str | None = None
    log_tail: str = ""


@dataclass(frozen=True)
class ReviewReport:
    model: str
    proposal: str
    commit: str
    outcome: Outcome
    summary: str = ""
    run_id: str | None = None
    cache_key: str | None = None
    reused_run: str | None = None  # a cache hit: the run whose result this is
    metrics: Mapping[str, float] = field(default_factory=dict)
    baseline: Mapping[str, float] | None = None
    baseline_version: str | None = None
    rejudged_from: str | None = None  # judged again: what served production when it was judged before
    directions: Mapping[str, str] = field(default_factory=dict)
    primary_metric: str | None = None
    gates: Sequence[GateResult] = ()
    params_changed: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)  # name -> (main, here)
    data_fingerprints: Mapping[str, str] = field(default_factory=dict)
    steps: Sequence[StepLine] = ()
    logs_location: str | None = None
    spec_errors: Sequence[str] = ()
    why: str = ""  # a retrain's reason (Markdown: the data that changed, the tick, the drift table)


def render_report(report: ReviewReport, *, limit: int = COMMENT_LIMIT) -> str:
    """Markdown for ``report`` that is at most ``limit`` characters long."""
    tail_lines = LOG_TAIL_LINES
    while True:
        text = _render(report, tail_lines=tail_lines, fold_everything=tail_lines < LOG_TAIL_LINES)
        if len(text) <= limit:
            return text
        if tail_lines == 0:
            break
        tail_lines //= 2
    note = "\n\n… report truncated to fit the comment limit; the full logs are where it says above.\n"
    return text[: limit - len(note)] + note


def _render(report: ReviewReport, *, tail_lines: int, fold_everything: bool) -> str:
    short = report.commit[:10]
    lines = [
        marker(report.model),
        f"### Flywheel · `{report.model}` · {_OUTCOME_WORDS[report.outcome]}",
        "",
        f"Proposal `{report.proposal}` at commit `{short}`"
        + (f" · run `{report.run_id}`" if report.run_id else ""),
    ]
    if report.summary:
        lines += ["", report.summary]
    if report.why:
        lines += ["", *_section("Why this retrain", [report.why], fold=fold_everything)]
    if report.reused_run:
        reused = f"run `{report.reused_run}`'s result is reused"
        lines += ["", f"♻️ Cache hit: the inputs are unchanged, so {reused}."]

    if report.metrics or report.gates:
        lines += ["", _comparison(report)]

    if report.spec_errors:
        lines += ["", "#### Spec errors", "", "```text", *report.spec_errors, "```"]

    if report.metrics or report.gates:
        lines += ["", *_metrics_table(report)]
    if report.gates:
        lines += ["", "#### Gates", "", "| | metric | rule | result |", "|---|---|---|---|"]
        for gate in report.gates:
            icon = {"passed": "✓", "failed": "✗", "no_baseline": "–"}[gate.outcome]
            verdict = "no baseline" if gate.outcome == "no_baseline" else gate.message
            lines.append(f"| {icon} | `{gate.metric}` | {gate.rule} | {_cell(verdict)} |")

    if report.params_changed:
        body = ["| param | main | this proposal |", "|---|---|---|"]
        for name, (before, after) in sorted(report.params_changed.items()):
            body.append(f"| `{name}` | {_value(before)} | {_value(after)} |")
        lines += ["", *_section("Params that differ from main", body, fold=fold_everything or len(body) > 12)]

    if report.data_fingerprints:
        body = ["| input | fingerprint |", "|---|---|"]
        body += [f"| `{k}` | `{v}` |" for k, v in sorted(report.data_fingerprints.items())]
        lines += ["", *_section("Data", body, fold=True)]

    if report.steps:
        body = ["| step | result | time |", "|---|---|---|"]
        for step in report.steps:
            if step.status == "cached":
                took = "cache hit"
            elif step.duration_seconds is None:
                took = "—"
            else:
                took = _duration(step.duration_seconds)
            retried = f" (attempt {step.attempts})" if step.attempts > 1 else ""
            body.append(f"| `{step.name}` | {step.status}{retried} | {took} |")
        lines += ["", *_section("Steps", body, fold=fold_everything)]
        for step in report.steps:
            if step.log_tail and step.status in ("failed", "error") and tail_lines > 0:
                tail = "\n".join(step.log_tail.splitlines()[-tail_lines:]).replace("```", "ʼʼʼ")
                lines += [
                    "",
                    *_section(
                        f"Last lines of `{step.name}`'s log", ["```text", tail, "```"], fold=fold_everything
                    ),
                ]

    if report.logs_location:
        lines += ["", f"Logs: `{report.logs_location}`"]
    if report.cache_key:
        lines += ["", f"<sub>cache key `{report.cache_key[:16]}`</sub>"]
    return "\n".join(lines) + "\n"


def _comparison(report: ReviewReport) -> str:
    """Which production version the metrics and change gates were compared with, and since when."""
    if report.baseline_version:
        line = f"Compared with the version in production: `{report.model}` **{report.baseline_version}**."
    else:
        line = "No version serves production yet: change gates read *no baseline*, never *passed*."
    if report.rejudged_from is not None:
        line += (
            f" Production has changed since this run was judged (it was {report.rejudged_from}), "
            "so its gates were judged again against it; nothing was trained again."
        )
    return line


def _metrics_table(report: ReviewReport) -> list[str]:
    production = f"production ({report.baseline_version})" if report.baseline_version else "production"
    rows = ["| metric | this proposal | " + production + " | change |", "|---|---|---|---|"]
    names = list(report.metrics)
    for gate in report.gates:
        if gate.metric not in names:
            names.append(gate.metric)
    if report.primary_metric in names:
        names.remove(report.primary_metric)
        names.insert(0, report.primary_metric)
    for name in names:
        value = report.metrics.get(name)
        base = report.baseline.get(name) if report.baseline else None
        label = f"**{name}**" if name == report.primary_metric else name
        rows.append(
            f"| {label} | {_number(value)} | {_number(base) if report.baseline else 'no baseline'} "
            f"| {_change(value, base, report.directions.get(name, 'higher'))} |"
        )
    return rows


def _change(value: float | None, base: float | None, direction: str) -> str:
    if value is None or base is None:
        return "—"
    delta = value - base
    if delta == 0:
        return "±0"
    better = (delta > 0) == (direction == "higher")
    return f"{delta:+.4g} {'▲ better' if better else '▼ worse'}"


def _section(title: str, body: list[str], *, fold: bool) -> list[str]:
    if fold:
        return ["<details>", f"<summary>{title}</summary>", "", *body, "", "</details>"]
    return [f"#### {title}", "", *body]


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _value(value: Any) -> str:
    text = "(unset)" if value is None else json.dumps(value, default=str)
    return _cell(f"`{text}`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"
