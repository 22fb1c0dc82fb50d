"""Figures of the negation-tuning experiment (E1); they draw arrays, they compute nothing.

`figures` picks the arrays out of the result of `mechprobe.experiments.negation.run` and builds
every figure:

* ``laminar``: per layer, percent significant units, mean accuracy of all units and of the
  significant units with beta > 0; Q/K/V (and Q|K|V together) beside the MLP.
* ``beta_by_unit``: beta against unit index for the detail layer, significant units marked.
* ``volcano``: beta against -log10 p for the detail layer, with the significance threshold.
* ``best_unit_probabilities``: the best unit's predicted P(negation) per sample.
* ``best_unit_heatmap``: the best unit's activation over the first negation windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechprobe.plots.theme import COLOURS, DIVERGING, TEMPLATE, show_token

GROUP_COLORS = {g: COLOURS[g] for g in ("qkv", "q", "k", "v", "mlp")}
CLASS_COLORS = {0: COLOURS["class0"], 1: COLOURS["class1"]}
CLASS_NAMES = {0: "affirmation", 1: "negation"}
CURVES = (
    ("percent_significant", "% significant"),
    ("mean_accuracy", "accuracy: all units"),
    ("mean_accuracy_sig_pos", "accuracy: sig., beta>0"),
)


def laminar_figure(
    layers: Sequence[int],
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    title: str = "",
) -> go.Figure:
    """The course's laminar plot: one row per figure, Q/K/V and MLP side by side.

    Args:
        layers: Layer indices (x axis).
        curves: ``{group: {figure: values per layer}}`` with groups among qkv, q, k, v, mlp and
            figures ``percent_significant``, ``mean_accuracy``, ``mean_accuracy_sig_pos``
            (optionally ``mean_cv_accuracy``, drawn dotted in the accuracy row).
        title: Figure title.

    Example:
        >>> fig = laminar_figure([0, 1], {"mlp": {"percent_significant": [1, 2]}})
    """
    panels = [p for p in ("qkv", "mlp") if any(g in curves for g in _panel_groups(p))]
    fig = make_subplots(
        rows=len(CURVES),
        cols=len(panels),
        shared_xaxes=True,
        column_titles=["Q / K / V units" if p == "qkv" else "MLP units" for p in panels],
        vertical_spacing=0.06,
        horizontal_spacing=0.1,
    )
    for col, panel in enumerate(panels, start=1):
        for group in _panel_groups(panel):
            if group not in curves:
                continue
            style = {"color": GROUP_COLORS[group], "dash": "dash" if group == "qkv" else "solid"}
            for row, (key, _) in enumerate(CURVES, start=1):
                fig.add_trace(
                    go.Scatter(
                        x=list(layers),
                        y=list(curves[group].get(key, [])),
                        mode="lines+markers",
                        line=style,
                        name=group.upper() if group != "qkv" else "Q|K|V",
                        legendgroup=group,
                        showlegend=row == 1,
                    ),
                    row=row,
                    col=col,
                )
            if "mean_cv_accuracy" in curves[group]:
                fig.add_trace(
                    go.Scatter(
                        x=list(layers),
                        y=list(curves[group]["mean_cv_accuracy"]),
                        mode="lines",
                        line={"color": GROUP_COLORS[group], "dash": "dot"},
                        name=f"{group.upper() if group != 'qkv' else 'Q|K|V'} (cross-validated)",
                        legendgroup=group,
                    ),
                    row=2,
                    col=col,
                )
        fig.update_xaxes(title_text="layer", row=len(CURVES), col=col)
    for row, (_, label) in enumerate(CURVES, start=1):
        fig.update_yaxes(title_text=label, row=row)
    fig.update_layout(
        title={"text": title or "Negation tuning per layer", "font": {"size": 14}},
        template=TEMPLATE,
        width=1100,
        height=260 * len(CURVES) + 120,
    )
    return fig


def _panel_groups(panel: str) -> tuple[str, ...]:
    return ("qkv", "q", "k", "v") if panel == "qkv" else ("mlp",)


def beta_by_unit_figure(
    panels: Mapping[str, Mapping[str, Any]],
    title: str = "",
) -> go.Figure:
    """Beta against unit index, one row per component; significant units highlighted.

    Args:
        panels: ``{component: {"groups": {group: (start, stop)}, "beta": [units],
            "significant": [units] bool}}``.
        title: Figure title.

    Example:
        >>> fig = beta_by_unit_figure({"mlp": {"groups": {"mlp": (0, 3)},
        ...     "beta": np.ones(3), "significant": np.array([True, False, False])}})
    """
    comps = list(panels)
    fig = make_subplots(rows=len(comps), cols=1, subplot_titles=[c.upper() for c in comps])
    for row, comp in enumerate(comps, start=1):
        beta = np.asarray(panels[comp]["beta"])
        sig = np.asarray(panels[comp]["significant"], dtype=bool)
        for group, (start, stop) in panels[comp]["groups"].items():
            idx = np.arange(start, stop)
            for is_sig in (False, True):
                sel = idx[sig[start:stop] == is_sig]
                fig.add_trace(
                    go.Scattergl(
                        x=sel,
                        y=beta[sel],
                        mode="markers",
                        marker={
                            "color": GROUP_COLORS[group],
                            "size": 6 if is_sig else 3,
                            "opacity": 1.0 if is_sig else 0.35,
                        },
                        name=f"{group.upper()}{' significant' if is_sig else ''}",
                    ),
                    row=row,
                    col=1,
                )
        fig.update_xaxes(title_text="unit index", row=row, col=1)
        fig.update_yaxes(title_text="beta", row=row, col=1)
    fig.update_layout(title=title or "beta per unit", template=TEMPLATE, height=350 * len(comps))
    return fig


def volcano_figure(
    panels: Mapping[str, Mapping[str, Any]],
    title: str = "",
) -> go.Figure:
    """Beta against -log10 p, one column per component, with the significance threshold.

    Args:
        panels: ``{component: {"groups": {group: (start, stop)}, "beta": [units],
            "neglog10p": [units], "threshold": -log10 of the p threshold}}``.
        title: Figure title.

    Example:
        >>> fig = volcano_figure({"mlp": {"groups": {"mlp": (0, 2)}, "beta": np.ones(2),
        ...     "neglog10p": np.ones(2), "threshold": 3.0}})
    """
    comps = list(panels)
    fig = make_subplots(rows=1, cols=len(comps), subplot_titles=[c.upper() for c in comps])
    for col, comp in enumerate(comps, start=1):
        beta = np.asarray(panels[comp]["beta"])
        nlp = np.asarray(panels[comp]["neglog10p"])
        for group, (start, stop) in panels[comp]["groups"].items():
            fig.add_trace(
                go.Scattergl(
                    x=beta[start:stop],
                    y=nlp[start:stop],
                    mode="markers",
                    marker={"color": GROUP_COLORS[group], "size": 4, "opacity": 0.6},
                    name=group.upper(),
                ),
                row=1,
                col=col,
            )
        fig.add_hline(
            y=panels[comp]["threshold"],
            line={"color": "black", "dash": "dash"},
            annotation_text="threshold",
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="beta", row=1, col=col)
        fig.update_yaxes(title_text="-log10 p", row=1, col=col)
    fig.update_layout(title=title or "beta vs -log10 p", template=TEMPLATE, height=500)
    return fig


def probabilities_figure(probability: np.ndarray, labels: np.ndarray, title: str = "") -> go.Figure:
    """Predicted P(negation) of one unit's probe per sample (text order), by class.

    Example:
        >>> fig = probabilities_figure(np.array([0.2, 0.9]), np.array([0, 1]))
    """
    fig = go.Figure()
    idx = np.arange(len(labels))
    for label in (0, 1):
        sel = labels == label
        fig.add_trace(
            go.Scatter(
                x=idx[sel],
                y=probability[sel],
                mode="markers",
                marker={"color": CLASS_COLORS[label], "size": 5},
                name=f"{CLASS_NAMES[label]} (label {label})",
            )
        )
    fig.add_hline(y=0.5, line={"color": "gray", "dash": "dot"})
    fig.update_layout(
        title=title or "best unit: predicted probability of negation",
        xaxis_title="sample (text order)",
        yaxis={"title": "P(negation)", "range": [-0.02, 1.02]},
        template=TEMPLATE,
    )
    return fig


def heatmap_figure(
    values: np.ndarray,
    tokens: Sequence[Sequence[str]],
    offsets: Sequence[int],
    row_labels: Sequence[str] | None = None,
    title: str = "",
) -> go.Figure:
    """One unit's activation per token over several windows, tokens written in the cells.

    Args:
        values: ``[windows, columns]`` activations.
        tokens: The token string of each cell.
        offsets: Column positions relative to the target (0 = target).
        row_labels: One label per window (default: its number).
        title: Figure title.

    Example:
        >>> fig = heatmap_figure(np.zeros((1, 2)), [["a", " not"]], [-1, 0])
    """
    cells = [[show_token(t) for t in row] for row in tokens]
    rows = list(row_labels) if row_labels is not None else [str(i) for i in range(len(cells))]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=[str(o) for o in offsets],
            y=rows,
            text=cells,
            texttemplate="%{text}",
            textfont={"size": 9},
            colorscale=DIVERGING,
            zmid=0,
            colorbar={"title": "activation"},
            hovertemplate="offset %{x}<br>%{text}<br>%{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or "best unit over negation windows",
        xaxis_title="position relative to the target",
        yaxis={"title": "window (target position)", "autorange": "reversed"},
        template=TEMPLATE,
        height=max(400, 28 * len(rows) + 150),
        width=1200,
    )
    return fig


def figures(result: Any) -> dict[str, go.Figure]:
    """Every figure of a negation result (``run_negation``'s `ExperimentResult`).

    Example:
        >>> from mechprobe.experiments.result import ExperimentResult
        >>> figures(ExperimentResult("negation"))  # doctest: +SKIP
    """
    s, a = result.summary, result.arrays
    layers = list(s["layers"])
    curves: dict[str, dict[str, list[float]]] = {}
    for row in s["per_layer"]:
        for group, figs in row.items():
            if group == "layer":
                continue
            for key, value in figs.items():
                curves.setdefault(group, {}).setdefault(key, []).append(value)
    rule = "Bonferroni" if s["correction"] == "bonferroni" else "Benjamini-Hochberg"
    out = {
        "laminar": laminar_figure(
            layers,
            curves,
            title=f"Negation tuning per layer<br><sup>n = {s['n_affirmation']} "
            f"affirmation / {s['n_negation']} negation; {rule}, alpha {s['alpha']:g}</sup>",
        )
    }

    detail = s["detail_layer"]
    row = layers.index(detail)
    slices = s["qkv_layout"]["slices"]
    beta_panels, volcano_panels = {}, {}
    n_sep = 0
    for comp in s["components"]:
        beta = a[f"{comp}_beta"][row].astype(np.float64)
        n_sep += int(np.isinf(beta).sum())
        beta = np.where(np.isfinite(beta), beta, np.nan)  # separated units cannot be drawn
        n = beta.shape[0]
        groups = (
            {g: tuple(slices[g]) for g in ("q", "k", "v")} if comp == "qkv" else {"mlp": (0, n)}
        )
        beta_panels[comp] = {
            "groups": groups,
            "beta": beta,
            "significant": a[f"{comp}_significant"][row],
        }
        p = np.maximum(a[f"{comp}_pvalue"][row], np.finfo(np.float64).tiny)
        volcano_panels[comp] = {
            "groups": groups,
            "beta": beta,
            "neglog10p": -np.log10(p),
            "threshold": -np.log10(s["thresholds"][comp]["p"][row]),
        }
    note = f"; {n_sep} separated units (infinite beta) not drawn" if n_sep else ""
    out["beta_by_unit"] = beta_by_unit_figure(
        beta_panels, title=f"Beta per unit, layer {detail}{note}"
    )
    out["volcano"] = volcano_figure(
        volcano_panels, title=f"Beta vs -log10 p, layer {detail} ({rule}){note}"
    )

    best = s.get("best_unit")
    if best is not None and "best_unit_probability" in a:
        where = best["group"].upper() + (
            f" head {best['head']} dim {best['dim']}" if "head" in best else f" {best['neuron']}"
        )
        name = f"layer {best['layer']} {where} (unit {best['unit']})"
        out["best_unit_probabilities"] = probabilities_figure(
            a["best_unit_probability"],
            a["labels"],
            title=f"Best unit {name}, accuracy {best['accuracy']:.3f}",
        )
        out["best_unit_heatmap"] = heatmap_figure(
            a["best_unit_heatmap"],
            best["heatmap_tokens"],
            best["heatmap_offsets"],
            row_labels=[f"#{i} @{p}" for i, p in enumerate(best["heatmap_positions"])],
            title=f"Best unit {name} over the first negation windows",
        )
    return out
