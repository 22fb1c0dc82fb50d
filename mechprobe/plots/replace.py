"""Figures of the replacement experiment: the check plots and the scaling plots.

Every function takes arrays and returns a plotly figure; nothing is computed or shown here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechprobe.plots.theme import COLOURS, band_trace, themed

COMPONENT_NAMES = ("Q", "K", "V")
BASE_COLOR = COLOURS["baseline"]


def qkv_check(
    baseline: np.ndarray,
    intervened: np.ndarray,
    component: np.ndarray,
    zeroed: tuple[int, int],
    title: str,
) -> go.Figure:
    """All Q|K|V units of a layer at one position, baseline vs. intervened, zeroed span shaded.

    Args:
        baseline: ``[units]`` Q|K|V values without intervention.
        intervened: ``[units]`` the same with the head zeroed.
        component: ``[units]`` 0/1/2 for Q/K/V.
        zeroed: ``(start, stop)`` of the zeroed units.
        title: Figure title.

    Example:
        >>> fig = qkv_check(np.ones(192), np.zeros(192), np.repeat([0, 1, 2], 64), (96, 112), "t")
    """
    x = np.arange(len(baseline))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=x, y=baseline, mode="markers", name="baseline", marker={"color": BASE_COLOR})
    )
    for c, label in enumerate(COMPONENT_NAMES):
        m = component == c
        fig.add_trace(
            go.Scatter(x=x[m], y=intervened[m], mode="markers", name=f"{label} (intervened)")
        )
    fig.add_vrect(
        x0=zeroed[0] - 0.5,
        x1=zeroed[1] - 0.5,
        fillcolor=COLOURS["accent"],
        opacity=0.15,
        line_width=0,
        annotation_text="zeroed head",
    )
    return themed(fig, title=title, xaxis_title="Q|K|V unit", yaxis_title="activation")


def mlp_check(
    baseline: np.ndarray, intervened: np.ndarray, noised: np.ndarray, title: str
) -> go.Figure:
    """All MLP input units at one position, baseline vs. with noise in the ``noised`` units.

    Example:
        >>> fig = mlp_check(np.zeros(256), np.ones(256), np.arange(0, 256, 2), "t")
    """
    x = np.arange(len(baseline))
    keep = np.setdiff1d(x, noised)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=x, y=baseline, mode="markers", name="baseline", marker={"color": BASE_COLOR})
    )
    fig.add_trace(go.Scatter(x=noised, y=intervened[noised], mode="markers", name="noised units"))
    fig.add_trace(
        go.Scatter(x=keep, y=intervened[keep], mode="markers", name="other units (intervened)")
    )
    return themed(fig, title=title, xaxis_title="MLP unit (hook_pre)", yaxis_title="activation")


def scaling_figure(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray]],
    base_values: np.ndarray,
    base_norms: np.ndarray,
    scale_layer: int,
    title: str,
) -> go.Figure:
    """Per scale factor (one row each): hidden-vector values per hidden state, and their norm.

    Args:
        rows: ``(label, values [n_layers + 1, d_model], norms [n_layers + 1])`` per factor
            (HF ``hidden_states`` convention: embeddings first, last after the final norm).
        base_values: The values without intervention.
        base_norms: The baseline norms.
        scale_layer: The scaled block (its output is hidden state ``scale_layer + 1``).
        title: Figure title.

    Example:
        >>> fig = scaling_figure([("x0.1", np.ones((3, 8)), np.ones(3))], np.ones((3, 8)),
        ...                      np.ones(3), 0, "t")
    """
    n, d = base_values.shape
    titles = [t for label, _, _ in rows for t in (f"{label}: values", f"{label}: L2 norm")]
    fig = make_subplots(rows=len(rows), cols=2, subplot_titles=titles, vertical_spacing=0.12)
    xs = np.repeat(np.arange(n), d)
    # WebGL markers: the course plots every value (~70,000 points on smollm2); as SVG their PNG
    # took 7-9 s of a run's ~20 s export, as WebGL 1.3-1.9 s, and the picture is the same.
    for r, (_, values, norms) in enumerate(rows, start=1):
        first = r == 1
        for x, y, name, marker in (
            (xs - 0.15, base_values.reshape(-1), "baseline", {"color": BASE_COLOR, "size": 3}),
            (xs + 0.15, values.reshape(-1), "scaled", {"color": COLOURS["accent"], "size": 3}),
        ):
            fig.add_trace(
                go.Scattergl(x=x, y=y, mode="markers", name=f"{name} values", marker=marker,
                           legendgroup=name, showlegend=first),
                row=r, col=1,
            )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=np.arange(n), y=base_norms, name="baseline norm",
                       line={"color": "grey"}, showlegend=first),
            row=r, col=2,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=np.arange(n), y=norms, name="scaled norm",
                       line={"color": COLOURS["accent"]}, showlegend=first),
            row=r, col=2,
        )  # fmt: skip
        fig.update_yaxes(type="log", row=r, col=2)
        for col in (1, 2):
            fig.add_vline(x=scale_layer + 1, line_dash="dot", row=r, col=col)
    fig.update_xaxes(title_text="hidden state", row=len(rows))
    return themed(
        fig,
        title=f"{title}<br><sup>hidden state 0 = embeddings, last = after the final norm; "
        f"dotted: block {scale_layer}'s output</sup>",
        width=1100,
        height=330 * len(rows) + 120,
    )


def norms_figure(norms: dict[str, np.ndarray], title: str) -> go.Figure:
    """Norm of the followed hidden vector per hidden state, one line per condition.

    Example:
        >>> fig = norms_figure({"baseline": np.ones(3)}, "t")
    """
    fig = go.Figure()
    for name, y in norms.items():
        fig.add_trace(go.Scatter(x=np.arange(len(y)), y=y, name=name))
    return themed(
        fig, title=title, xaxis_title="hidden state", yaxis_title="L2 norm", yaxis_type="log"
    )


def many_figure(
    bands: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], scale_layer: int, title: str
) -> go.Figure:
    """Median norm ratio per hidden state with its 95% band, one line per scale factor.

    Example:
        >>> r = np.array([1.0, 0.1, 0.5])
        >>> fig = many_figure([("x0.1", r, r * 0.8, r * 1.2)], 0, "t")
        >>> [t.name for t in fig.data]
        ['x0.1', 'x0.1: central 95%']
    """
    fig = go.Figure()
    palette = (COLOURS["accent"], COLOURS["mlp"], COLOURS["q"], COLOURS["v"])
    for i, (label, median, low, high) in enumerate(bands):
        x = list(range(len(median)))
        colour = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=x, y=median, name=label, line={"color": colour}))
        fig.add_trace(band_trace(x, low, high, colour, f"{label}: central 95%"))
    fig.add_vline(x=scale_layer + 1, line_dash="dot")
    fig.add_hline(y=1.0, line={"color": "grey", "width": 1})
    return themed(
        fig,
        title=title,
        yaxis={"title": "norm ratio to baseline", "type": "log"},
        xaxis_title="hidden state (0 = embeddings, n = block n-1's output)",
    )


def figures(result: Any) -> dict[str, go.Figure]:
    """All figures of a replacement result: ``norms``, ``check_qkv``, ``check_mlp``, ``scaling``.

    Example:
        >>> from mechprobe.experiments import replace as e4
        >>> cfg = e4.resolve(e4.ReplaceConfig(n_boot=100), model_shape(model))
        >>> sorted(figures(e4.run(cfg, model, (hf, tok))))
        ['check_mlp', 'check_qkv', 'many', 'norms', 'scaling']
    """
    a, s = result.arrays, result.summary
    cfg = s["settings"]
    tok = s["position_token"]
    bands = [
        (f"x{f:g}", a[f"{n}_many_median"], a[f"{n}_many_low"], a[f"{n}_many_high"])
        for n, f in s["scales"].items()
    ]
    return {
        "many": many_figure(
            bands,
            cfg["scale_layer"],
            f"Norm ratio per hidden state, {s['many']['n_sentences']} sentences x every position",
        ),
        "norms": norms_figure(
            {c: a[f"{c}_norm"] for c in s["conditions"]},
            f"Norm of the hidden vector at {tok!r} per hidden state",
        ),
        "check_qkv": qkv_check(
            a["baseline_qkv"],
            a["zero_head_qkv"],
            a["qkv_component"],
            tuple(s["zeroed_qkv_units"]),
            f"Q|K|V units of layer {cfg['head_layer']} at {tok!r}, "
            f"{cfg['component'].upper()} head {cfg['head']} zeroed",
        ),
        "check_mlp": mlp_check(
            a["baseline_mlp_pre"],
            a["mlp_noise_mlp_pre"],
            a["noise_units"],
            f"MLP units (hook_pre) of layer {cfg['mlp_layer']} at {tok!r}, "
            f"units {cfg['mlp_units']} ~ N({cfg['noise_mean']:g}, {cfg['noise_std']:g}²)",
        ),
        "scaling": scaling_figure(
            [(f"x{f:g}", a[f"{n}_values"], a[f"{n}_norm"]) for n, f in s["scales"].items()],
            a["baseline_values"],
            a["baseline_norm"],
            cfg["scale_layer"],
            f"Block {cfg['scale_layer']} output scaled, hidden vector at {tok!r}",
        ),
    }
