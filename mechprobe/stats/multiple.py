"""Multiple-comparison control for per-unit p-values.

Both functions work along the last axis (one family of tests per row, e.g. one row per
layer), treat NaN p-values as tests that were not performed (never significant and not
counted in the number of tests, like R's ``p.adjust``) and return a boolean mask of the
same shape.

Example:
    >>> import numpy as np
    >>> from mechprobe.stats import bonferroni_mask, fdr_mask
    >>> p = np.array([1e-4, 0.015, 0.02, 0.5, np.nan])
    >>> bonferroni_mask(p, 0.05).tolist()
    [True, False, False, False, False]
    >>> fdr_mask(p, 0.05).tolist()
    [True, True, True, False, False]
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float

__all__ = ["bonferroni_mask", "fdr_mask"]

PValues = Float[np.ndarray, "*batch units"]
Mask = Bool[np.ndarray, "*batch units"]


def _as_pvalues(p: object) -> np.ndarray:
    if hasattr(p, "detach"):  # torch tensor
        p = p.detach().cpu().numpy()
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 0:
        raise ValueError("p must have at least one dimension")
    return arr


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def bonferroni_mask(p: PValues, alpha: float = 0.05) -> Mask:
    """Bonferroni correction: significant where ``p < alpha / n`` along the last axis.

    Args:
        p: P-values, shape ``[..., units]`` (numpy array, torch tensor or array-like).
        alpha: Family-wise error rate.

    Returns:
        Boolean mask, same shape as ``p``. ``n`` is the number of non-NaN p-values in
        each row; NaN p-values are never significant.

    Example:
        >>> import numpy as np
        >>> bonferroni_mask(np.array([0.001, 0.03, np.nan]), 0.05).tolist()
        [True, False, False]
    """
    _check_alpha(alpha)
    arr = _as_pvalues(p)
    valid = ~np.isnan(arr)
    n = valid.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        thresh = alpha / n
    return valid & (arr < thresh)


def fdr_mask(p: PValues, alpha: float = 0.05) -> Mask:
    """Benjamini-Hochberg false-discovery-rate control along the last axis.

    With the ``n`` non-NaN p-values of a row sorted as ``p_(1) <= ... <= p_(n)``, the
    hypotheses with ``p <= p_(k)`` are rejected, where ``k`` is the largest rank with
    ``p_(k) <= k * alpha / n`` (the same rule as ``statsmodels``' ``fdr_bh``).

    Args:
        p: P-values, shape ``[..., units]`` (numpy array, torch tensor or array-like).
        alpha: False discovery rate.

    Returns:
        Boolean mask, same shape as ``p``; NaN p-values are never significant.

    Example:
        >>> import numpy as np
        >>> fdr_mask(np.array([0.001, 0.02, 0.04, 0.3]), 0.05).tolist()
        [True, True, False, False]
    """
    _check_alpha(alpha)
    arr = _as_pvalues(p)
    if arr.shape[-1] == 0:
        return np.zeros(arr.shape, dtype=bool)
    valid = ~np.isnan(arr)
    n = valid.sum(axis=-1, keepdims=True)
    srt = np.sort(arr, axis=-1)  # NaNs sort last
    ranks = np.arange(1, arr.shape[-1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = srt <= ranks * (alpha / n)  # False for NaN
    any_below = below.any(axis=-1, keepdims=True)
    k = arr.shape[-1] - 1 - np.argmax(below[..., ::-1], axis=-1)[..., None]  # last True
    cutoff = np.take_along_axis(srt, k, axis=-1)
    return valid & any_below & (arr <= cutoff)
