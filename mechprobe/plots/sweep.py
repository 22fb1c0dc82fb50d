"""Figures of a sweep: each experiment's per-layer curves of every model on relative depth.

Example:
    >>> fig = depth_overlay({"m1": {"a": ([0, 1, 2], [1.0, 2.0, 3.0])}}, {"m1": 3}, "demo")
    >>> [t.name for t in fig.data]
    ['m1: a']
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from mechprobe.plots.theme import themed

DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def depth_overlay(
    curves: Mapping[str, Mapping[str, tuple[list[int], list[float]]]],
    n_layers: Mapping[str, int],
    title: str,
) -> go.Figure:
    """One line per model and curve, x = layer / (n_layers - 1): the models side by side.

    Args:
        curves: ``{model: {curve label: (layers, values)}}``.
        n_layers: ``{model: number of layers}``.
        title: Figure title.
    """
    fig = go.Figure()
    palette = TEMPLATE_COLOURS
    for m, (model, per_model) in enumerate(curves.items()):
        scale = max(1, n_layers[model] - 1)
        for c, (label, (layers, values)) in enumerate(per_model.items()):
            fig.add_trace(
                go.Scatter(
                    x=[layer / scale for layer in layers],
                    y=values,
                    mode="lines+markers" if len(layers) > 1 else "markers",
                    name=f"{model}: {label}",
                    line={"color": palette[m % len(palette)], "dash": DASHES[c % len(DASHES)]},
                    marker={"size": 7 if len(layers) == 1 else 5},
                    hovertemplate="layer %{customdata}<br>%{y:.4g}<extra>%{fullData.name}</extra>",
                    customdata=list(layers),
                )
            )
    return themed(
        fig,
        title=title,
        xaxis={"title": "relative depth: layer / (layers - 1)", "range": [-0.03, 1.03]},
        yaxis={"title": "value (its unit is in each curve's name)"},
        height=460,
    )


TEMPLATE_COLOURS = ["#3a6fb0", "#d1495b", "#2a9d8f", "#e9a03b", "#8e6cc0", "#6c757d"]
