"""Figures of the replacement experiment: the check plots and the scaling plots.

Every function takes arrays and returns a plotly figure; nothing is computed or shown here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COMPONENT_NAMES = ("Q", "K", "V")
BASE_COLOR = "rgba(120,120,120,0.6)"


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
        fillcolor="red",
        opacity=0.15,
        line_width=0,
        annotation_text="zeroed head",
    )
    fig.update_layout(title=title, xaxis_title="Q|K|V unit", yaxis_title="activation")
    return fig


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
    fig.update_layout(title=title, xaxis_title="MLP unit (hook_pre)", yaxis_title="activation")
    return fig


def scaling_figure(
    values: np.ndarray,
    base_values: np.ndarray,
    norms: np.ndarray,
    base_norms: np.ndarray,
    title: str,
    scale_layer: int,
) -> go.Figure:
    """Stacked hidden-vector values per hidden state, and their norm per layer, baseline overlaid.

    Args:
        values: ``[n_layers + 1, d_model]`` under scaling (HF ``hidden_states`` convention).
        base_values: The same without intervention.
        norms: ``[n_layers + 1]`` L2 norms under scaling.
        base_norms: The baseline norms.
        title: Figure title.
        scale_layer: The scaled block (its output is hidden state ``scale_layer + 1``).

    Example:
        >>> fig = scaling_figure(np.ones((3, 8)), np.ones((3, 8)), np.ones(3), np.ones(3), "t", 0)
    """
    n, d = values.shape
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("values per hidden state", "L2 norm per hidden state"),
    )
    xs = np.repeat(np.arange(n), d)
    fig.add_trace(
        go.Scatter(
            x=xs - 0.15,
            y=base_values.reshape(-1),
            mode="markers",
            name="baseline values",
            marker={"color": BASE_COLOR, "size": 3},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=xs + 0.15,
            y=values.reshape(-1),
            mode="markers",
            name="scaled values",
            marker={"size": 3},
        ),
        row=1,
        col=1,
    )
    layers = np.arange(n)
    fig.add_trace(
        go.Scatter(x=layers, y=base_norms, name="baseline norm", line={"color": "grey"}),
        row=1,
        col=2,
    )
    fig.add_trace(go.Scatter(x=layers, y=norms, name="scaled norm"), row=1, col=2)
    for col in (1, 2):
        fig.add_vline(x=scale_layer + 1, line_dash="dot", row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title_text="hidden state")
    fig.update_layout(
        title=f"{title}<br><sup>hidden state 0 = embeddings, last = after the final norm; "
        f"dotted: block {scale_layer}'s output</sup>",
        width=1100,
    )
    return fig


def norms_figure(norms: dict[str, np.ndarray], title: str) -> go.Figure:
    """Norm of the followed hidden vector per hidden state, one line per condition.

    Example:
        >>> fig = norms_figure({"baseline": np.ones(3)}, "t")
    """
    fig = go.Figure()
    for name, y in norms.items():
        fig.add_trace(go.Scatter(x=np.arange(len(y)), y=y, name=name))
    fig.update_layout(
        title=title, xaxis_title="hidden state", yaxis_title="L2 norm", yaxis_type="log"
    )
    return fig


def figures(result: Any, scale_names: Sequence[str] | None = None) -> dict[str, go.Figure]:
    """All figures of a replacement result: ``check_qkv``, ``check_mlp``, ``scale_*``, ``norms``.

    Example:
        >>> figs = figures(run_replace(config))
        >>> sorted(figs)
        ['check_mlp', 'check_qkv', 'norms', 'scale_0.1', 'scale_10']
    """
    a, s = result.arrays, result.summary
    cfg = s["config"]
    model, tok = s["model"], s["position_token"]
    figs = {
        "check_qkv": qkv_check(
            a["baseline_qkv"],
            a["zero_head_qkv"],
            a["qkv_component"],
            tuple(s["zeroed_qkv_units"]),
            f"{model}: Q|K|V units of layer {cfg['head_layer']} at {tok!r}, "
            f"{cfg['component'].upper()} head {cfg['head']} zeroed",
        ),
        "check_mlp": mlp_check(
            a["baseline_mlp_pre"],
            a["mlp_noise_mlp_pre"],
            a["noise_units"],
            f"{model}: MLP units (hook_pre) of layer {cfg['mlp_layer']} at {tok!r}, "
            f"units {cfg['mlp_units']} ~ N({cfg['noise_mean']:g}, {cfg['noise_std']:g}²)",
        ),
    }
    names = list(scale_names) if scale_names is not None else list(s["scaling_finding"])
    for name in names:
        factor = s["scaling_finding"][name]["factor"]
        figs[name] = scaling_figure(
            a[f"{name}_values"],
            a["baseline_values"],
            a[f"{name}_norm"],
            a["baseline_norm"],
            f"{model}: block {cfg['scale_layer']} output x{factor:g}, hidden vector at {tok!r}",
            cfg["scale_layer"],
        )
    figs["norms"] = norms_figure(
        {c: a[f"{c}_norm"] for c in s["conditions"]},
        f"{model}: norm of the hidden vector at {tok!r} per hidden state",
    )
    return figs
