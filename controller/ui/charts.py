"""Server-rendered SVG charts: analysis checks' measurements against their bounds, canary weights over time.

Pure functions from the API's shapes (:mod:`controller.ui.schemas`) to SVG
markup, called by :mod:`controller.ui.app` for the rollout page; no script
and no charting library runs in the browser. Every text in the markup is
escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from controller.ui.schemas import Round, VersionItem, WeightPoint

__all__ = ["check_charts", "metric_charts", "weight_chart"]

_W, _H, _PAD = 560, 160, 36
_COLOURS = ("#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed")


@dataclass(frozen=True)
class _Axis:
    low: float
    high: float

    def y(self, value: float) -> float:
        span = self.high - self.low or 1.0
        return _H - _PAD - (value - self.low) / span * (_H - 2 * _PAD)


def _x(index: int, count: int) -> float:
    return _PAD + (index / max(count - 1, 1)) * (_W - 2 * _PAD)


def _frame(title: str, body: str) -> Markup:
    label = escape(title)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="{label}" class="chart"><title>{label}</title>'
        f'<rect x="{_PAD}" y="{_PAD / 2}" width="{_W - 2 * _PAD}" height="{_H - 1.5 * _PAD}" '
        f'class="plot"/>{body}</svg>'
    )


def check_charts(rounds: Sequence[Round]) -> list[Markup]:
    """One chart per check: its value in each round (a dot coloured by outcome) and its min/max lines."""
    names: list[str] = []
    for round_ in rounds:
        names += [c.check for c in round_.checks if c.check not in names]
    charts = []
    for name in names:
        points = [(i, c) for i, r in enumerate(rounds) for c in r.checks if c.check == name]
        values = [c.value for _, c in points if c.value is not None]
        bounds = [b for _, c in points[-1:] for b in (c.min, c.max) if b is not None]
        span = values + bounds or [0.0, 1.0]
        low, high = min(span), max(span)
        pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
        axis = _Axis(low - pad, high + pad)
        parts: list[str] = []
        for bound, word in zip((points[-1][1].min, points[-1][1].max), ("min", "max"), strict=True):
            if bound is not None:
                y = axis.y(bound)
                parts.append(
                    f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{y:.1f}" y2="{y:.1f}" class="threshold"/>'
                    f'<text x="{_W - _PAD - 2}" y="{y - 3:.1f}" text-anchor="end" class="tick">'
                    f"{word} {bound:g}</text>"
                )
        line = [(i, c.value) for i, c in points if c.value is not None]
        if len(line) > 1:
            path = " ".join(f"{_x(i, len(rounds)):.1f},{axis.y(v):.1f}" for i, v in line)
            parts.append(f'<polyline points="{path}" class="series"/>')
        for i, check in points:
            x = _x(i, len(rounds))
            if check.value is None:
                parts.append(f'<text x="{x:.1f}" y="{_H - _PAD - 4}" class="nodata">no data</text>')
                continue
            tip = escape(f"round {i + 1}: {check.value:.4g} ({check.outcome}, needs {check.rule})")
            parts.append(
                f'<circle cx="{x:.1f}" cy="{axis.y(check.value):.1f}" r="4" class="{escape(check.outcome)}">'
                f"<title>{tip}</title></circle>"
            )
        parts.append(f'<text x="{_PAD}" y="{_PAD / 2 - 4}" class="label">{escape(name)}</text>')
        parts.append(f'<text x="2" y="{axis.y(high) + 4:.1f}" class="tick">{high:.3g}</text>')
        parts.append(f'<text x="2" y="{axis.y(low) + 4:.1f}" class="tick">{low:.3g}</text>')
        charts.append(_frame(f"{name}: measurements against thresholds", "".join(parts)))
    return charts


def weight_chart(points: Sequence[WeightPoint]) -> Markup | None:
    """The new version's share of each environment's traffic over time, as steps; ``None`` without points."""
    if not points:
        return None
    start, end = points[0].at, points[-1].at
    total = (end - start).total_seconds() or 1.0
    axis = _Axis(0.0, 100.0)
    parts = []
    environments = list(dict.fromkeys(p.environment for p in points))
    for index, env in enumerate(environments):
        colour = _COLOURS[index % len(_COLOURS)]
        steps: list[str] = []
        previous: float | None = None
        for point in (p for p in points if p.environment == env):
            x = _PAD + (point.at - start).total_seconds() / total * (_W - 2 * _PAD)
            if previous is not None:
                steps.append(f"{x:.1f},{axis.y(previous):.1f}")
            steps.append(f"{x:.1f},{axis.y(point.weight):.1f}")
            previous = point.weight
        if previous is not None:  # the last share holds to the end of the chart
            steps.append(f"{_W - _PAD:.1f},{axis.y(previous):.1f}")
        parts.append(f'<polyline points="{" ".join(steps)}" class="weights" stroke="{colour}"/>')
        parts.append(
            f'<text x="{_PAD + 4 + index * 120}" y="{_PAD / 2 - 4}" fill="{colour}" class="label">'
            f"{escape(env)}</text>"
        )
    for value in (0, 50, 100):
        parts.append(f'<text x="2" y="{axis.y(value) + 4:.1f}" class="tick">{value}%</text>')
    return _frame("canary weights over time", "".join(parts))


def metric_charts(versions: Sequence[VersionItem]) -> list[Markup]:
    """One chart per metric: its value in each version, oldest first (versions without it are skipped)."""
    ordered = sorted(versions, key=lambda v: v.version)
    names = sorted({name for v in ordered for name in v.metrics})
    charts = []
    for name in names:
        points = [(i, v.version, v.metrics[name]) for i, v in enumerate(ordered) if name in v.metrics]
        values = [value for _, _, value in points]
        low, high = min(values), max(values)
        pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
        axis = _Axis(low - pad, high + pad)
        parts = []
        if len(points) > 1:
            path = " ".join(f"{_x(i, len(ordered)):.1f},{axis.y(value):.1f}" for i, _, value in points)
            parts.append(f'<polyline points="{path}" class="series"/>')
        for i, number, value in points:
            x = _x(i, len(ordered))
            parts.append(
                f'<circle cx="{x:.1f}" cy="{axis.y(value):.1f}" r="4" class="passed">'
                f"<title>{escape(f'v{number}: {name} = {value:.4g}')}</title></circle>"
                f'<text x="{x - 6:.1f}" y="{_H - _PAD / 2:.1f}" class="tick">v{number}</text>'
            )
        parts.append(f'<text x="{_PAD}" y="{_PAD / 2 - 4}" class="label">{escape(name)}</text>')
        parts.append(f'<text x="2" y="{axis.y(high) + 4:.1f}" class="tick">{high:.3g}</text>')
        parts.append(f'<text x="2" y="{axis.y(low) + 4:.1f}" class="tick">{low:.3g}</text>')
        charts.append(_frame(f"{name} across versions", "".join(parts)))
    return charts
