r"""One look for every figure: a plotly template, the colours of recurring things, token display.

Example:
    >>> fig = themed(go.Figure(go.Scatter(y=[1, 2])), title="demo")
    >>> fig.layout.template.layout.font.family
    'system-ui, -apple-system, Segoe UI, sans-serif'
    >>> show_token(" not\r\n")
    '·not↵'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

#: Colours of Q, K, V, Q|K|V together and the MLP, the two classes, baseline and intervention.
COLOURS = {
    "q": "#2a9d8f",
    "k": "#8e6cc0",
    "v": "#e9a03b",
    "qkv": "#6c757d",
    "mlp": "#3a6fb0",
    "class0": "#3a6fb0",
    "class1": "#d1495b",
    "baseline": "rgba(120,120,120,0.55)",
    "accent": "#d1495b",
}
#: Sequential colour scale (depth, magnitudes) and diverging scale (signed values).
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"

TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
TEMPLATE.layout.update(
    font={"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 13, "color": "#222"},
    title={"font": {"size": 16}, "x": 0.01, "xanchor": "left"},
    colorway=["#3a6fb0", "#d1495b", "#2a9d8f", "#e9a03b", "#8e6cc0", "#6c757d", "#66a182"],
    margin={"l": 70, "r": 30, "t": 80, "b": 60},
    legend={"bgcolor": "rgba(255,255,255,0.7)"},
    hoverlabel={"font": {"size": 12}},
)


def themed(fig: go.Figure, **layout: Any) -> go.Figure:
    """Apply mechprobe's template (and any layout settings) to ``fig``; return it.

    Log axes get full tick labels (``0.2, 0.5, 1, 2, 5``): plotly's default labels the ticks
    between powers of ten with their first digit alone (``2, 5``), which reads as a magnitude.

    Example:
        >>> themed(go.Figure(), height=300).layout.height
        300
        >>> themed(go.Figure(), yaxis_type="log").layout.yaxis.tickformat
        '~g'
    """
    fig.update_layout(template=TEMPLATE, **layout)
    full_log_ticks(fig)
    return fig


def full_log_ticks(fig: go.Figure) -> go.Figure:
    """Label every tick of ``fig``'s log axes with its whole value (``~g``), not a lone digit.

    Ticks go at 1, 2 and 5 times each power of ten (``dtick="D2"``): with whole labels, plotly's
    own choice over a short range (every digit) would crowd them.

    Example:
        >>> fig = full_log_ticks(go.Figure(layout={"xaxis": {"type": "log"}}))
        >>> fig.layout.xaxis.tickformat, fig.layout.xaxis.dtick, fig.layout.yaxis.tickformat
        ('~g', 'D2', None)
    """

    def fix(axis: Any) -> None:
        if axis.type == "log" and axis.tickformat is None:
            axis.tickformat = "~g"
            if axis.dtick is None and axis.tickvals is None:
                axis.dtick = "D2"

    fig.for_each_xaxis(fix)
    fig.for_each_yaxis(fix)
    return fig


_VISIBLE = {"\r\n": "↵", "\n": "↵", "\r": "↵", "\t": "→", " ": "·"}


def band_trace(
    x: Iterable[float],
    low: Iterable[float],
    high: Iterable[float],
    colour: str,
    name: str,
    *,
    opacity: float = 0.2,
) -> go.Scatter:
    """A filled band between ``low`` and ``high`` over ``x`` (an interval drawn behind a line).

    Example:
        >>> band_trace([0, 1], [0.1, 0.2], [0.3, 0.4], "#3a6fb0", "95% interval").y
        (0.3, 0.4, 0.2, 0.1)
    """
    x = list(x)
    return go.Scatter(
        x=x + x[::-1],
        y=list(high) + list(low)[::-1],
        fill="toself",
        fillcolor=colour,
        opacity=opacity,
        line={"width": 0},
        hoverinfo="skip",
        name=name,
    )  # fmt: skip


def strip_trace(values: Any, name: str, colour: str, *, outline: float = 0) -> go.Box:
    """Every value as a jittered dot in one column (a box plot drawn as a strip of points).

    Example:
        >>> strip_trace([0.1, 0.5], "same head", "#3a6fb0").boxpoints
        'all'
    """
    return go.Box(
        y=values,
        name=name,
        boxpoints="all",
        jitter=0.6,
        pointpos=0,
        marker={"color": colour, "size": 4, "opacity": 0.6},
        line={"width": outline},
        fillcolor="rgba(0,0,0,0)",
    )


def show_token(piece: str) -> str:
    r"""A token with its whitespace drawn visibly: space ``·``, newline ``↵``, tab ``→``.

    Example:
        >>> show_token("\n\n"), show_token(" can")
        ('↵↵', '·can')
    """
    out, i = [], 0
    while i < len(piece):
        two = piece[i : i + 2]
        if two == "\r\n":
            out.append(_VISIBLE[two])
            i += 2
            continue
        out.append(_VISIBLE.get(piece[i], piece[i]))
        i += 1
    return "".join(out)
