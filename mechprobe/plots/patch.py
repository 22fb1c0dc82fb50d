"""Figures of activation patching: layer x position and layer x head heatmaps, per-pair spread.

Every function takes arrays and returns a plotly figure; nothing is computed or shown here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechprobe.plots.theme import COLOURS, DIVERGING, show_token, strip_trace, themed

POSITION = ("resid_pre", "attn_out", "mlp_out")
HEAD = ("z", "q", "k", "v")


def heatmaps(
    means: Sequence[np.ndarray],
    qvalues: Sequence[np.ndarray],
    names: Sequence[str],
    x_labels: Sequence[str],
    alpha: float,
    title: str,
    x_title: str,
) -> go.Figure:
    """One layer x column heatmap per component, FDR-surviving cells marked with a dot.

    Args:
        means: Per component, ``[layer, column]`` normalised effects.
        qvalues: Per component, ``[layer, column]`` q-values.
        names: Component names (panel titles).
        x_labels: Column labels (positions with their tokens, or heads).
        alpha: FDR level of the marks.
        title: Figure title.
        x_title: Column axis title.

    Example:
        >>> fig = heatmaps([np.eye(2)], [np.full((2, 2), 0.01)], ["resid_pre"], ["0", "1"],
        ...                0.05, "t", "position")
        >>> len(fig.data)
        2
    """
    fig = make_subplots(rows=1, cols=len(means), subplot_titles=list(names),
                        horizontal_spacing=0.06)  # fmt: skip
    finite = [np.abs(m[np.isfinite(m)]) for m in means]
    zmax = max([float(f.max()) for f in finite if f.size] + [1e-9])
    for k, (m, q) in enumerate(zip(means, qvalues, strict=True)):
        layers = np.arange(m.shape[0])
        fig.add_trace(
            go.Heatmap(
                z=m, x=list(x_labels)[: m.shape[1]], y=layers, colorscale=DIVERGING,
                zmin=-zmax, zmax=zmax, showscale=k == 0,
                colorbar={"title": "normalised<br>effect"},
                hovertemplate="layer %{y}, %{x}<br>effect %{z:.3f}<extra></extra>",
            ),
            row=1, col=k + 1,
        )  # fmt: skip
        ly, cx = np.nonzero(np.nan_to_num(q, nan=1.0) < alpha)
        fig.add_trace(
            go.Scatter(
                x=[list(x_labels)[i] for i in cx], y=ly, mode="markers",
                marker={"color": "#222", "size": 4},
                name=f"q < {alpha:g}", showlegend=k == 0, hoverinfo="skip",
            ),
            row=1, col=k + 1,
        )  # fmt: skip
        fig.update_yaxes(title_text="layer" if k == 0 else None, autorange="reversed",
                         dtick=1 if m.shape[0] <= 16 else 5, row=1, col=k + 1)  # fmt: skip
        fig.update_xaxes(title_text=x_title, row=1, col=k + 1)
    fig = themed(fig, title=title, height=max(320, 22 * means[0].shape[0] + 160))
    # the marker legend above the plot, clear of the colour bar's title
    fig.update_layout(legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.08})
    return fig


def spread(
    effects: Sequence[np.ndarray],
    means: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    names: Sequence[str],
    title: str,
) -> go.Figure:
    """Per cell, every pair's normalised effect as a dot, and the mean with its interval.

    Example:
        >>> fig = spread([np.array([0.1, 0.9])], [0.5], [0.1], [0.9], ["resid_pre L0 pos 1"], "t")
        >>> len(fig.data)
        2
    """
    fig = go.Figure()
    for e, name in zip(effects, names, strict=True):
        fig.add_trace(strip_trace(e[np.isfinite(e)], name, COLOURS["accent"]))
    fig.add_trace(
        go.Scatter(
            x=list(names), y=list(means), mode="markers", name="mean, 95% CI",
            marker={"color": "#222", "size": 9, "symbol": "diamond"},
            error_y={"type": "data", "symmetric": False,
                     "array": np.subtract(highs, means), "arrayminus": np.subtract(means, lows)},
        )
    )  # fmt: skip
    fig.add_hline(y=0, line_dash="dot")
    fig.add_hline(y=1, line_dash="dot", annotation_text="clean restored")
    return themed(fig, title=title, yaxis_title="normalised effect per pair", showlegend=False)


def figures(result: Any) -> dict[str, go.Figure | None]:
    """The patching figures of a result (None where the run has none, e.g. a failed set).

    Example:
        >>> from mechprobe.experiments.result import ExperimentResult
        >>> figures(ExperimentResult("patch", {}, {"failed": True}))["heads"] is None
        True
    """
    a, s = result.arrays, result.summary
    out: dict[str, go.Figure | None] = {"positions": None, "heads": None, "spread": None}
    if s.get("failed", False):
        return out
    alpha = s["alpha"]
    pos = [c for c in POSITION if f"{c}_mean" in a]
    if pos:
        tokens = s.get("position_tokens", [])
        labels = [f"{i} {show_token(t)}" if t else str(i) for i, t in enumerate(tokens)]
        n = a[f"{pos[0]}_mean"].shape[1]
        labels = (labels + [str(i) for i in range(len(labels), n)])[:n]
        out["positions"] = heatmaps(
            [a[f"{c}_mean"] for c in pos], [a[f"{c}_qvalue"] for c in pos], pos, labels,
            alpha, "Activation patching by layer and position",
            "position (pairs aligned at their last token; tokens of the most common length)"
            if len(set(a["length"].tolist())) > 1 else "position (token)",
        )  # fmt: skip
    heads = [c for c in HEAD if f"{c}_mean" in a]
    if heads:
        n = a[f"{heads[0]}_mean"].shape[1]
        out["heads"] = heatmaps(
            [a[f"{c}_mean"] for c in heads], [a[f"{c}_qvalue"] for c in heads], heads,
            [str(h) for h in range(n)], alpha, "Activation patching by layer and head", "head",
        )  # fmt: skip
    top = s.get("top_cells", [])[:8]
    if top:
        denom = float(np.mean(a["clean"] - a["corrupt"]))
        effects, names = [], []
        for c in top:
            idx = c.get("pos", c.get("head"))
            effects.append((a[c["component"]][c["layer"], idx] - a["corrupt"]) / denom)
            where = f"pos {idx}" if "pos" in c else f"head {idx}"
            names.append(f"{c['component']} L{c['layer']} {where}")
        out["spread"] = spread(
            effects, [c["mean"] for c in top], [c["ci_low"] for c in top],
            [c["ci_high"] for c in top], names, "Per-pair effects of the strongest cells",
        )  # fmt: skip
    return out
