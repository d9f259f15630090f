"""Small bar charts drawn on the server: SVG markup with every text escaped, no script, no front-end build.

`small_multiples` draws one chart per series over the same days, each an `<svg role="img">` whose
`aria-label` and `<title>` say in words what the bars show. Each scales with its `viewBox` to the
width of its box (the stylesheet gives it `width: 100%`), so it fits a 375-pixel screen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 320, 124  # the viewBox: about the size it is shown at on a phone, so 11-unit text reads as ~11px
TOP, BOTTOM = 30, 100  # the plot's top and bottom
TITLE_Y, AXIS_Y = 14, 116


def count(value: Any) -> str:
    """A count as a chart writes it: `1,234`."""
    return f"{int(value):,}"


@dataclass(frozen=True)
class Series:
    """One chart's values, one a day, and how a value reads (`count`, or money)."""

    key: str
    label: str
    values: Sequence[int | Decimal]
    show: Callable[[Any], str] = field(default=count)

    @property
    def total(self) -> int | Decimal:
        """The sum of the values."""
        return sum(self.values, Decimal(0) if any(isinstance(v, Decimal) for v in self.values) else 0)


def day_label(day: date) -> str:
    """`3 Nov`."""
    return f"{day.day} {day:%b}"


def summary(days: Sequence[date], series: Series) -> str:
    """The chart in words: what, over which days, how many in all, and the busiest day."""
    if not days:
        return f"{series.label}: no days"
    span = f"{day_label(days[0])} {days[0].year} to {day_label(days[-1])} {days[-1].year}"
    text = f"{series.label} per day, {span}: {series.show(series.total)} in all"
    peak = max(range(len(days)), key=lambda i: series.values[i]) if series.values else 0
    if series.values and series.values[peak] > 0:
        text += f"; most on {day_label(days[peak])} ({series.show(series.values[peak])})"
    return text + "."


def _n(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def bar_chart(days: Sequence[date], series: Series) -> Markup:
    """One series as an accessible SVG bar chart, a bar a day, the busiest day's bar reaching the top line."""
    if len(series.values) != len(days):
        raise ValueError(f"{series.key}: {len(series.values)} values for {len(days)} days")
    words = escape(summary(days, series))
    peak = max(series.values, default=0)
    slot = WIDTH / max(len(days), 1)
    parts = [
        f'<svg class="chart-svg {escape(series.key)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{words}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{words}</title>",
        f'<text class="label" x="0" y="{TITLE_Y}">{escape(series.label)}</text>',
        f'<text class="total" x="{WIDTH}" y="{TITLE_Y}" text-anchor="end">{escape(series.show(series.total))}</text>',
        f'<line class="grid" x1="0" x2="{WIDTH}" y1="{TOP}" y2="{TOP}"/>',
        f'<text class="axis" x="0" y="{TOP - 3}">{escape(series.show(peak))}</text>',
        f'<line class="base" x1="0" x2="{WIDTH}" y1="{BOTTOM}" y2="{BOTTOM}"/>',
    ]
    for index, (day, value) in enumerate(zip(days, series.values, strict=True)):
        if value <= 0:
            continue
        height = (BOTTOM - TOP) * float(value) / float(peak)
        parts.append(
            f'<rect class="bar" x="{_n(index * slot + slot * 0.15)}" y="{_n(BOTTOM - height)}" '
            f'width="{_n(slot * 0.7)}" height="{_n(height)}" data-day="{day.isoformat()}">'
            f"<title>{escape(day_label(day))}: {escape(series.show(value))}</title></rect>"
        )
    if days:
        for index in sorted({0, len(days) // 2, len(days) - 1}):  # the first day, the middle one, the last
            anchor, x = (
                ("start", 0.0)
                if index == 0
                else ("end", float(WIDTH))
                if index == len(days) - 1
                else ("middle", (index + 0.5) * slot)
            )
            label = escape(day_label(days[index]))
            parts.append(f'<text class="axis" x="{_n(x)}" y="{AXIS_Y}" text-anchor="{anchor}">{label}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def small_multiples(days: Sequence[date], series: Sequence[Series], caption: str = "") -> Markup:
    """A chart per series over the same days, side by side where there is room and stacked on a phone."""
    figures = "".join(f'<figure class="chart">{bar_chart(days, item)}</figure>' for item in series)
    note = f'<p class="muted charts-caption">{escape(caption)}</p>' if caption else ""
    return Markup(f'<div class="charts">{figures}</div>{note}')
