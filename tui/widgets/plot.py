"""A braille line plot: 2x4 dots per character cell, several series, y labels on the left and the step range
underneath. Series are downsampled to the plot's width before drawing, so the cost depends on the widget's
size, never on the history's length."""
from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

from engine.runview import downsample

BRAILLE = 0x2800
DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][col] within a cell
LABEL_W = 7


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.1e}"
    return f"{v:.3g}"


class LinePlot(Widget):
    """`set_series([(xs, ys, style, "line" | "points"), ...])` then it redraws on the next refresh."""

    DEFAULT_CSS = "LinePlot { height: 1fr; min-height: 4; }"

    def __init__(self, empty: str = "waiting for the first step...", **kw):
        super().__init__(**kw)
        self.series: list = []
        self.empty = empty

    def set_series(self, series: list) -> None:
        self.series = series
        self.refresh()

    def render(self) -> Text:
        w = max(4, self.size.width - LABEL_W)
        h = max(2, self.size.height - 1)
        drawn = []
        for xs, ys, style, kind in self.series:
            if len(ys):
                x, y = downsample(xs, ys, w * 2)
                pts = [(a, b) for a, b in zip(x, y) if not math.isnan(b) and not math.isinf(b)]
                if pts:
                    drawn.append((pts, style, kind))
        if not drawn:
            return Text(self.empty, style="dim")
        allx = [p[0] for pts, _, _ in drawn for p in pts]
        ally = [p[1] for pts, _, _ in drawn for p in pts]
        x0, x1 = min(allx), max(allx)
        y0, y1 = min(ally), max(ally)
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5, y1 + 0.5
        if x1 - x0 < 1e-12:
            x1 = x0 + 1
        cols, rows = w * 2, h * 4
        cells = [[0] * w for _ in range(h)]
        owner: list = [[None] * w for _ in range(h)]

        def dot(cx, cy, style):
            r, c = cy // 4, cx // 2
            if 0 <= r < h and 0 <= c < w:
                cells[r][c] |= DOTS[cy % 4][cx % 2]
                owner[r][c] = style

        for pts, style, kind in drawn:
            prev = None
            for px, py in pts:
                cx = round((px - x0) / (x1 - x0) * (cols - 1))
                cy = round((y1 - py) / (y1 - y0) * (rows - 1))
                if kind == "points":
                    dot(cx, cy, style)
                    dot(min(cols - 1, cx + 1), cy, style)
                    continue
                if prev is not None:  # join to the previous point: fill the vertical run between them
                    pcx, pcy = prev
                    steps = max(abs(cx - pcx), abs(cy - pcy), 1)
                    for k in range(steps + 1):
                        dot(round(pcx + (cx - pcx) * k / steps), round(pcy + (cy - pcy) * k / steps), style)
                else:
                    dot(cx, cy, style)
                prev = (cx, cy)
        out = Text()
        for r in range(h):
            if r == 0:
                label = _fmt(y1)
            elif r == h - 1:
                label = _fmt(y0)
            elif r == h // 2 and h > 4:
                label = _fmt((y0 + y1) / 2)
            else:
                label = ""
            out.append(f"{label:>{LABEL_W - 1}} ", style="dim")
            for c in range(w):
                bits = cells[r][c]
                out.append(chr(BRAILLE + bits) if bits else " ", style=owner[r][c] or "")
            out.append("\n")
        left, right = f"{x0:.0f}", f"{x1:.0f}"
        out.append(" " * LABEL_W + left + " " * max(1, w - len(left) - len(right)) + right, style="dim")
        return out
