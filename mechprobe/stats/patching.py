"""Statistics of activation-patching cells over pairs: effect, cluster bootstrap, sign flips, BH.

Each cell (a component at a layer and a position or head) has one patched metric per pair.
Its effect on pair ``i`` is ``patched_i - corrupt_i``; the cell's normalised effect is the ratio
of means ``mean(patched - corrupt) / mean(clean - corrupt)`` over the pairs that have the cell
(a pair shorter than the cell's position has NaN there). Its interval is the percentile
bootstrap of that ratio, resampling pairs, or whole templates (clusters) when the pairs name
templates. Its p-value is the two-sided sign-flip permutation test that the per-pair effects are
symmetric about zero: exact (all ``2**n`` sign patterns) for ``n <= EXACT_MAX_N`` pairs, else
``n_perm`` sign patterns drawn as ``np.random.default_rng(seed).choice([-1.0, 1.0], (n_perm,
n))`` and ``p = (1 + hits) / (1 + n_perm)``; a null mean within a relative ``1e-9`` of the
observed one counts as a hit. Q-values are Benjamini-Hochberg adjusted p-values across every
cell of a run (`bh_qvalues`, statsmodels' ``fdr_bh``).

Example:
    >>> eff = np.array([[1.0, 2.0, 3.0, 4.0], [0.1, -0.1, 0.2, -0.2]])
    >>> st = cell_statistics(eff, np.full(4, 2.0), n_boot=200)
    >>> st.mean.round(3).tolist(), st.pvalue.round(3).tolist()
    ([1.25, 0.0], [0.125, 1.0])
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int

from mechprobe.stats.bootstrap import percentile_interval, resample_indices

__all__ = ["CellStats", "bh_qvalues", "cell_statistics", "sign_flip_pvalue"]

#: Pair counts up to which the sign-flip test enumerates every pattern (exact, no seed).
EXACT_MAX_N = 12
#: Relative tolerance of a tie between a null mean and the observed mean.
TIE = 1e-9


@dataclass(frozen=True)
class CellStats:
    """Per-cell statistics.

    Attributes:
        mean: Normalised effect ``mean(effect) / mean(clean - corrupt)``.
        ci_low: Lower end of the 95% bootstrap interval of ``mean``.
        ci_high: Upper end.
        pvalue: Two-sided sign-flip permutation p-value of the per-pair effects.
        n: Pairs that have the cell.
    """

    mean: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    pvalue: np.ndarray
    n: np.ndarray


def sign_flip_signs(n: int, n_perm: int = 1000, seed: int = 0) -> Float[np.ndarray, "perm n"]:
    """The sign patterns of the test: all ``2**n`` for ``n <= EXACT_MAX_N``, else seeded draws.

    Example:
        >>> sign_flip_signs(2).tolist()
        [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]
        >>> sign_flip_signs(20, 5, seed=1).shape
        (5, 20)
    """
    if n <= EXACT_MAX_N:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    return np.random.default_rng(seed).choice([-1.0, 1.0], (n_perm, n))


def sign_flip_pvalue(
    effects: Float[np.ndarray, "cells pairs"], n_perm: int = 1000, seed: int = 0
) -> Float[np.ndarray, " cells"]:
    """Two-sided sign-flip permutation p-value per row (NaN entries: pairs without the cell).

    Example:
        >>> sign_flip_pvalue(np.array([[1.0, 2.0, 3.0]])).tolist()  # 2 of 8 patterns as extreme
        [0.25]
    """
    e = np.atleast_2d(np.asarray(effects, dtype=np.float64))
    n = e.shape[1]
    valid = ~np.isnan(e)
    filled = np.where(valid, e, 0.0)
    count = np.maximum(valid.sum(1), 1)
    observed = np.abs(filled.sum(1) / count)
    signs = sign_flip_signs(n, n_perm, seed)
    null = np.abs(filled @ signs.T) / count[:, None]  # [cells, perm]
    hits = (null >= observed[:, None] * (1 - TIE)).sum(1)
    if n <= EXACT_MAX_N:
        p = hits / signs.shape[0]
    else:
        p = (1 + hits) / (1 + signs.shape[0])
    return np.where(valid.any(1), p, np.nan)


def _cluster_weights(
    clusters: Int[np.ndarray, " pairs"], n_boot: int, seed: int
) -> Float[np.ndarray, "boot pairs"]:
    """How often each pair is in each resample, drawing clusters (or pairs) with replacement."""
    ids, inverse = np.unique(clusters, return_inverse=True)
    if len(ids) < 2:  # one template: resample the pairs themselves
        inverse = np.arange(len(clusters))
    k = int(inverse.max()) + 1
    idx = resample_indices(k, n_boot, seed)  # [boot, k]
    counts = np.zeros((n_boot, k))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return counts[:, inverse]


def cell_statistics(
    effects: Float[np.ndarray, "cells pairs"],
    denominator: Float[np.ndarray, " pairs"],
    clusters: Int[np.ndarray, " pairs"] | None = None,
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> CellStats:
    """Normalised effect, bootstrap interval and sign-flip p-value of every cell.

    Args:
        effects: ``patched - corrupt`` per cell and pair (NaN: the pair lacks the cell).
        denominator: ``clean - corrupt`` per pair.
        clusters: Template index per pair (None or one value: resample pairs).
        n_boot: Bootstrap resamples.
        n_perm: Sign patterns drawn when there are more than ``EXACT_MAX_N`` pairs.
        seed: Seed of both (the bootstrap: `resample_indices`; the signs: `sign_flip_signs`).
        level: Interval coverage.

    Example:
        >>> st = cell_statistics(np.ones((1, 4)), np.full(4, 2.0), np.array([0, 0, 1, 1]))
        >>> float(st.mean[0]), float(st.ci_low[0]), float(st.ci_high[0])
        (0.5, 0.5, 0.5)
    """
    e = np.atleast_2d(np.asarray(effects, dtype=np.float64))
    d = np.asarray(denominator, dtype=np.float64)
    valid = ~np.isnan(e)
    filled = np.where(valid, e, 0.0)
    dmat = np.where(valid, d[None, :], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(1) / dmat.sum(1)
    cl = np.zeros(e.shape[1], int) if clusters is None else np.asarray(clusters)
    w = _cluster_weights(cl, n_boot, seed)  # [boot, pairs]
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (w @ filled.T) / (w @ dmat.T)  # [boot, cells]
    if np.isnan(reps).any():
        # A resample none of whose pairs has the cell (all shorter than its position) says
        # nothing about it: such replicates are left out; a cell no replicate has stays NaN.
        alpha = (1.0 - level) / 2.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanquantile(reps, [alpha, 1.0 - alpha], axis=0)
    else:
        low, high = percentile_interval(reps, level)
    p = sign_flip_pvalue(e, n_perm, seed)
    return CellStats(mean, np.asarray(low), np.asarray(high), p, valid.sum(1))


def bh_qvalues(p: Float[np.ndarray, " tests"]) -> Float[np.ndarray, " tests"]:
    """Benjamini-Hochberg adjusted p-values (q-values) of a flat array; NaN stays NaN.

    The same numbers as ``statsmodels.stats.multitest.multipletests(p, method="fdr_bh")[1]``
    on the non-NaN entries.

    Example:
        >>> bh_qvalues(np.array([0.01, 0.04, 0.03, np.nan])).round(3).tolist()
        [0.03, 0.04, 0.04, nan]
    """
    arr = np.asarray(p, dtype=np.float64).ravel()
    out = np.full(arr.shape, np.nan)
    ok = ~np.isnan(arr)
    v = arr[ok]
    if v.size == 0:
        return out.reshape(np.shape(p))
    order = np.argsort(v)
    ranked = v[order] * v.size / np.arange(1, v.size + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    res = np.empty_like(v)
    res[order] = np.minimum(q, 1.0)
    out[ok] = res
    return out.reshape(np.shape(p))
