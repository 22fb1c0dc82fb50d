"""Figure of the TransformerLens-vs-HuggingFace parity check."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go


def parity_heatmap(
    checks: Sequence[str], layers: Sequence[int], log10_diff: np.ndarray, tolerance: float
) -> go.Figure:
    """Heatmap of log10 max |TL - HF| per check (rows) and layer (columns).

    Args:
        checks: Row labels (``hook_q``, ``pattern``...).
        layers: Column labels (layer indices).
        log10_diff: ``[check, layer]`` log10 of the max-abs differences (``-inf`` for exact 0
            should be replaced by the caller with a floor such as -12).
        tolerance: The pass threshold, shown in the title.

    Example:
        >>> parity_heatmap(["hook_q"], [0, 1], np.array([[-7.0, -6.5]]), 1e-4)
        Figure(...)
    """
    fig = go.Figure(
        go.Heatmap(
            z=log10_diff,
            x=list(layers),
            y=list(checks),
            colorscale="Viridis",
            colorbar={"title": "log10 max|diff|"},
            zmax=float(np.log10(tolerance)) if tolerance > 0 else None,
        )
    )
    fig.update_layout(
        title=f"TransformerLens vs HuggingFace hooks: log10 max |diff| (pass: <= {tolerance:g})",
        xaxis_title="layer",
        yaxis_title="check",
        height=380,
    )
    return fig
