"""The course's softmax demonstrations of E2: three groups of weights, KDE bandwidths.

Example:
    >>> import numpy as np
    >>> softmax_groups_figure([("self", np.array([0.2, 0.9]))]).data[0].name
    'self'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from mechprobe.plots.theme import COLOURS, TEMPLATE, strip_trace

SAME_COLOR = COLOURS["class0"]
DIFF_COLOR = COLOURS["class1"]
K_COLOR = COLOURS["k"]


def softmax_groups_figure(groups: Sequence[tuple[str, np.ndarray]], title: str = "") -> go.Figure:
    """The course's three groups of softmax weights as strips of dots.

    Example:
        >>> fig = softmax_groups_figure([("self", np.array([0.2, 0.9]))])
        >>> fig.data[0].name
        'self'
    """
    fig = go.Figure()
    for i, (label, values) in enumerate(groups):
        colour = (SAME_COLOR, DIFF_COLOR, K_COLOR)[i % 3]
        fig.add_trace(strip_trace(values, label, colour, outline=1))
    fig.update_layout(
        title=title or "Softmax weights",
        yaxis={"title": "weight", "range": [0, 1.02]},
        showlegend=False,
        template=TEMPLATE,
    )
    return fig


def kde_bandwidths_figure(
    grid: np.ndarray, curves: Sequence[tuple[str, np.ndarray, bool]], title: str = ""
) -> go.Figure:
    """KDE curves of the same values with several bandwidths (the chosen one drawn thick).

    Example:
        >>> g = np.linspace(0, 1, 5)
        >>> fig = kde_bandwidths_figure(g, [("0.2", g, False), ("scott", g, True)])
        >>> [t.line.width for t in fig.data]
        [1.5, 4]
    """
    fig = go.Figure()
    for label, curve, chosen in curves:
        fig.add_trace(
            go.Scatter(
                x=grid, y=curve, name=label, mode="lines", line={"width": 4 if chosen else 1.5}
            )
        )
    fig.update_layout(
        title=title or "KDE bandwidths",
        xaxis_title="attention weight",
        yaxis_title="density (max = 1)",
        template=TEMPLATE,
    )
    return fig
