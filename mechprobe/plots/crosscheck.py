"""Figure of the TransformerLens-vs-HuggingFace parity check: the non-zero differences only.

Exact agreement (a difference of 0) has no place on a log scale and needs no picture: the report's
parity table says it. This figure draws the checks that differ, per layer, against the tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from mechprobe.plots.theme import themed


def nonzero_differences(
    checks: Sequence[str],
    per_layer: np.ndarray,
    model_wide: dict[str, float],
    tolerance: float,
) -> go.Figure | None:
    """Log-scale scatter of every non-zero difference: one series per check, x = layer.

    Args:
        checks: Names of the rows of ``per_layer``.
        per_layer: ``[check, layer]`` max-abs differences (NaN where a check does not apply).
        model_wide: Model-wide checks (final norm, logits), drawn at x = ``"model"``.
        tolerance: The pass threshold, drawn as a dashed line.

    Returns:
        The figure, or None when every difference is exactly zero (nothing to draw).

    Example:
        >>> fig = nonzero_differences(["hook_q"], np.array([[0.0, 2e-7]]), {"logits": 0.0}, 1e-4)
        >>> [t.name for t in fig.data]
        ['hook_q']
        >>> nonzero_differences(["hook_q"], np.zeros((1, 2)), {}, 1e-4) is None
        True
    """
    fig = go.Figure()
    for name, row in zip(checks, per_layer, strict=True):
        layers = np.flatnonzero(row > 0)
        if layers.size:
            fig.add_trace(
                go.Scatter(x=[str(L) for L in layers], y=row[layers], mode="markers", name=name)
            )
    wide = {k: v for k, v in model_wide.items() if v > 0}
    for name, value in wide.items():
        fig.add_trace(go.Scatter(x=["model"], y=[value], mode="markers", name=name))
    if not fig.data:
        return None
    fig.add_hline(y=tolerance, line={"dash": "dash", "color": "black"}, annotation_text="tolerance")
    return themed(
        fig,
        title="TransformerLens vs HuggingFace: non-zero max |diff| per layer",
        xaxis={"title": "layer", "type": "category"},
        yaxis={"title": "max |diff| (log)", "type": "log", "exponentformat": "e"},
        height=420,
    )


def figures(result: Any) -> dict[str, go.Figure | None]:
    """The crosscheck's figure (None when every difference is zero).

    Example:
        >>> from mechprobe.experiments import crosscheck
        >>> res = crosscheck.run(crosscheck.CrosscheckConfig(), model, (hf, tok))
        >>> list(figures(res))
        ['parity']
    """
    s, a = result.summary, result.arrays
    per_layer_checks = s["checks"][: a["max_abs_diff"].shape[0]]
    wide = dict(zip(("final_norm", "logits"), a["model_wide"].tolist(), strict=True))
    return {
        "parity": nonzero_differences(per_layer_checks, a["max_abs_diff"], wide, s["tolerance"])
    }
