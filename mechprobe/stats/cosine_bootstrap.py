"""E3 with a bootstrap over sentences: the pooled mean |cos| per layer and its depth trend.

For one layer, the flat Q|K|V units at one position form an ``[n_sentences, n_units]`` matrix
(see `mechprobe.stats.cosine`). The statistic is the mean ``|cos|`` pooled over the six blocks
QQ, KK, VV, QK, QV, KV, weighted by their pairs, as `mechprobe.stats.cosine.depth_profile`
pools them: since the six blocks are every unordered pair of distinct units, that is the mean of
``|cos(u, v)|`` over all pairs ``u < v`` of units whose column has non-zero norm (with
``centre``, after mean-centring each column: Pearson).

A bootstrap resample draws ``n_sentences`` rows with replacement and recomputes the cosines on
the resampled rows. Repeated rows are equivalent to weights, so a resample only touches its
distinct rows: ``cos_b(u, v) = sum_i w_i x_iu x_iv / (|x_u|_w |x_v|_w)`` with ``w_i`` the number
of times row ``i`` was drawn (and, with ``centre``, the weighted column means removed first). One
matrix product of the weighted, normalised rows per resample (in float32, in row tiles of the
upper triangle, so each tile stays in cache) gives every pair; nothing loops over pairs in Python.

`depth_bootstrap` draws one set of resamples for all layers, so the replicates of different
layers are paired and the interval of the early-minus-late difference is that of the
differences of replicates.

Example:
    >>> slices = {"q": slice(0, 8), "k": slice(8, 12), "v": slice(12, 16)}
    >>> layers = [np.random.default_rng(i).normal(size=(20, 16)) for i in range(3)]
    >>> res = depth_bootstrap(layers, slices, n_boot=50, seed=0)
    >>> res["mean_abs"].shape, res["replicates"].shape
    ((3,), (50, 3))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from mechprobe.errors import MechprobeError
from mechprobe.stats.bootstrap import check_bootstrap, percentile_interval, resample_indices

__all__ = ["depth_bootstrap", "early_minus_late", "pooled_mean_abs_cos", "resampled_mean_abs_cos"]

#: Rows of the cosine matrix computed per matrix product (a tile of ``TILE_ROWS x units``).
TILE_ROWS = 128


def pooled_mean_abs_cos(
    x: Float[np.ndarray, "batch units"],
    slices: Mapping[str, slice] | None = None,
    *,
    centre: bool = False,
) -> float:
    """Mean ``|cos|`` over all pairs of the layer's units (float64): ``depth_profile``'s pooling.

    The units are the columns in ``slices`` (``q``, ``k``, ``v``; all columns if None); units
    with a zero-norm column are left out; NaN if fewer than two units are left.

    Example:
        >>> x = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # cosines 1/sqrt(2), 0, 1/sqrt(2)
        >>> round(pooled_mean_abs_cos(x), 6), round(float(np.sqrt(2)) / 3, 6)
        (0.471405, 0.471405)
    """
    x = np.asarray(x, dtype=np.float64)
    cols = _columns(x, slices)
    idx = np.arange(x.shape[0])[None, :]
    return float(resampled_mean_abs_cos(x[:, cols], None, idx, centre=centre, dtype=np.float64)[0])


def resampled_mean_abs_cos(
    x: Float[np.ndarray, "batch units"],
    slices: Mapping[str, slice] | None,
    indices: Int[np.ndarray, "boot batch"],
    *,
    centre: bool = False,
    dtype: type = np.float32,
    blas_threads: int | None = 1,
) -> Float[np.ndarray, " boot"]:
    """The pooled mean ``|cos|`` (see `pooled_mean_abs_cos`) on each resample of the rows.

    Row ``b`` of ``indices`` lists the sentences (rows of ``x``) of resample ``b``, repeats
    allowed. A unit whose column is zero (with ``centre``: constant) on a resample's rows is left
    out of that resample. The products run in ``dtype`` (float32: the mean to about 1e-6);
    cosines are not clipped to [-1, 1]. ``blas_threads`` limits the BLAS threads of the products
    while they run (with ``threadpoolctl``, installed with scikit-learn; None: as configured):
    with an inner dimension of a few dozen sentences the products gain little from threads, and
    on cores shared with other work a threaded BLAS was measured 1.5-5 times slower.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(6, 5))
        >>> same = resampled_mean_abs_cos(x, None, np.arange(6)[None, :], dtype=np.float64)
        >>> bool(np.isclose(same[0], pooled_mean_abs_cos(x)))
        True
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[:, _columns(x, slices)]
    idx = np.asarray(indices)
    if idx.ndim != 2 or (idx.size and (idx.min() < 0 or idx.max() >= x.shape[0])):
        raise ValueError(f"indices must be [n_boot, n] rows of 0 .. {x.shape[0] - 1}")
    out = np.empty(idx.shape[0])
    squares = None if centre else x * x
    with _blas_limit(blas_threads):
        for b, row in enumerate(idx):
            out[b] = _one_resample(x, squares, row, dtype)
    return out


def _one_resample(x: np.ndarray, squares: np.ndarray | None, row: np.ndarray, dtype: type) -> float:
    """The pooled mean ``|cos|`` on the rows ``row`` of ``x``; centred when no ``squares``."""
    w = np.bincount(row, minlength=x.shape[0]).astype(np.float64)
    drawn = w > 0
    a, wd = x[drawn], w[drawn]
    if squares is None:  # centred: remove the weighted mean; a constant unit is exactly zero
        a = a - (wd @ a) / wd.sum()
        norms = np.sqrt(wd @ (a * a))
        ok = (norms > 0) & (x[drawn].max(axis=0) > x[drawn].min(axis=0))
    else:
        norms = np.sqrt(w @ squares)
        ok = norms > 0
    scale = np.where(ok, 1.0 / np.where(ok, norms, 1.0), 0.0)
    a = (a * np.sqrt(wd)[:, None] * scale[None, :]).astype(dtype)
    n_ok = int(ok.sum())
    pairs = n_ok * (n_ok - 1) // 2
    return _upper_abs_sum(a) / pairs if pairs else float("nan")


def early_minus_late(
    mean_abs: Float[np.ndarray, "... layer"],
) -> tuple[Float[np.ndarray, "..."], int]:
    """Mean over the first third of the layers minus the last third, and the third's size.

    A third is ``max(1, n_layers // 3)`` layers, as in the E3 finding; NaN with one layer.

    Example:
        >>> diff, k = early_minus_late(np.array([0.9, 0.8, 0.5, 0.4, 0.3, 0.2]))
        >>> round(float(diff), 2), k
        (0.6, 2)
    """
    m = np.asarray(mean_abs, dtype=np.float64)
    n = m.shape[-1]
    k = max(1, n // 3)
    if n < 2:
        return np.full(m.shape[:-1], np.nan)[()], k
    return (m[..., :k].mean(-1) - m[..., -k:].mean(-1))[()], k


def depth_bootstrap(
    layer_units: Iterable[Float[np.ndarray, "batch units"]],
    slices: Mapping[str, slice] | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    centre: bool = False,
    blas_threads: int | None = 1,
) -> dict[str, Any]:
    """Per layer, the pooled mean ``|cos|`` with a bootstrap over sentences, and the depth trend.

    Layers are consumed one at a time (one ``[n_sentences, n_units]`` array each, all with the
    same sentences). One set of ``n_boot`` resamples of the sentences (`resample_indices`) is
    used for every layer; intervals are percentile intervals at ``level``.

    The statistic depends on the number of sentences: the mean ``|cos|`` of unrelated units is
    about ``sqrt(2 / (pi n))``. A resample's repeated rows leave it about half as many effective
    sentences, so there replicates run about ``sqrt(2)`` times higher than the estimate
    (measured: 0.109 on 54 sentences of noise, replicates 0.139 .. 0.164). ``bias`` (mean
    replicate minus estimate) shows how much, and a percentile interval may then not contain
    the estimate.
    Such bias largely cancels in the early-minus-late difference when both ends have small
    cosines; compare it with the interval's width before reading the interval.

    Returns:
        ``mean_abs`` ``[layer]`` (float64, on all sentences: ``depth_profile``'s first output up
        to rounding), ``replicates`` ``[n_boot, layer]``, ``low``/``high``/``bias``
        ``[layer]``; ``early_minus_late`` with ``early_minus_late_low``/``_high``/``_bias``
        (NaN with one layer) and ``early_minus_late_replicates`` ``[n_boot]``; ``third``
        (layers per third), ``n_boot``, ``seed``, ``level``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> layers = [rng.normal(size=(30, 12)) + s * rng.normal(size=12) for s in (3, 1, 0)]
        >>> res = depth_bootstrap(layers, n_boot=100)
        >>> bool(res["early_minus_late_low"] > 0)
        True
    """
    n_boot, seed, level = check_bootstrap(n_boot, seed, level)
    estimate, reps, idx = [], [], None
    for x in layer_units:
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"each layer must be [n_sentences, n_units], got {x.shape}")
        if idx is None:
            idx = resample_indices(x.shape[0], n_boot, seed)
        elif x.shape[0] != idx.shape[1]:
            raise ValueError(f"layers have {idx.shape[1]} and {x.shape[0]} sentences")
        estimate.append(pooled_mean_abs_cos(x, slices, centre=centre))
        reps.append(
            resampled_mean_abs_cos(x, slices, idx, centre=centre, blas_threads=blas_threads)
        )
    if idx is None:
        raise MechprobeError("no layers to analyse")
    mean_abs, replicates = np.array(estimate), np.stack(reps, axis=1)
    low, high = percentile_interval(replicates, level)
    diff, k = early_minus_late(mean_abs)
    diff_reps, _ = early_minus_late(replicates)
    d_low, d_high = percentile_interval(diff_reps, level)
    return {
        "mean_abs": mean_abs,
        "replicates": replicates,
        "low": np.atleast_1d(low),
        "high": np.atleast_1d(high),
        "bias": replicates.mean(axis=0) - mean_abs,
        "early_minus_late": float(diff),
        "early_minus_late_low": float(d_low),
        "early_minus_late_high": float(d_high),
        "early_minus_late_bias": float(np.mean(diff_reps) - diff),
        "early_minus_late_replicates": diff_reps,
        "third": k,
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
    }


def _blas_limit(threads: int | None) -> contextlib.AbstractContextManager:
    """A context limiting the BLAS threads to ``threads`` (no-op for None or no threadpoolctl)."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(threads), user_api="blas")


def _columns(x: np.ndarray, slices: Mapping[str, slice] | None) -> np.ndarray:
    """The column indices of the q, k, v slices (all columns without slices); disjoint."""
    if x.ndim != 2:
        raise ValueError(f"x must be [n_sentences, n_units], got shape {x.shape}")
    if slices is None:
        return np.arange(x.shape[1])
    cols = np.concatenate([np.arange(x.shape[1])[slices[c]] for c in ("q", "k", "v")])
    if np.unique(cols).size != cols.size:
        raise ValueError("the q, k and v slices overlap")
    return cols


def _upper_abs_sum(a: Float[np.ndarray, "batch units"]) -> float:
    """``sum_{u < v} |a_u . a_v|`` over the columns of ``a``, one row tile at a time."""
    total = 0.0
    n = a.shape[1]
    for r0 in range(0, n, TILE_ROWS):
        r1 = min(r0 + TILE_ROWS, n)
        g = a[:, r0:r1].T @ a[:, r0:]  # rows r0..r1 against columns r0..: the upper part
        np.abs(g, out=g)
        block = g[:, : r1 - r0]  # the symmetric diagonal block: count i < j once
        total += float(g.sum()) - 0.5 * float(block.sum() + np.trace(block))
    return total
