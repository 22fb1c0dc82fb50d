"""Figure of an ablation: the decoding units' effect against random units', per layer.

One panel per family: x is the layer, y the mean KL (nats) of ablating the units at the eval
samples' targets. Grey dots are the random k-unit sets (the null), the diamond with its bootstrap
interval the top-k decoding units; read a diamond above its grey cloud as "these units matter
more than random ones".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechprobe.plots.theme import themed


def observed_vs_null(
    families: Sequence[str],
    layers: Sequence[int],
    observed: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    null: np.ndarray,
    metric: str = "kl",
) -> go.Figure:
    """Per family, the observed effect per layer (with interval) over the null's draws.

    Args:
        families: Panel names.
        layers: The layers (x).
        observed: ``[family, layer]`` effects of the decoding units.
        low: ``[family, layer]`` interval lows.
        high: ``[family, layer]`` interval highs.
        null: ``[family, layer, draw]`` effects of random unit sets.
        metric: The metric's name for the axis.

    Example:
        >>> fig = observed_vs_null(["mlp"], [0, 1], np.ones((1, 2)), np.zeros((1, 2)),
        ...                        2 * np.ones((1, 2)), np.zeros((1, 2, 5)))
        >>> len(fig.data)
        2
    """
    fig = make_subplots(rows=1, cols=len(families), subplot_titles=list(families))
    for fi, _fam in enumerate(families):
        n_draws = null.shape[-1]
        xs = np.repeat(np.asarray(layers, dtype=float), n_draws)
        jitter = np.random.default_rng(0).uniform(-0.15, 0.15, xs.size)
        fig.add_trace(
            go.Scatter(
                x=xs + jitter,
                y=null[fi].ravel(),
                mode="markers",
                marker={"color": "rgba(120,120,120,0.35)", "size": 4},
                name="random units",
                showlegend=fi == 0,
            ),
            row=1,
            col=fi + 1,
        )
        fig.add_trace(
            go.Scatter(
                x=list(layers),
                y=observed[fi],
                mode="markers",
                marker={"symbol": "diamond", "size": 11, "color": "#c0392b"},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": high[fi] - observed[fi],
                    "arrayminus": observed[fi] - low[fi],
                },
                name="decoding units",
                showlegend=fi == 0,
            ),
            row=1,
            col=fi + 1,
        )
        fig.update_xaxes(
            title_text="layer", tickmode="array", tickvals=list(layers), row=1, col=fi + 1
        )
    fig.update_yaxes(title_text=f"mean {metric} (nats)", row=1, col=1)
    return themed(fig, title="Decoding units vs random units (ablation)", height=420)


def figures(result: Any) -> dict[str, Any]:
    """``{"null": figure}`` of an ablation's result (KL panel per family).

    Example:
        >>> from mechprobe.experiments.result import ExperimentResult
        >>> figures(ExperimentResult("ablate", {}, {}))
        {'null': None}
    """
    a, s = result.arrays, result.summary
    if "observed" not in a:
        return {"null": None}
    mi = list(s["metrics"]).index("kl")
    return {
        "null": observed_vs_null(
            s["families"],
            s["layers"],
            a["observed"][:, :, mi],
            a["ci_low"][:, :, mi],
            a["ci_high"][:, :, mi],
            a["null"][:, :, mi],
        )
    }
