"""E4 over many samples: norm-ratio curves, their band, and how often the course's claim holds.

Each sample (a sentence and a position in it) gives a curve of residual-stream norm ratios to the
unscaled baseline, ``[n_layers + 1]``: the embeddings, then the output of every block, as
`mechprobe.stats.logits.scaling_verdict` takes them, and the ratio after the final norm.
`curve_band` summarises the curves per hidden state, `scaling_holds` applies the per-sample
rule of `scaling_verdict` to every sample at once, and `holds_fraction` gives the share of
samples for which it holds with a percentile bootstrap interval over samples (or over groups of
samples, e.g. sentences, when a sentence contributes several positions).

Example:
    >>> ratio = np.array([[1.0, 0.1, 0.5], [1.0, 0.1, 1.2]])
    >>> scaling_holds(ratio, None, scale_layer=0, factor=0.1).tolist()
    [True, False]
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Bool, Float, Shaped

from mechprobe.errors import MechprobeError
from mechprobe.stats.bootstrap import check_bootstrap, ratio_ci

__all__ = ["curve_band", "holds_fraction", "scaling_holds", "scaling_summary"]

Curves = Float[np.ndarray, "samples layer"]


def curve_band(
    ratios: Curves, level: float = 0.95
) -> tuple[Float[np.ndarray, " layer"], Float[np.ndarray, " layer"], Float[np.ndarray, " layer"]]:
    """Per hidden state: the median over samples and the central ``level`` band.

    The band is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (2.5th and 97.5th
    percentiles at 0.95; ``numpy.quantile``, linear interpolation). NaN propagates: a hidden
    state where some sample is NaN gets NaN.

    Example:
        >>> med, lo, hi = curve_band(np.array([[1.0, 0.2], [1.0, 0.4], [1.0, 0.6]]), 0.5)
        >>> med.tolist(), lo.round(2).tolist(), hi.round(2).tolist()
        ([1.0, 0.4], [1.0, 0.3], [1.0, 0.5])
    """
    _, _, level = check_bootstrap(1, 0, level)
    r = _curves(ratios)
    alpha = (1.0 - level) / 2.0
    lo, med, hi = np.quantile(r, [alpha, 0.5, 1.0 - alpha], axis=0)
    return med, lo, hi


def scaling_holds(
    ratios: Curves,
    final: Float[np.ndarray, " samples"] | None,
    scale_layer: int,
    factor: float,
) -> Bool[np.ndarray, " samples"]:
    """Whether the course's scaling claim holds, per sample (`scaling_verdict`'s rule).

    With ``at = ratios[:, scale_layer + 1]`` (the scaled block's output) and ``last =
    ratios[:, -1]``: for ``factor < 1`` the norm collapses (``at < 0.5``) and later blocks partly
    restore it (there is a later block and ``at < last < 1``); otherwise it blows up (``at >
    2``) and the final norm compresses it (``at > 0`` and ``|log final| < |log at| / 2``, where
    a ``final <= 0`` never compresses). ``final`` is the ratio after the final norm, needed only
    for ``factor >= 1``. NaN ratios never hold.

    Example:
        >>> r = np.array([[1.0, 5.0, 4.0], [1.0, 5.0, 4.0]])
        >>> scaling_holds(r, np.array([1.2, 3.0]), scale_layer=0, factor=10).tolist()
        [True, False]
    """
    r = _curves(ratios)
    n_hidden = r.shape[1]
    if not 0 <= scale_layer < n_hidden - 1:
        raise MechprobeError(f"scale layer {scale_layer} is out of range (0..{n_hidden - 2})")
    at, last = r[:, scale_layer + 1], r[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        if factor < 1:
            has_later = scale_layer + 2 < n_hidden
            return (at < 0.5) & has_later & (at < last) & (last < 1.0)
        if final is None:
            raise MechprobeError("the ratio after the final norm is needed for a factor >= 1")
        f = np.asarray(final, dtype=np.float64)
        if f.shape != at.shape:
            raise ValueError(f"final has shape {f.shape}, expected {at.shape}")
        log_f = np.where(f > 0, np.log(np.where(f > 0, f, 1.0)), np.inf)
        log_at = np.log(np.where(at > 0, at, 1.0))
        compresses = (at > 0) & (np.abs(log_f) < 0.5 * np.abs(log_at))
        return (at > 2.0) & compresses


def holds_fraction(
    holds: Bool[np.ndarray, " samples"],
    *,
    groups: Shaped[np.ndarray, " samples"] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Share of samples for which the claim holds, with a percentile bootstrap interval.

    Samples are resampled (`mechprobe.stats.bootstrap.ratio_ci`); with ``groups`` (e.g. the
    sentence of each sample) whole groups are, and the share is still over samples. When every
    sample agrees the interval is degenerate (``[1, 1]`` or ``[0, 0]``): the bootstrap cannot
    see beyond the observed samples.

    Example:
        >>> res = holds_fraction(np.array([True, True, False, True]), n_boot=100)
        >>> res["fraction"], res["n_samples"]
        (0.75, 4)
    """
    h = np.asarray(holds, dtype=bool)
    if h.ndim != 1 or h.size == 0:
        raise MechprobeError("holds must be a non-empty 1-D array of booleans")
    ci = ratio_ci(h.astype(np.float64), np.ones(h.size), n_boot, seed, level, groups=groups)
    return {
        "fraction": float(ci.estimate),
        "low": float(ci.low),
        "high": float(ci.high),
        "n_samples": int(h.size),
        "n_holds": int(h.sum()),
    }


def scaling_summary(
    ratios: Curves,
    final: Float[np.ndarray, " samples"] | None,
    scale_layer: int,
    factor: float,
    *,
    groups: Shaped[np.ndarray, " samples"] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """One scaling condition over many samples: band of the curves and the claim's hit rate.

    Returns:
        ``median``, ``low``, ``high`` ``[n_hidden]`` (`curve_band` at ``level``), ``holds``
        ``[samples]`` (`scaling_holds`), and ``fraction``, ``fraction_low``,
        ``fraction_high``, ``n_samples``, ``n_holds`` (`holds_fraction`), ``factor``.

    Example:
        >>> r = np.array([[1.0, 0.1, 0.5], [1.0, 0.2, 0.6], [1.0, 0.1, 1.3]])
        >>> s = scaling_summary(r, None, 0, 0.1, n_boot=50)
        >>> round(s["fraction"], 3), s["median"].tolist()
        (0.667, [1.0, 0.1, 0.6])
    """
    n_boot, seed, level = check_bootstrap(n_boot, seed, level)
    med, lo, hi = curve_band(ratios, level)
    holds = scaling_holds(ratios, final, scale_layer, factor)
    frac = holds_fraction(holds, groups=groups, n_boot=n_boot, seed=seed, level=level)
    return {
        "factor": float(factor),
        "median": med,
        "low": lo,
        "high": hi,
        "holds": holds,
        "fraction": frac["fraction"],
        "fraction_low": frac["low"],
        "fraction_high": frac["high"],
        "n_samples": frac["n_samples"],
        "n_holds": frac["n_holds"],
    }


def _curves(ratios: object) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] == 0 or r.shape[1] < 2:
        raise ValueError(f"ratios must be [n_samples >= 1, n_hidden >= 2], got {r.shape}")
    return r
