"""Figures of a probe (and of E1, its negation preset); they draw arrays, they compute nothing.

`figures` picks the arrays out of the result of `mechprobe.experiments.probe.run` and builds
every figure: the laminar profile with its controls, the detail layer's volcano and betas, and
the best unit's probabilities and token heatmap (coloured as the course does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechprobe.experiments.probe_report import chance_of
from mechprobe.plots.theme import COLOURS, TEMPLATE, show_token

FAMILY_COLOURS = {g: COLOURS[g] for g in COLOURS if g in ("qkv", "q", "k", "v", "mlp")}
FAMILY_COLOURS.update({"resid_post": "#66a182", "attn_z": "#b5651d", "mlp_post": "#1b4f72"})
CLASS_COLOURS = (COLOURS["class0"], COLOURS["class1"], "#2a9d8f", "#e9a03b", "#8e6cc0")
LABELS = {
    "qkv": "Q|K|V",
    "q": "Q",
    "k": "K",
    "v": "V",
    "mlp": "MLP",
    "resid_post": "residual",
    "attn_z": "attn z",
    "mlp_post": "MLP out",
}
#: The rows of the laminar figure: (label, curve, dotted companion curve).
ROWS = (
    (
        "% significant (dotted: shuffled labels)",
        "percent_significant",
        "percent_significant_shuffled",
    ),
    ("in-sample accuracy, all units", "mean_accuracy", None),
    ("held-out accuracy (dotted: control task)", "mean_heldout_accuracy", "mean_control_accuracy"),
    ("selectivity: held-out - control", "selectivity", None),
    ("in-sample accuracy, sig. beta > 0", "mean_accuracy_sig_pos", None),
)


def _family(group: str) -> str:
    return group.split(":", 1)[0]


def laminar_figure(
    layers: Sequence[int],
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    lexical: Mapping[str, float] | None = None,
    title: str = "",
    chance: float = 0.5,
) -> go.Figure:
    """The laminar profile: one row per curve, Q/K/V groups left, the other families right.

    Rows without data are left out (no held-out row without folds, no selectivity without the
    control task); the lexical baseline (the token embedding's held-out accuracy) is a grey
    line in the held-out row, chance a thin line in the accuracy rows.

    Args:
        layers: Layer indices (x axis).
        curves: ``{group: {curve: values per layer}}``; groups are families or Q/K/V (with
            ``:class`` for one-vs-rest contrasts), curves the keys of `ROWS`.
        lexical: The lexical baseline's numbers (``mean_heldout_accuracy``).
        title: Figure title.
        chance: The accuracy of always answering the majority class (labelled unless 0.5).

    Example:
        >>> fig = laminar_figure([0, 1], {"mlp": {"percent_significant": [1, 2]}})
        >>> len(fig.data)
        1
    """
    rows = [r for r in ROWS if any(r[1] in c for c in curves.values())]
    left = [g for g in curves if _family(g) in ("qkv", "q", "k", "v")]
    right = [g for g in curves if g not in left]
    names = ", ".join(dict.fromkeys(LABELS.get(_family(g), g) for g in right))
    others = "other units" if left else f"{names} units"
    panels = [(t, gs) for t, gs in (("Q / K / V units", left), (others, right)) if gs]
    fig = make_subplots(
        rows=len(rows),
        cols=len(panels),
        shared_xaxes=True,
        column_titles=[t for t, _ in panels],
        vertical_spacing=0.05,
        horizontal_spacing=0.09,
    )
    for col, (_, groups) in enumerate(panels, start=1):
        for group in groups:
            fam = _family(group)
            colour = FAMILY_COLOURS.get(fam, "#444")
            name = LABELS.get(fam, fam) + group[len(fam) :]
            for row, (_, key, dotted) in enumerate(rows, start=1):
                for k, dash, show in (
                    (key, "dash" if fam == "qkv" else "solid", row == 1),
                    (dotted, "dot", False),
                ):
                    if k is None or k not in curves[group]:
                        continue
                    fig.add_trace(
                        go.Scatter(
                            x=list(layers),
                            y=list(curves[group][k]),
                            mode="lines+markers",
                            line={"color": colour, "dash": dash, "width": 2},
                            marker={"size": 4},
                            name=name,
                            legendgroup=group,
                            showlegend=show and k == key,
                        ),
                        row=row,
                        col=col,
                    )
        for row, (_, key, _) in enumerate(rows, start=1):
            if key == "mean_heldout_accuracy" and lexical and "mean_heldout_accuracy" in lexical:
                grey: dict[str, Any] = {"color": "grey", "dash": "dash"}
                fig.add_hline(
                    y=lexical["mean_heldout_accuracy"],
                    line=grey,
                    annotation_text="token embedding",
                    row=row,
                    col=col,
                )
            if key in ("mean_heldout_accuracy", "mean_accuracy"):
                note = {} if chance == 0.5 else {"annotation_text": "chance (majority class)"}
                grey = {"color": "#bbb", "width": 1}
                fig.add_hline(y=chance, line=grey, row=row, col=col, **note)
            if key == "selectivity":
                fig.add_hline(y=0.0, line={"color": "#bbb", "width": 1}, row=row, col=col)
        fig.update_xaxes(title_text="layer", row=len(rows), col=col)
    if layers and max(layers) - min(layers) < 10:  # few layers: whole-number ticks only
        fig.update_xaxes(dtick=1)
    for row, (label, _, _) in enumerate(rows, start=1):
        fig.update_yaxes(title_text=label, title_font={"size": 11}, row=row, col=1)
    fig.update_layout(
        title={"text": title or "Separability per layer"},
        template=TEMPLATE,
        width=1150,
        height=230 * len(rows) + 140,
    )
    return fig


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
                            "color": FAMILY_COLOURS.get(_family(group), "#444"),
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
                    marker={
                        "color": FAMILY_COLOURS.get(_family(group), "#444"),
                        "size": 4,
                        "opacity": 0.6,
                    },
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


def probabilities_figure(
    probability: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str = ""
) -> go.Figure:
    """The probe's predicted probability per sample (text order), coloured by the true class.

    Example:
        >>> fig = probabilities_figure(np.array([0.2, 0.9]), np.array([0, 1]), ["aff", "neg"])
        >>> [t.name for t in fig.data]
        ['aff (label 0)', 'neg (label 1)']
    """
    fig = go.Figure()
    idx = np.arange(len(labels))
    for label, name in enumerate(names):
        sel = labels == label
        fig.add_trace(
            go.Scatter(
                x=idx[sel],
                y=probability[sel],
                mode="markers",
                marker={"color": CLASS_COLOURS[label % len(CLASS_COLOURS)], "size": 5},
                name=f"{name} (label {label})",
            )
        )
    fig.add_hline(y=0.5, line={"color": "gray", "dash": "dot"})
    fig.update_layout(
        title=title or "best unit: predicted probability",
        xaxis_title="sample (text order)",
        yaxis={"title": f"P({names[-1]})", "range": [-0.02, 1.02]},
        template=TEMPLATE,
    )
    return fig


def heatmap_figure(
    colour: np.ndarray,
    raw: np.ndarray,
    tokens: Sequence[Sequence[str]],
    offsets: Sequence[int],
    row_labels: Sequence[str] | None = None,
    title: str = "",
) -> go.Figure:
    """One unit's activation per token over several windows, tokens written in the cells.

    Args:
        colour: ``[windows, columns]`` values that set the colour (0 to 1: the course's scaling).
        raw: The raw activations, shown on hover.
        tokens: The token string of each cell (whitespace is drawn visibly).
        offsets: Column positions relative to the sample (0 = the sample).
        row_labels: One label per window (default: its number).
        title: Figure title.

    Example:
        >>> fig = heatmap_figure(np.zeros((1, 2)), np.ones((1, 2)), [["a", " not"]], [-1, 0])
        >>> list(fig.data[0].text[0])
        ['a', '·not']
    """
    cells = [[show_token(t) for t in row] for row in tokens]
    rows = list(row_labels) if row_labels is not None else [str(i) for i in range(len(cells))]
    fig = go.Figure(
        go.Heatmap(
            z=colour,
            x=[str(o) for o in offsets],
            y=rows,
            text=cells,
            customdata=raw,
            texttemplate="%{text}",
            textfont={"size": 9},
            colorscale="Reds",
            zmin=0,
            zmax=1,
            colorbar={"title": "scaled²"},
            hovertemplate="offset %{x}<br>%{text}<br>activation %{customdata:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or "best unit over the windows",
        xaxis_title="position relative to the sample",
        yaxis={"title": "window (sample position)", "autorange": "reversed"},
        template=TEMPLATE,
        height=max(400, 28 * len(rows) + 150),
        width=1200,
    )
    return fig


#: The rows of the layer-probe figure: (probe kind or baseline, legend name, dash, colour).
LAYER_ROWS = (
    ("whole_layer", "whole layer (all units, L2)", "solid", "#1f3b73"),
    ("best_unit", "best unit, nested", "solid", "#e07a1f"),
    ("unit_mean", "mean unit", "solid", "#7f7f7f"),
    ("control", "whole layer, control task", "dot", "#1f3b73"),
    ("embedding", "whole layer, token embedding", "dash", "#555555"),
    ("random_model", "whole layer, random-weights model", "dashdot", "#b23a48"),
)
#: What each of those rows is, for the caption.
LAYER_ROW_TEXT = {
    "whole_layer": "the whole-layer probe (L2 logistic on every unit, C chosen on the training "
    "folds)",
    "best_unit": "the nested best unit (chosen on the training folds, scored on the held-out fold)",
    "unit_mean": "the mean unit (mean held-out accuracy of all units)",
    "control": "the whole-layer probe on the control task (dotted)",
    "embedding": "the whole-layer probe on the token embedding (dashed)",
    "random_model": "the whole-layer probe on a random-weights copy of the model (dash-dot)",
}


def _layer_rows(a: Mapping[str, np.ndarray], fam: str) -> dict[str, tuple[Any, Any, Any]]:
    """``{row: (accuracy, ci_low, ci_high)}`` of one family's layer probes, as drawn.

    Example:
        >>> a = {"mlp_lp_accuracy": np.full((2, 6), 0.8), "mlp_lp_ci_low": np.full((2, 6), 0.7),
        ...      "mlp_lp_ci_high": np.full((2, 6), 0.9)}
        >>> sorted(_layer_rows(a, "mlp"))
        ['best_unit', 'unit_mean', 'whole_layer']
    """
    from mechprobe.experiments.probe_layers import PROBE_KINDS

    if f"{fam}_lp_accuracy" not in a:
        return {}
    acc, low, high = (a[f"{fam}_lp_{k}"] for k in ("accuracy", "ci_low", "ci_high"))
    col = {k: PROBE_KINDS.index(k) for k in ("whole_layer", "best_unit", "unit_mean")}
    rows: dict[str, tuple[Any, Any, Any]] = {}
    for name, j in col.items():
        if np.isfinite(acc[:, j]).any():
            rows[name] = (acc[:, j], low[:, j], high[:, j])
    w = col["whole_layer"]
    if (
        f"{fam}_lp_control_accuracy" in a
        and np.isfinite(a[f"{fam}_lp_control_accuracy"][:, w]).any()
    ):
        rows["control"] = (a[f"{fam}_lp_control_accuracy"][:, w], None, None)
    if "embed_lp_accuracy" in a and np.isfinite(a["embed_lp_accuracy"][w]):
        rows["embedding"] = (np.full(acc.shape[0], a["embed_lp_accuracy"][w]), None, None)
    rnd = a.get(f"{fam}_lp_random_model_accuracy")
    if rnd is not None and np.isfinite(rnd[:, w]).any():
        rows["random_model"] = (rnd[:, w], None, None)
    return rows


def layer_probe_figure(
    layers: Sequence[int],
    a: Mapping[str, np.ndarray],
    families: Sequence[str],
    *,
    title: str,
    chance: float | None = None,
) -> go.Figure | None:
    """Per layer and family: the whole layer, nested best unit, mean unit and the baselines.

    Held-out accuracy with Wilson 95% bands for the probes of the real task; the control
    task, the token embedding and the random-weights model as lines (`LAYER_ROWS`). None when
    no family has layer probes.
    """
    fams = [f for f in families if _layer_rows(a, f)]
    if not fams:
        return None
    fig = make_subplots(rows=1, cols=len(fams), subplot_titles=[LABELS.get(f, f) for f in fams],
                        shared_yaxes=True)  # fmt: skip
    for col, fam in enumerate(fams, start=1):
        rows = _layer_rows(a, fam)
        for key, name, dash, colour in LAYER_ROWS:
            if key not in rows:
                continue
            acc, low, high = rows[key]
            if low is not None:
                fig.add_trace(
                    go.Scatter(
                        x=list(layers) + list(layers)[::-1],
                        y=list(high) + list(low)[::-1],
                        mode="lines",
                        fill="toself",
                        fillcolor=colour,
                        opacity=0.15,
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                        legendgroup=key,
                    ),
                    row=1,
                    col=col,
                )
            fig.add_trace(
                go.Scatter(
                    x=list(layers),
                    y=list(acc),
                    mode="lines+markers",
                    name=name,
                    legendgroup=key,
                    showlegend=col == 1,
                    line={"dash": dash, "color": colour},
                ),
                row=1,
                col=col,
            )
        if chance is not None:
            fig.add_hline(y=chance, line={"width": 1, "color": "#999999"}, row=1, col=col)
        fig.update_xaxes(title_text="layer", dtick=1 if len(layers) <= 12 else None, row=1, col=col)
    fig.update_yaxes(title_text="held-out accuracy", row=1, col=1)
    fig.update_layout(template=TEMPLATE, title=title, height=520, width=1200)
    return fig


def _curves(per_layer: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    curves: dict[str, dict[str, list[float]]] = {}
    for row in per_layer:
        for group, figs in row.items():
            if group == "layer":
                continue
            for key, value in figs.items():
                curves.setdefault(group, {}).setdefault(key, []).append(value)
    return curves


#: What each laminar row shows, for the caption: (curve, text, dotted companion's text).
ROW_TEXT = {
    "percent_significant": ("the percentage of significant units", "the same with shuffled "
                            "labels, the false-positive level"),
    "mean_accuracy": ("the mean in-sample accuracy of all units", None),
    "mean_heldout_accuracy": ("the mean held-out accuracy of all units", "the control task"),
    "selectivity": ("the selectivity, held-out minus control-task accuracy: separability that "
                    "the control task matches is word identity, not the classes", None),
    "mean_accuracy_sig_pos": ("the in-sample accuracy of the units with a significant "
                              "positive beta", None),
}  # fmt: skip


def captions(result: Any) -> dict[str, str]:
    """Captions that describe the figures as drawn: their rows, panels and families.

    Example:
        >>> from mechprobe.experiments.result import ExperimentResult
        >>> row = {"layer": 0, "mlp": {"percent_significant": 1.0, "mean_accuracy": 0.6}}
        >>> res = ExperimentResult("probe", {}, {"per_layer": [row], "components": ["mlp"]})
        >>> captions(res)["laminar"][:81]
        'Per layer (MLP units), 2 rows, top to bottom: the percentage of significant units'
    """
    s = result.summary
    curves = _curves(s["per_layer"])
    rows = [r for r in ROWS if any(r[1] in c for c in curves.values())]
    fams = list(s["components"])
    names = [LABELS.get(f, f) for f in fams]
    if "qkv" in fams and len(fams) > 1:
        where = "Q/K/V groups left, " + ", ".join(n for n in names if n != "Q|K|V") + " right"
    else:
        where = ", ".join(names) + " units"
    parts = []
    for _, key, dotted in rows:
        text, dotted_text = ROW_TEXT[key]
        extras = []
        if dotted and dotted_text and any(dotted in c for c in curves.values()):
            extras.append(f"dotted: {dotted_text}")
        if key == "mean_heldout_accuracy" and "mean_heldout_accuracy" in (
            s.get("lexical_baseline") or {}
        ):
            extras.append("grey: the token embedding alone")
        if key in ("mean_heldout_accuracy", "mean_accuracy"):
            extras.append("thin line: chance, the majority class's share")
        parts.append(text + (f" ({'; '.join(extras)})" if extras else ""))
    laminar = f"Per layer ({where}), {len(rows)} rows, top to bottom: " + "; ".join(parts) + "."
    order = []
    if "qkv" in fams:
        order.append("Q, K, V heads in turn")
    order += [LABELS.get(f, f) + " units" for f in fams if f != "qkv"]
    beta = (
        f"Each unit's beta at the detail layer, in unit order ({', then '.join(order)}); large "
        "dots are significant units."
    )
    out = {"laminar": laminar, "beta_by_unit": beta}
    a = getattr(result, "arrays", {}) or {}
    drawn = [f for f in fams if _layer_rows(a, f)]
    if drawn:
        keys = [k for k, *_ in LAYER_ROWS if any(k in _layer_rows(a, f) for f in drawn)]
        out["layer_probes"] = (
            f"Per layer ({', '.join(LABELS.get(f, f) for f in drawn)}), held-out accuracy of "
            + "; ".join(LAYER_ROW_TEXT[k] for k in keys)
            + ". Shaded: Wilson 95% intervals of the probes on the real task; thin line: chance."
            " All on the same grouped folds."
        )
    return out


def figures(result: Any) -> dict[str, go.Figure | None]:
    """Every figure of a probe (or negation) result.

    Example:
        >>> from mechprobe.experiments import probe
        >>> from pathlib import Path
        >>> story = "It is not here, but we can go. The keeper walked along the old wall. "
        >>> _ = Path("t.txt").write_text(story * 60)
        >>> cfg = probe.ProbeConfig(text="t.txt", context_pre=5, context_post=1, folds=3)
        >>> cfg = probe.resolve(cfg, model_shape(model))
        >>> sorted(figures(probe.run(cfg, model)))[:2]
        ['best_unit_heatmap', 'best_unit_probabilities']
    """
    s, a = result.summary, result.arrays
    layers = list(s["layers"])
    rule = "Bonferroni" if s["correction"] == "bonferroni" else "Benjamini-Hochberg"
    counts = " / ".join(f"{v} {k}" for k, v in s["n_samples"].items())
    out: dict[str, go.Figure | None] = {
        "laminar": laminar_figure(
            layers,
            _curves(s["per_layer"]),
            s.get("lexical_baseline"),
            title=f"Separability per layer<br><sup>n = {counts}; {rule}, alpha {s['alpha']:g}; "
            + (
                f"held-out: {s['folds']} grouped folds"
                if s["folds"]
                else s.get("heldout_note", "in-sample tests only")
            )
            + "</sup>",
            chance=chance_of(s),
        )
    }
    out["layer_probes"] = layer_probe_figure(
        layers,
        a,
        list(s["components"]),
        title="Whole-layer and best-unit probes per layer, with baselines<br><sup>"
        f"n = {counts}; held-out on {s['folds']} grouped folds; penalty and units chosen on "
        "the training folds</sup>",
        chance=chance_of(s),
    )
    detail = s["detail_layer"]
    row = layers.index(detail)
    slices = s["qkv_layout"]["slices"]
    beta_panels, volcano_panels, n_sep = {}, {}, 0
    for comp in s["components"]:
        first = (lambda k: a[k][row]) if a[f"{comp}_beta"].ndim == 2 else (lambda k: a[k][0, row])
        beta, p = first(f"{comp}_beta").astype(np.float64), first(f"{comp}_pvalue")
        if f"{comp}_firth_beta" in a:  # separated units: Firth's finite fit
            fb, fp = first(f"{comp}_firth_beta"), first(f"{comp}_firth_pvalue")
            use = np.isfinite(fb) & ~np.isfinite(beta)
            beta, p = np.where(use, fb, beta), np.where(use, fp, p)
        n_sep += int(np.isinf(beta).sum())
        beta = np.where(np.isfinite(beta), beta, np.nan)
        n = beta.shape[0]
        groups = {g: tuple(slices[g]) for g in "qkv"} if comp == "qkv" else {comp: (0, n)}
        beta_panels[comp] = {
            "groups": groups,
            "beta": beta,
            "significant": first(f"{comp}_significant"),
        }
        volcano_panels[comp] = {
            "groups": groups,
            "beta": beta,
            "neglog10p": -np.log10(np.maximum(p, np.finfo(np.float64).tiny)),
            "threshold": -np.log10(s["thresholds"][comp][0][row]),
        }
    note = f"; {n_sep} separated units without a finite beta not drawn" if n_sep else ""
    out["beta_by_unit"] = beta_by_unit_figure(
        beta_panels, title=f"Beta per unit, layer {detail}{note}"
    )
    out["volcano"] = volcano_figure(
        volcano_panels, title=f"Beta vs -log10 p, layer {detail} ({rule}){note}"
    )
    best = s.get("best_unit")
    if best is not None and "best_unit_probability" in a:
        where = LABELS.get(best["group"], best["group"]) + (
            f" head {best['head']} dim {best['dim']}" if "head" in best else f" unit {best['unit']}"
        )
        name = f"layer {best['layer']} {where}"
        out["best_unit_probabilities"] = probabilities_figure(
            a["best_unit_probability"],
            a["labels"],
            s["classes"],
            title=f"Best unit ({best['rule']} rule): {name}, "
            f"in-sample accuracy {best['accuracy']:.3f}",
        )
        out["best_unit_heatmap"] = heatmap_figure(
            a["best_unit_heatmap_scaled"],
            a["best_unit_heatmap"],
            best["heatmap_tokens"],
            best["heatmap_offsets"],
            [f"#{i} @{p}" for i, p in enumerate(best["heatmap_positions"])],
            title=f"Best unit {name} over the first {best['heatmap_class']} windows",
        )
    else:
        out["best_unit_probabilities"] = out["best_unit_heatmap"] = None
    return out
