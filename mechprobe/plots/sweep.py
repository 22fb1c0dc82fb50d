"""Figures of a sweep: each experiment's per-layer curves of every model on relative depth.

Example:
    >>> fig = depth_overlay({"m1": {"a": ([0, 1, 2], [1.0, 2.0, 3.0])}}, {"m1": 30}, "demo")
    >>> [t.name for t in fig.data]
    ['m1: a']
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechprobe.plots.theme import themed

DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


#: Fewer layers than this are drawn as markers only: a line across relative depth between two
#: or three layers invents a trend (a 2-layer model's x10 block would draw a diagonal).
MIN_LAYERS_JOINED = 4


def quantity(label: str) -> str:
    """The quantity a curve shows: its label up to the first comma (one panel per quantity).

    Example:
        >>> quantity("% significant, Q|K|V"), quantity("mean |cos| at the target")
        ('% significant', 'mean |cos| at the target')
    """
    return label.split(",", 1)[0].strip()


def depth_overlay(
    curves: Mapping[str, Mapping[str, tuple[list[int], list[float]]]],
    n_layers: Mapping[str, int],
    title: str,
) -> go.Figure:
    """One line per model and curve, x = layer / (n_layers - 1): the models side by side.

    Curves of different quantities (the part of the label before its first comma: a share in %
    and an accuracy, say) get a panel each, stacked, so no y axis mixes two units. A model of
    fewer than `MIN_LAYERS_JOINED` layers is drawn as markers, not joined by lines.

    Args:
        curves: ``{model: {curve label: (layers, values)}}``.
        n_layers: ``{model: number of layers}``.
        title: Figure title.
    """
    panels = list(dict.fromkeys(quantity(lb) for per in curves.values() for lb in per))
    fig = make_subplots(
        rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.08 if panels else 0.1
    )
    palette = TEMPLATE_COLOURS
    for m, (model, per_model) in enumerate(curves.items()):
        scale = max(1, n_layers[model] - 1)
        joined = n_layers[model] >= MIN_LAYERS_JOINED
        suffix = "" if joined else f" ({n_layers[model]} layers: not joined)"
        for c, (label, (layers, values)) in enumerate(per_model.items()):
            fig.add_trace(
                go.Scatter(
                    x=[layer / scale for layer in layers],
                    y=values,
                    mode="lines+markers" if joined and len(layers) > 1 else "markers",
                    name=f"{model}: {label}{suffix}",
                    line={"color": palette[m % len(palette)], "dash": DASHES[c % len(DASHES)]},
                    marker={"size": 5 if joined else 9, "symbol": "circle" if joined else "x"},
                    hovertemplate="layer %{customdata}<br>%{y:.4g}<extra>%{fullData.name}</extra>",
                    customdata=list(layers),
                ),
                row=panels.index(quantity(label)) + 1,
                col=1,
            )
    for r, q in enumerate(panels, start=1):
        fig.update_yaxes(title_text=q, row=r, col=1)
        if q.startswith("norm ratio"):  # x0.1 and x10 are symmetric on a log axis
            fig.update_yaxes(type="log", row=r, col=1)
    fig.update_xaxes(range=[-0.03, 1.03])
    fig.update_xaxes(title_text="relative depth: layer / (layers - 1)", row=len(panels), col=1)
    return themed(
        fig,
        title=title,
        height=max(460, 300 * len(panels) + 120),
        legend={"orientation": "h", "yanchor": "top", "y": -0.12, "x": 0},
    )


TEMPLATE_COLOURS = ["#3a6fb0", "#d1495b", "#2a9d8f", "#e9a03b", "#8e6cc0", "#6c757d"]
