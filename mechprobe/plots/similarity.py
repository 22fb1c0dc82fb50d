"""Figures of the Q/K/V similarity sweep (E3): cosine histograms by depth, heatmaps, moments.

Every function takes arrays and returns a plotly figure; `figures` builds them all from an
`ExperimentResult` of `mechprobe.experiments.similarity.run_similarity`. Histogram counts are
shown as the fraction of a block's pairs in each bin, so blocks of different sizes compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import einops
import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from mechprobe.plots.theme import SEQUENTIAL, TEMPLATE, band_trace

BLOCKS = ("QQ", "KK", "VV", "QK", "QV", "KV")
POSITIONS = ("target", "nontarget")
POSITION_LABELS = {"target": "target", "nontarget": "non-target"}
LOG_FLOOR = 1e-5  # heatmaps: fractions below this show as this
DASHES = ("solid", "dash")  # target, non-target
COMPONENT_COLOURS = {"Q": "#1f77b4", "K": "#ff7f0e", "V": "#2ca02c"}
#: One distinct colour per block (Okabe-Ito): six lines of one hue could not be told apart.
BLOCK_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9")


def _fractions(hist: np.ndarray) -> np.ndarray:
    total = hist.sum(axis=-1, keepdims=True)
    return np.divide(hist, total, out=np.zeros(hist.shape), where=total > 0)


def _depth_colours(n: int) -> list[str]:
    return sample_colorscale(SEQUENTIAL, [i / max(1, n - 1) for i in range(n)])


def histogram_lines(
    hist: np.ndarray,
    edges: np.ndarray,
    layers: Sequence[int],
    *,
    blocks: Sequence[str] = ("QQ", "KV"),
    title: str = "Cosine similarity of units across sentences",
) -> go.Figure:
    """One line per layer (coloured by depth) of the cosine histogram; rows target/non-target.

    Args:
        hist: ``[2, 6, n_layers, 100]`` counts (positions, `BLOCKS`, layers, bins).
        edges: ``[101]`` bin edges.
        layers: Layer index of each histogram.
        blocks: Which blocks to show, one column each.
        title: Figure title.

    Example:
        >>> fig = histogram_lines(np.ones((2, 6, 2, 100)), np.linspace(-1, 1, 101), [0, 1])
    """
    centres = (edges[:-1] + edges[1:]) / 2
    frac = _fractions(hist)
    colours = _depth_colours(len(layers))
    fig = make_subplots(
        rows=len(POSITIONS),
        cols=len(blocks),
        shared_xaxes=True,
        subplot_titles=[f"{b}, {POSITION_LABELS[p]}" for p in POSITIONS for b in blocks],
    )
    for p in range(len(POSITIONS)):
        for c, b in enumerate(blocks):
            bi = BLOCKS.index(b)
            for li, L in enumerate(layers):
                fig.add_trace(
                    go.Scatter(
                        x=centres,
                        y=frac[p, bi, li],
                        mode="lines",
                        line={"color": colours[li], "width": 1.5},
                        name=f"layer {L}",
                        showlegend=False,
                    ),
                    row=p + 1,
                    col=c + 1,
                )
    # Depth colour bar (an invisible marker trace carries it).
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            showlegend=False,
            marker={
                "color": [layers[0], layers[-1]],
                "colorscale": SEQUENTIAL,
                "cmin": layers[0],
                "cmax": layers[-1],
                "colorbar": {"title": "layer"},
                "showscale": True,
            },
        ),
        row=1,
        col=1,
    )
    _clip_first_layer(fig, frac, blocks, layers)
    fig.update_xaxes(title_text="cosine similarity", range=[-1, 1], row=len(POSITIONS))
    fig.update_yaxes(title_text="fraction of pairs", col=1)
    fig.update_layout(title=title, height=650, width=1000, template=TEMPLATE)
    return fig


def _clip_first_layer(
    fig: go.Figure, frac: np.ndarray, blocks: Sequence[str], layers: Sequence[int]
) -> None:
    """Scale each panel to the layers after the first when the first's peak dwarfs them.

    Layer 0's cosines at one token sit at +-1 by construction on rotary models: its Q/K/V are a
    function of that token alone, so each unit is constant across sentences. That spike would
    flatten every other layer to the baseline.
    Such a panel's y axis ends a little above the other layers' highest bin, and a note names
    the first layer's peak, which stays drawn but leaves the panel.
    """
    if len(layers) < 3:
        return
    for p in range(len(POSITIONS)):
        for c, b in enumerate(blocks):
            panel = frac[p, BLOCKS.index(b)]
            first, rest = float(panel[0].max()), float(panel[1:].max())
            if rest <= 0 or first <= 2 * rest:
                continue
            n = p * len(blocks) + c + 1
            fig.update_yaxes(range=[0, 1.15 * rest], row=p + 1, col=c + 1)
            fig.add_annotation(
                text=f"layer {layers[0]} off scale: peak {first:.2f}",
                xref=f"x{n if n > 1 else ''} domain",
                yref=f"y{n if n > 1 else ''} domain",
                x=0.02,
                y=0.98,
                xanchor="left",
                yanchor="top",
                showarrow=False,
                font={"size": 11, "color": "#555"},
                bgcolor="rgba(255,255,255,0.8)",
            )


def heatmaps(
    hist: np.ndarray,
    edges: np.ndarray,
    layers: Sequence[int],
    position: int,
    *,
    title: str = "Cosine similarity by layer",
) -> go.Figure:
    """Layer x cosine heatmaps (log10 fraction of pairs per bin), one panel per block.

    Args:
        hist: ``[2, 6, n_layers, 100]`` counts.
        edges: ``[101]`` bin edges.
        layers: Layer index of each row.
        position: 0 (target) or 1 (non-target).
        title: Figure title (the position is appended).

    Example:
        >>> fig = heatmaps(np.ones((2, 6, 2, 100)), np.linspace(-1, 1, 101), [0, 1], position=0)
    """
    centres = (edges[:-1] + edges[1:]) / 2
    # log10 of the fraction, floored, so the tails stay visible beside a spike.
    frac = np.log10(np.maximum(_fractions(hist[position]), LOG_FLOOR))
    fig = make_subplots(rows=2, cols=3, subplot_titles=list(BLOCKS), shared_yaxes=True)
    for bi, _b in enumerate(BLOCKS):
        fig.add_trace(
            go.Heatmap(
                x=centres,
                y=[str(L) for L in layers],
                z=frac[bi],
                coloraxis="coloraxis",
            ),
            row=bi // 3 + 1,
            col=bi % 3 + 1,
        )
    fig.update_xaxes(title_text="cosine similarity", row=2)
    fig.update_yaxes(title_text="layer", col=1, type="category")
    fig.update_layout(
        title=f"{title}, {POSITION_LABELS[POSITIONS[position]]}",
        coloraxis={
            "colorscale": SEQUENTIAL,
            "cmin": np.log10(LOG_FLOOR),
            "cmax": 0,
            "colorbar": {"title": "log10 fraction"},
        },
        height=650,
        width=1100,
        template=TEMPLATE,
    )
    return fig


def _two_panel_lines(
    panels: Sequence[tuple[str, np.ndarray]],
    series: Sequence[tuple[str, str]],
    layers: Sequence[int],
    *,
    mode: str,
    title: str,
) -> go.Figure:
    """Two side-by-side panels of per-layer lines: one line per series and position.

    ``panels`` holds ``(subtitle, values [2 positions, n_series, n_layers])``; ``series`` holds
    ``(name, colour)``. Target lines are solid, non-target dashed.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=[name for name, _ in panels])
    for col, (_, values) in enumerate(panels):
        for p, pos in enumerate(POSITIONS):
            for si, (name, colour) in enumerate(series):
                fig.add_trace(
                    go.Scatter(
                        x=list(layers),
                        y=values[p, si],
                        mode=mode,
                        line={"color": colour, "dash": DASHES[p]},
                        name=f"{name}, {POSITION_LABELS[pos]}",
                        legendgroup=f"{name}{pos}",
                        showlegend=col == 0,
                    ),
                    row=1,
                    col=col + 1,
                )
    fig.update_xaxes(title_text="layer")
    fig.update_layout(
        title=title,
        height=560,
        width=1000,
        template=TEMPLATE,
        # below the panels, in rows: twelve entries do not fit beside them without scrolling
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
    )
    return fig


def moments_by_layer(
    variance: np.ndarray,
    mean: np.ndarray,
    layers: Sequence[int],
    *,
    title: str = "Mean and variance of Q/K/V units across sentences",
) -> go.Figure:
    """Mean and variance per layer for Q, K and V; target solid, non-target dashed.

    Args:
        variance: ``[2, n_layers, 3]`` per-unit variance (``ddof=0``) averaged within Q, K, V.
        mean: ``[2, n_layers, 3]`` per-unit mean averaged within Q, K, V.
        layers: Layer indices.
        title: Figure title.

    Example:
        >>> fig = moments_by_layer(np.random.rand(2, 2, 3), np.random.rand(2, 2, 3), [0, 1])
    """
    by_component = "position layer component -> position component layer"
    panels = [
        ("mean", einops.rearrange(mean, by_component)),
        ("variance", einops.rearrange(variance, by_component)),
    ]
    series = [(c, COMPONENT_COLOURS[c]) for c in "QKV"]
    return _two_panel_lines(panels, series, layers, mode="lines+markers", title=title)


def cosine_spread(
    cos_std: np.ndarray,
    cos_mean_abs: np.ndarray,
    layers: Sequence[int],
    *,
    title: str = "Spread of unit cosines per layer",
) -> go.Figure:
    """Standard deviation and mean |cos| of each block per layer; target solid, non-target dashed.

    Args:
        cos_std: ``[2, 6, n_layers]``.
        cos_mean_abs: ``[2, 6, n_layers]``.
        layers: Layer indices.
        title: Figure title.

    Example:
        >>> fig = cosine_spread(np.random.rand(2, 6, 2), np.random.rand(2, 6, 2), [0, 1])
    """
    series = list(zip(BLOCKS, BLOCK_COLOURS, strict=True))
    panels = [("std of cosines", cos_std), ("mean |cosine|", cos_mean_abs)]
    return _two_panel_lines(panels, series, layers, mode="lines", title=title)


def depth_figure(
    layers: Sequence[int],
    mean_abs: np.ndarray,
    far_share: np.ndarray,
    band: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    title: str = "Mean |cos| at the target per layer",
) -> go.Figure:
    """The depth profile: mean |cos| per layer (with a band) and the share of |cos| > 0.9.

    Example:
        >>> fig = depth_figure([0, 1], np.array([0.9, 0.4]), np.array([0.8, 0.1]))
        >>> [t.name for t in fig.data]
        ['mean |cos|', 'share |cos| > 0.9']
    """
    fig = go.Figure()
    x = list(layers)
    if band is not None:
        fig.add_trace(band_trace(x, band[0], band[1], "#3a6fb0", "95% bootstrap band"))
    fig.add_trace(
        go.Scatter(
            x=x, y=mean_abs, mode="lines+markers", name="mean |cos|", line={"color": "#3a6fb0"}
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=far_share,
            mode="lines",
            name="share |cos| > 0.9",
            line={"color": "#d1495b", "dash": "dot"},
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="layer",
        yaxis={"title": "value", "range": [0, 1]},
        template=TEMPLATE,
    )
    return fig


def figures(result: Any) -> dict[str, go.Figure]:
    """Build every figure of a similarity result.

    Example:
        >>> from mechprobe.experiments import similarity as e3
        >>> res = e3.run(e3.resolve(e3.SimilarityConfig(), model_shape(model)), model)
        >>> sorted(figures(res))[:2]
        ['cosine_spread', 'depth']
    """
    a = result.arrays
    layers = [int(L) for L in a["layers"]]
    edges = a["hist_edges"]
    band = None
    if "depth_boot" in a:
        band = tuple(np.quantile(a["depth_boot"], [0.025, 0.975], axis=1))
    figs = {
        "depth": depth_figure(layers, a["depth_mean_abs"], a["depth_far_share"], band),
        "histograms_by_depth": histogram_lines(a["hist"], edges, layers),
        "heatmap_target": heatmaps(a["hist"], edges, layers, 0),
        "heatmap_nontarget": heatmaps(a["hist"], edges, layers, 1),
        "moments": moments_by_layer(a["variance"], a["mean"], layers),
        "cosine_spread": cosine_spread(a["cos_std"], a["cos_mean_abs"], layers),
    }
    if "hist_centred" in a:
        centred = "Mean-centred (Pearson) correlation by layer"
        figs["histograms_by_depth_centred"] = histogram_lines(
            a["hist_centred"], edges, layers, title="Mean-centred (Pearson) correlation of units"
        )
        for p, pos in enumerate(POSITIONS):
            figs[f"heatmap_{pos}_centred"] = heatmaps(
                a["hist_centred"], edges, layers, p, title=centred
            )
    return figs
