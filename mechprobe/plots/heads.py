"""Figures of the attention-head dissection (E2); they draw arrays, they compute nothing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechprobe.plots.heads_softmax import kde_bandwidths_figure, softmax_groups_figure
from mechprobe.plots.theme import (
    COLOURS,
    SEQUENTIAL,
    TEMPLATE,
    band_trace,
    show_token,
    strip_trace,
)

SAME_COLOR = COLOURS["class0"]
DIFF_COLOR = COLOURS["class1"]
Q_COLOR = COLOURS["q"]
K_COLOR = COLOURS["k"]


def qk_means_figure(
    q_mean: np.ndarray, q_std: np.ndarray, k_mean: np.ndarray, k_std: np.ndarray, title: str = ""
) -> go.Figure:
    """Per-head means of Q and K with ±1 std error bars.

    Example:
        >>> fig = qk_means_figure(np.zeros(4), np.ones(4), np.zeros(4), np.ones(4))
    """
    heads = np.arange(len(q_mean))
    fig = go.Figure()
    for label, mean, std, color, shift in (
        ("Q", q_mean, q_std, Q_COLOR, -0.12),
        ("K", k_mean, k_std, K_COLOR, 0.12),
    ):
        fig.add_trace(
            go.Scatter(
                x=heads + shift,
                y=mean,
                error_y={"type": "data", "array": std, "visible": True},
                mode="markers",
                marker={"color": color, "size": 9},
                name=f"{label} mean ± std",
            )
        )
    fig.add_hline(y=0, line={"color": "gray", "dash": "dot"})
    fig.update_layout(
        title=title or "Q and K per head (tokens 1:)",
        xaxis={"title": "head", "tickmode": "array", "tickvals": heads},
        yaxis_title="activation",
        template=TEMPLATE,
    )
    return fig


def merged_labels(x: np.ndarray, y: np.ndarray, near: float = 0.04) -> list[str]:
    """Head labels for a scatter; labels of points that nearly coincide are joined ("7, 8").

    A point closer than ``near`` of each axis's span to any point of a group joins the group
    (so a row of close points is one group); the group's label goes on its first point, so
    that the labels do not print over each other.

    Example:
        >>> merged_labels(np.array([0.0, 0.5, 0.53, 0.56, 1.0]), np.array([0.0, 1, 1, 1, 0]))
        ['0', '1, 2, 3', '', '', '4']
    """
    span = [float(np.ptp(v)) or 1.0 for v in (x, y)]
    groups: list[list[int]] = []
    for i in range(len(x)):
        for group in groups:
            if any(
                abs(x[i] - x[j]) < near * span[0] and abs(y[i] - y[j]) < near * span[1]
                for j in group
            ):
                group.append(i)
                break
        else:
            groups.append([i])
    labels = [""] * len(x)
    for group in groups:
        labels[group[0]] = ", ".join(str(i) for i in group)
    return labels


def qk_scatter_figure(
    q_mean: np.ndarray, k_mean: np.ndarray, q_std: np.ndarray, k_std: np.ndarray, title: str = ""
) -> go.Figure:
    """Q against K per head: means (left) and standard deviations (right), labelled by head.

    Example:
        >>> fig = qk_scatter_figure(np.zeros(4), np.zeros(4), np.ones(4), np.ones(4))
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("means", "standard deviations"))
    for col, (x, y) in enumerate(((q_mean, k_mean), (q_std, k_std)), start=1):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="markers+text",
                text=merged_labels(x, y),
                textposition="top center",
                hovertext=[f"head {h}" for h in range(len(x))],
                marker={"size": 10, "color": SAME_COLOR},
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="Q", row=1, col=col)
        pad = 0.12 * (np.ptp(y) or 1.0)  # room for the labels above the top points
        fig.update_yaxes(title_text="K", range=[y.min() - pad, y.max() + 2 * pad], row=1, col=col)
    fig.update_layout(title=title or "Q vs K per head", template=TEMPLATE)
    return fig


def raw_strip_figure(raw_same: np.ndarray, raw_diff: np.ndarray, title: str = "") -> go.Figure:
    """A strip plot of raw same-head and different-head scores with a zero line.

    Example:
        >>> fig = raw_strip_figure(np.random.randn(30), np.random.randn(90))
    """
    fig = go.Figure()
    for label, values, color in (
        ("same head", raw_same, SAME_COLOR),
        ("different heads", raw_diff, DIFF_COLOR),
    ):
        fig.add_trace(strip_trace(values, label, color))
    fig.add_hline(y=0, line={"color": "black", "dash": "dash"})
    fig.update_layout(
        title=title or "Raw attention scores (last query vs keys 1..n-2)",
        yaxis_title="raw score q·k",
        showlegend=False,
        template=TEMPLATE,
    )
    return fig


def raw_hist_figure(
    raw_same: np.ndarray,
    raw_diff: np.ndarray,
    grid: np.ndarray | None = None,
    kde_same: np.ndarray | None = None,
    kde_diff: np.ndarray | None = None,
    title: str = "",
) -> go.Figure:
    """Histograms of raw same/different-head scores (zero line); KDE curves on a second axis.

    Example:
        >>> fig = raw_hist_figure(np.random.randn(30), np.random.randn(90))
    """
    fig = make_subplots(specs=[[{"secondary_y": grid is not None}]])
    for label, values, color in (
        ("same head", raw_same, SAME_COLOR),
        ("different heads", raw_diff, DIFF_COLOR),
    ):
        fig.add_trace(
            go.Histogram(
                x=values,
                name=label,
                histnorm="probability density",
                opacity=0.5,
                marker_color=color,
                nbinsx=40,
            )
        )
    if grid is not None:
        for label, curve, color in (
            ("same (KDE)", kde_same, SAME_COLOR),
            ("different (KDE)", kde_diff, DIFF_COLOR),
        ):
            if curve is not None:
                fig.add_trace(
                    go.Scatter(x=grid, y=curve, name=label, line={"color": color}),
                    secondary_y=True,
                )
        fig.update_yaxes(title_text="KDE (max = 1)", secondary_y=True, rangemode="tozero")
    fig.add_vline(x=0, line={"color": "black", "dash": "dash"})
    fig.update_layout(
        title=title or "Raw attention scores: same vs different heads",
        barmode="overlay",
        xaxis_title="raw score q·k",
        yaxis_title="density",
        template=TEMPLATE,
    )
    return fig


def attn_kde_figure(
    grid: np.ndarray, kde_final: np.ndarray, kde_self: np.ndarray, title: str = ""
) -> go.Figure:
    """Max-normalised KDEs of softmax weights: final token on previous tokens, self-attention.

    Example:
        >>> g = np.linspace(0, 1, 300)
        >>> fig = attn_kde_figure(g, np.exp(-g), np.exp(-g))
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=grid, y=kde_final, name="final token → previous tokens"))
    fig.add_trace(go.Scatter(x=grid, y=kde_self, name="self-attention (tokens 1:)"))
    fig.update_layout(
        title=title or "Softmax attention weights (KDE)",
        xaxis_title="attention weight",
        yaxis_title="density (max = 1)",
        template=TEMPLATE,
    )
    return fig


def patterns_figure(
    pattern: np.ndarray, tokens: Sequence[str] | None = None, title: str = "", cols: int = 3
) -> go.Figure:
    """A grid of per-head attention-pattern heatmaps (``pattern``: ``[head, q_pos, k_pos]``).

    Example:
        >>> fig = patterns_figure(np.tril(np.ones((4, 5, 5))) / np.arange(1, 6)[:, None])
    """
    n_heads, n_pos, _ = pattern.shape
    cols = max(1, min(cols, n_heads))
    rows = math.ceil(n_heads / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"head {h}" for h in range(n_heads)],
        horizontal_spacing=0.04,
        vertical_spacing=0.08 if rows > 1 else 0.0,
    )
    labels = (
        [f"{i}:{show_token(t)}" for i, t in enumerate(tokens)] if tokens else list(range(n_pos))
    )
    for h in range(n_heads):
        fig.add_trace(
            go.Heatmap(
                z=pattern[h],
                x=labels,
                y=labels,
                zmin=0,
                zmax=1,
                colorscale=SEQUENTIAL,
                showscale=h == 0,
                hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>",
            ),
            row=h // cols + 1,
            col=h % cols + 1,
        )
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(
        title=title or "Attention patterns per head (rows: query, columns: key)",
        height=320 * rows + 80,
        width=320 * cols + 120,
        template=TEMPLATE,
    )
    return fig


def negative_by_layer_figure(
    layers: Sequence[int],
    series: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, str]],
    course_layer: int | None = None,
    title: str = "",
) -> go.Figure:
    """Share of negative raw scores per layer with its interval band, one line per pair kind.

    Args:
        layers: Layer indices.
        series: ``(label, fraction, low, high, colour)`` per pair kind, each ``[layer]``.
        course_layer: A layer to ring (the course's).
        title: Figure title.

    Example:
        >>> f = np.array([0.6, 0.7])
        >>> fig = negative_by_layer_figure([0, 1], [("same", f, f - 0.1, f + 0.1, "blue")])
        >>> [t.name for t in fig.data]
        ['same', 'same: 95% interval']
    """
    fig = go.Figure()
    x = list(layers)
    for label, frac, low, high, colour in series:
        fig.add_trace(
            go.Scatter(x=x, y=frac, mode="lines+markers", name=label, line={"color": colour})
        )
        fig.add_trace(band_trace(x, low, high, colour, f"{label}: 95% interval", opacity=0.18))
        if course_layer in x:
            i = x.index(course_layer)
            fig.add_trace(
                go.Scatter(
                    x=[course_layer],
                    y=[frac[i]],
                    mode="markers",
                    marker={"size": 14, "symbol": "circle-open", "color": colour},
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
    fig.add_hline(y=0.5, line={"color": "black", "dash": "dash"})
    fig.update_layout(
        title=title or "Share of negative raw scores per layer",
        template=TEMPLATE,
        xaxis_title="layer",
        yaxis={"title": "share negative", "range": [0, 1]},
    )
    return fig


def figures(result: Any) -> dict[str, go.Figure]:
    """All figures of a heads `ExperimentResult`, keyed by file name.

    Example:
        >>> from mechprobe.experiments import heads
        >>> config = heads.resolve(heads.HeadsConfig(n_boot=100), model_shape(model))
        >>> res = heads.run(config, model, (hf, tok))
        >>> sorted(figures(res))[:3]
        ['attn_kde', 'kde_bandwidths', 'negative_by_layer']
    """
    a, s = result.arrays, result.summary
    where = f"layer {s['layer']}"
    series = [
        (
            "same-head pairs",
            a["layer_frac_same"],
            a["layer_frac_same_low"],
            a["layer_frac_same_high"],
            SAME_COLOR,
        )
    ]
    if np.isfinite(a["layer_frac_diff"]).any():
        series.append(
            (
                "different-head pairs",
                a["layer_frac_diff"],
                a["layer_frac_diff_low"],
                a["layer_frac_diff_high"],
                DIFF_COLOR,
            )
        )
    demo = [(f"factor {b:g}", a[f"kde_demo_{b:g}"], False) for b in s["kde_demo_bandwidths"]]
    demo.append((f"{s['bandwidth']} (used)", a["kde_final_to_prev"], True))
    return {
        "negative_by_layer": negative_by_layer_figure(
            s["layers"],
            series,
            s["layer"],
            "Share of negative raw scores, every query position, per layer",
        ),
        "softmax_groups": softmax_groups_figure(
            [
                ("final token -> previous", a["attn_final_to_prev"]),
                ("self (tokens 1:)", a["attn_self"]),
                ("first token, self", a["attn_first_self"]),
            ],
            f"Softmax weights in three groups ({where})",
        ),
        "kde_bandwidths": kde_bandwidths_figure(
            a["kde_grid"], demo, f"KDE of the final token's weights, several bandwidths ({where})"
        ),
        "qk_means": qk_means_figure(
            a["q_mean"], a["q_std"], a["k_mean"], a["k_std"], f"Q and K per head ({where})"
        ),
        "qk_scatter": qk_scatter_figure(
            a["q_mean"], a["k_mean"], a["q_std"], a["k_std"], f"Q vs K per head ({where})"
        ),
        "raw_strip": raw_strip_figure(a["raw_same"], a["raw_diff"], f"Raw scores ({where})"),
        "raw_hist": raw_hist_figure(
            a["raw_same"],
            a["raw_diff"],
            a.get("raw_kde_grid"),
            a.get("kde_raw_same"),
            a.get("kde_raw_diff"),
            f"Raw scores: same vs different heads ({where})",
        ),
        "attn_kde": attn_kde_figure(
            a["kde_grid"], a["kde_final_to_prev"], a["kde_self"], f"Softmax weights ({where})"
        ),
        "patterns": patterns_figure(a["pattern"], s.get("tokens"), f"Attention patterns ({where})"),
    }
