"""Server-rendered SVG charts: small, dependency-free, readable without JavaScript."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence

__all__ = ["bar_chart", "gantt", "line_chart"]

PALETTE = ("#2563eb", "#f59e0b", "#dc2626", "#059669", "#7c3aed", "#db2777", "#0891b2")
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    for factor in (1, 2, 2.5, 5, 10):
        if factor * step >= value:
            return factor * step
    return value


def _fmt(value: float, unit: str) -> str:
    if unit == "ms" and value >= 1000:
        return f"{value / 1000:.1f} s"
    if unit == "$":
        return f"${value:.4g}"
    return f"{value:.0f} {unit}".strip() if value >= 10 or value == 0 else f"{value:.2g} {unit}"


def _clock(ms: float) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%H:%M")


def line_chart(
    title: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    unit: str = "ms",
    width: int = 440,
    height: int = 190,
) -> str:
    """Lines of ``(epoch ms, value)`` points, one per series, on shared axes."""
    left, right, top, bottom = 52, 10, 24, 34
    points = [p for values in series.values() for p in values]
    plot_w, plot_h = width - left - right, height - top - bottom
    out = [
        f'<svg class="plot line" data-points="{len(points)}" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="{left}" y="15" {_FONT} font-weight="600">{_esc(title)}</text>',
    ]
    if not points:
        out.append(f'<text x="{left}" y="{top + plot_h / 2}" {_FONT} fill="#666">no data</text>')
        return "".join(out) + "</svg>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    if x1 == x0:
        x0, x1 = x0 - 60_000, x1 + 60_000
    y1 = _nice_max(max(p[1] for p in points))

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - y / y1 * plot_h

    for i in range(6):  # 5 intervals: round steps for every _nice_max
        value = y1 * i / 5
        y = sy(value)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>'
            f"{_esc(_fmt(value, unit))}</text>"
        )
    for x, anchor in ((x0, "start"), ((x0 + x1) / 2, "middle"), (x1, "end")):
        out.append(
            f'<text x="{sx(x):.1f}" y="{top + plot_h + 14}" text-anchor="{anchor}" {_FONT}>'
            f"{_clock(x)}</text>"
        )
    legend_x = left
    for n, (name, values) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        if values:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(values))
            out.append(
                f'<polyline class="series" data-series="{_esc(name)}" fill="none"'
                f' stroke="{color}" stroke-width="1.8" points="{coords}"/>'
            )
            for x, y in values:
                out.append(
                    f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{color}">'
                    f"<title>{_esc(name)} {_clock(x)}: {_esc(_fmt(y, unit))}</title></circle>"
                )
        out.append(
            f'<rect x="{legend_x}" y="{height - 11}" width="10" height="3" fill="{color}"/>'
            f'<text x="{legend_x + 13}" y="{height - 7}" {_FONT}>{_esc(name)}</text>'
        )
        legend_x += 18 + 7 * len(name)
    return "".join(out) + "</svg>"


def bar_chart(
    title: str, bars: Sequence[tuple[str, float]], *, unit: str = "", width: int = 440
) -> str:
    """Horizontal bars, largest first as given; labels on the left, values on the right."""
    row, top, label_w = 20, 26, 200
    height = top + max(1, len(bars)) * row + 8
    out = [
        f'<svg class="plot bar" data-points="{len(bars)}" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="4" y="15" {_FONT} font-weight="600">{_esc(title)}</text>',
    ]
    if not bars:
        out.append(f'<text x="4" y="{top + 12}" {_FONT} fill="#666">no data</text>')
        return "".join(out) + "</svg>"
    top_value = max(v for _, v in bars) or 1.0
    bar_w = width - label_w - 60
    for i, (label, value) in enumerate(bars):
        y = top + i * row
        w = max(1.0, value / top_value * bar_w)
        color = PALETTE[i % len(PALETTE)]
        short = label if len(label) <= 32 else label[:31] + "…"
        out.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" {_FONT}>'
            f"<title>{_esc(label)}</title>{_esc(short)}</text>"
            f'<rect class="series" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}"'
            f' fill="{color}"><title>{_esc(label)}: {_esc(_fmt(value, unit))}</title></rect>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 13}" {_FONT}>{_esc(_fmt(value, unit))}</text>'
        )
    return "".join(out) + "</svg>"


def gantt(
    title: str,
    rows: Sequence[tuple[str, float, float, float, float]],
    *,
    total_ms: float,
    highlight: str | None = None,
    width: int = 900,
) -> str:
    """One bar per step: ``(name, start, retries, queue wait, processing)`` in ms.

    Segments: retries (hatched grey), queue wait (amber), processing (blue);
    ``highlight`` outlines the slow step in red.
    """
    row, top, label_w = 26, 26, 150
    height = top + max(1, len(rows)) * row + 22
    plot_w = width - label_w - 20
    scale = plot_w / total_ms if total_ms > 0 else 0.0
    out = [
        f'<svg class="plot gantt" data-points="{len(rows)}" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="4" y="15" {_FONT} font-weight="600">{_esc(title)}</text>',
    ]
    for i in range(5):
        x = label_w + plot_w * i / 4
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - 18}" stroke="#e5e7eb"/>'
            f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" {_FONT}>'
            f"{_esc(_fmt(total_ms * i / 4, 'ms'))}</text>"
        )
    for i, (name, start, retries, queue, processing) in enumerate(rows):
        y = top + i * row + 4
        x = label_w + start * scale
        out.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" {_FONT}>{_esc(name)}</text>'
        )
        for kind, length, color in (
            ("retries", retries, "#9ca3af"),
            ("queue wait", queue, "#f59e0b"),
            ("processing", processing, "#2563eb"),
        ):
            w = length * scale
            if w > 0:
                out.append(
                    f'<rect class="series" x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}"'
                    f' height="{row - 8}" fill="{color}"><title>{_esc(name)} {kind}:'
                    f" {_esc(_fmt(length, 'ms'))}</title></rect>"
                )
            x += w
        if name == highlight:
            x0 = label_w + start * scale
            out.append(
                f'<rect x="{x0 - 2:.1f}" y="{y - 2}" width="{max(x - x0, 1) + 4:.1f}"'
                f' height="{row - 4}" fill="none" stroke="#dc2626" stroke-width="2"/>'
            )
    return "".join(out) + "</svg>"
