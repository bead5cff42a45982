"""Looks shared by the tabs: where plot legends go and the colour legend of a label map."""

from __future__ import annotations

import html

import numpy as np

#: Plotly legend above the plot area (never over the x-axis title), shared by every figure.
TOP_LEGEND = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0}


def legend_html(classes: list[str], palette: list[tuple[int, int, int]], shares: np.ndarray | None = None) -> str:
    """Colour swatches with class names (and shares); HTML-escaped because names come from cards."""
    items = []
    for i, name in enumerate(classes):
        r, g, b = palette[i] if i < len(palette) else (0, 0, 0)
        share = f" {shares[i] * 100:.1f}%" if shares is not None and i < len(shares) else ""
        items.append(
            f'<span class="seg-legend-item"><span class="seg-swatch" '
            f'style="background:rgb({r},{g},{b})"></span>{html.escape(name)}{share}</span>'
        )
    return '<div class="seg-legend">' + "".join(items) + "</div>"
