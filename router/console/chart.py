"""A bar chart of messages per minute as inline SVG, drawn on the server (no script).

Use :func:`per_minute_svg` with the counts of :func:`router.console.model.instance_activity`:
one bar per minute, handled messages in blue with the ones set aside (quarantined / failed)
stacked in red, a scale on the left and the time span below. The markup is built from numbers
only, so it needs no escaping.
"""

from __future__ import annotations

from collections.abc import Sequence

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 760, 180, 40, 20, 10
OK_COLOUR, PROBLEM_COLOUR, AXIS_COLOUR = "#2f6fb3", "#c0392b", "#888"


def per_minute_svg(counts: Sequence[tuple[int, int]]) -> str:
    """An ``<svg>`` element: one stacked bar per (handled, problem) minute, oldest on the left."""
    peak = max((a + b for a, b in counts), default=0)
    scale = max(peak, 1)
    plot_w, plot_h = WIDTH - LEFT - 5, HEIGHT - BOTTOM - TOP
    bar_w = plot_w / max(len(counts), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="messages per minute" '
        'class="chart">',
        _axes(plot_w, plot_h, peak, len(counts)),
    ]
    for i, (ok, problem) in enumerate(counts):
        x = LEFT + i * bar_w
        parts += _bar(x, bar_w, ok, 0, scale, plot_h, OK_COLOUR)
        parts += _bar(x, bar_w, problem, ok, scale, plot_h, PROBLEM_COLOUR)
    parts.append("</svg>")
    return "".join(parts)


def _bar(
    x: float, width: float, value: int, below: int, scale: int, plot_h: int, colour: str
) -> list[str]:
    if value <= 0:
        return []
    height = plot_h * value / scale
    y = TOP + plot_h - plot_h * (value + below) / scale
    return [
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(width - 1, 1):.1f}" '
        f'height="{height:.1f}" fill="{colour}"><title>{value}</title></rect>'
    ]


def _axes(plot_w: int, plot_h: int, peak: int, minutes: int) -> str:
    base = TOP + plot_h
    hours = minutes / 60
    return (
        f'<line x1="{LEFT}" y1="{base}" x2="{LEFT + plot_w}" y2="{base}" '
        f'stroke="{AXIS_COLOUR}"/>'
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="{AXIS_COLOUR}"/>'
        f'<text x="{LEFT - 4}" y="{TOP + 10}" text-anchor="end" font-size="11">{peak}</text>'
        f'<text x="{LEFT - 4}" y="{base}" text-anchor="end" font-size="11">0</text>'
        f'<text x="{LEFT}" y="{HEIGHT - 4}" font-size="11">{hours:g} h ago</text>'
        f'<text x="{LEFT + plot_w}" y="{HEIGHT - 4}" text-anchor="end" font-size="11">now</text>'
    )
