"""Looks shared by the tabs: one colour per model, plots that follow the light/dark theme, tables
with the model colours, readable numbers, and the colour legend of a label map."""

from __future__ import annotations

import html
import zlib
from typing import Any

import numpy as np

#: Plotly legend above the plot area (never over the x-axis title), shared by every figure.
TOP_LEGEND = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0}

#: Colours that read on white and on near-black backgrounds and stay apart for colour-blind
#: viewers (Okabe-Ito first, then Tableau hues for more models).
MODEL_PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # green
    "#CC79A7",  # pink
    "#D55E00",  # vermilion
    "#56B4E9",  # sky
    "#9467BD",  # purple
    "#8C564B",  # brown
    "#BCBD22",  # olive
    "#17BECF",  # cyan
    "#E15759",  # red
    "#7F7F7F",  # grey
)
#: The shipped checkpoints keep fixed, well-separated colours (the two instance models too).
KNOWN_MODEL_COLOURS: dict[str, str] = {
    "unet": MODEL_PALETTE[0],
    "resunet": MODEL_PALETTE[1],
    "cnn": MODEL_PALETTE[2],
    "prior": MODEL_PALETTE[3],
    "dwt": MODEL_PALETTE[0],
    "maskrcnn": MODEL_PALETTE[4],
}
#: Colour of ground truth wherever it is compared with models.
TRUTH_COLOUR = "#444444"

#: Font colour of figures: mid grey is legible on both themes; app.css switches it to the
#: theme's own text colour, so plots match the page exactly.
PLOT_FONT_COLOUR = "#6b7280"
PLOT_GRID_COLOUR = "rgba(128, 128, 128, 0.25)"


def model_colour(name: str) -> str:
    """The colour of model ``name`` in every plot, table and caption of the app.

    Stable across calls, tabs and restarts (a CRC of the name, never Python's salted ``hash``),
    so a model keeps its colour wherever it appears; shipped models have fixed colours.
    """
    if name in KNOWN_MODEL_COLOURS:
        return KNOWN_MODEL_COLOURS[name]
    return MODEL_PALETTE[zlib.crc32(name.encode("utf-8")) % len(MODEL_PALETTE)]


def themed(fig: Any, height: int | None = None) -> Any:
    """Transparent backgrounds, neutral font and faint grid: a figure that sits on light and dark pages.

    Returns the figure (for chaining). app.css recolours the text to the theme's text colour.
    """
    fig.update_layout(
        template="plotly_white",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        font={"color": PLOT_FONT_COLOUR},
        legend={"bgcolor": "rgba(0,0,0,0)"},
        **({"height": height} if height else {}),
    )
    fig.update_xaxes(gridcolor=PLOT_GRID_COLOUR, zerolinecolor=PLOT_GRID_COLOUR, linecolor=PLOT_GRID_COLOUR)
    fig.update_yaxes(gridcolor=PLOT_GRID_COLOUR, zerolinecolor=PLOT_GRID_COLOUR, linecolor=PLOT_GRID_COLOUR)
    return fig


def model_table(rows: list[list[Any]], headers: list[str], name_column: int = 0) -> dict[str, Any]:
    """A ``gr.Dataframe`` value whose model-name cells carry the model's colour (a bar on the left).

    The raw values stay what API clients receive (``data``); only the display is styled, through
    Gradio's per-cell ``display_value`` and ``styling`` metadata.
    """
    styling = [
        [
            f"border-left: 6px solid {model_colour(str(v))}; font-weight: 600" if k == name_column and v else ""
            for k, v in enumerate(row)
        ]
        for row in rows
    ]
    shown = [[_cell_text(v) for v in row] for row in rows]
    return {"headers": headers, "data": rows, "metadata": {"display_value": shown, "styling": styling}}


def _cell_text(value: Any) -> str:
    """How a table cell reads: no trailing zeros, a dash for a missing value."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def format_ms(ms: float | None) -> str:
    """A latency for people: "85 ms", "1.6 s" (never "1623.436")."""
    if ms is None or not np.isfinite(ms):
        return "n/a"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 instance``, ``2 instances`` (``many`` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def swatch(colour: str) -> str:
    """A small colour square (HTML) for captions and summaries."""
    return f'<span class="seg-swatch" style="background:{html.escape(colour)}"></span>'


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
