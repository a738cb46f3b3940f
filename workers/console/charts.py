"""Charts drawn on the server as inline SVG: no script, no CDN, readable by a screen reader (a
title and a description per chart, a label per bar) and printable."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from html import escape


@dataclass(frozen=True)
class Bar:
    label: str
    value: Decimal
    shown: str  # the value as people read it (money in the account's currency)


def bar_chart(
    bars: list[Bar], *, title: str, width: int = 640, height: int = 220, key: str = "chart", tone: str | None = None
) -> str:
    """Vertical bars, one per bucket, each labelled below and valued above; scaled to the largest.
    `key` names the title's and description's ids (unique per page when a page has several charts);
    `tone` colours every bar alike (default: the credit aging's, later buckets darker)."""
    top, bottom, gap = 28, 36, 12
    biggest = max((b.value for b in bars), default=Decimal(0)) or Decimal(1)
    slot = width / max(len(bars), 1)
    inner = height - top - bottom
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="{key}-title {key}-desc"'
        f' xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{key}-title">{escape(title)}</title>',
        f'<desc id="{key}-desc">' + escape("; ".join(f"{b.label}: {b.shown}" for b in bars)) + "</desc>",
        f'<line x1="0" y1="{top + inner}" x2="{width}" y2="{top + inner}" class="chart-axis"/>',
    ]
    for i, bar in enumerate(bars):
        h = 0 if bar.value <= 0 else max(2.0, float(bar.value / biggest) * inner)
        x = i * slot + gap / 2
        y = top + inner - h
        shade = tone or ("chart-bar-late" if i >= 2 else ("chart-bar-due" if i == 1 else "chart-bar"))
        box = f'x="{x:.1f}" y="{y:.1f}" width="{slot - gap:.1f}" height="{h:.1f}"'
        parts.append(f'<rect {box} class="{shade}" rx="3"/>')
        cx = x + (slot - gap) / 2
        parts.append(f'<text x="{cx:.1f}" y="{y - 6:.1f}" class="chart-value">{escape(bar.shown)}</text>')
        parts.append(f'<text x="{cx:.1f}" y="{height - 12}" class="chart-label">{escape(bar.label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
