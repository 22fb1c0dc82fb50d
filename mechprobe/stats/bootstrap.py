"""A small seeded percentile bootstrap over resampled sample indices.

Every interval here is the **percentile** bootstrap interval: draw ``n_boot`` resamples of the
sample indices ``0 .. n-1`` with replacement (``numpy.random.default_rng(seed).integers(0, n,
(n_boot, n))``, the draw ``scipy.stats.bootstrap`` makes with that generator), evaluate the
statistic on each, and take the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
replicates (``numpy.quantile``, linear interpolation). With the same seed the interval is the one
``scipy.stats.bootstrap(..., method="percentile", rng=np.random.default_rng(seed))`` gives. A
replicate that is NaN makes the interval NaN (nothing is silently dropped).

Resampling the same index rows for several statistics (`resample_indices`) keeps their
replicates paired, so the interval of a difference of two statistics is computed from the
differences of their replicates.

Example:
    >>> x = np.random.default_rng(1).normal(size=40)
    >>> ci = bootstrap_ci(lambda idx: x[idx].mean(-1), x.size, vectorised=True)
    >>> bool(ci.low < x.mean() < ci.high)
    True
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int, Shaped

from mechprobe.errors import MechprobeError
from mechprobe.validate import check_count, check_number, check_seed

__all__ = [
    "BootstrapCI",
    "bootstrap_ci",
    "check_bootstrap",
    "percentile_interval",
    "ratio_ci",
    "resample_indices",
]

#: Default number of index elements per call of a vectorised statistic (``rows x n``).
BATCH_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class BootstrapCI:
    """A statistic on the full sample, its percentile bootstrap interval and replicates.

    Attributes:
        estimate: The statistic on the original sample (indices ``0 .. n-1``).
        low: The ``(1 - level) / 2`` quantile of the replicates.
        high: The ``(1 + level) / 2`` quantile of the replicates.
        replicates: The statistic on each resample, shape ``[n_boot, ...]``.
        level: The nominal coverage.
    """

    estimate: np.ndarray | float
    low: np.ndarray | float
    high: np.ndarray | float
    replicates: np.ndarray
    level: float

    @property
    def n_boot(self) -> int:
        """Number of resamples."""
        return int(self.replicates.shape[0])


def check_bootstrap(n_boot: int, seed: int, level: float) -> tuple[int, int, float]:
    """Validate bootstrap settings: ``n_boot >= 1``, a seed in ``[0, 2**32)``, ``0 < level < 1``.

    Raises:
        MechprobeError: On an invalid value.

    Example:
        >>> check_bootstrap(np.int64(200), 0, 0.95)
        (200, 0, 0.95)
    """
    n_boot = check_count(_as_int(n_boot, "n_boot"), 1, "n_boot")
    seed = check_seed(_as_int(seed, "seed"))
    level = check_number(level, low=0.0, high=1.0, inclusive=False, what="level")
    return n_boot, seed, level


def resample_indices(n: int, n_boot: int = 1000, seed: int = 0) -> Int[np.ndarray, "boot samples"]:
    """``n_boot`` rows of ``n`` indices drawn uniformly from ``0 .. n-1`` with replacement.

    The draw is ``np.random.default_rng(seed).integers(0, n, (n_boot, n))``.

    Example:
        >>> resample_indices(5, 3, seed=0).shape
        (3, 5)
    """
    n = check_count(_as_int(n, "n"), 1, "the number of samples")
    n_boot, seed, _ = check_bootstrap(n_boot, seed, 0.5)
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def percentile_interval(
    replicates: Float[np.ndarray, "boot ..."], level: float = 0.95
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles along the first axis.

    Linear interpolation (``numpy.quantile``'s default); NaN where any replicate is NaN.

    Example:
        >>> percentile_interval(np.arange(101.0), 0.5)
        (25.0, 75.0)
    """
    level = check_number(level, low=0.0, high=1.0, inclusive=False, what="level")
    reps = np.asarray(replicates, dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha], axis=0)
    return _scalar(lo), _scalar(hi)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray | float],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    *,
    vectorised: bool = False,
    batch: int | None = None,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``statistic`` over resampled sample indices.

    The statistic sees indices, not data, so it can resample any number of aligned arrays
    (rows of activations, labels, ...). Without ``vectorised`` it is called once per resample
    with a 1-D index array ``[n]`` and returns a scalar or an array (any fixed shape); with
    ``vectorised`` it is called with a 2-D index array ``[rows, n]`` (one resample a row, at
    most ``batch`` rows a call) and returns ``[rows, ...]``. The estimate is the statistic on
    ``arange(n)`` (the 1-D form, or a one-row 2-D form when vectorised).

    Args:
        statistic: Function of sample indices (see above).
        n: Number of samples.
        n_boot: Number of resamples.
        seed: Seed of the resampling (`resample_indices`).
        level: Nominal coverage of the two-sided interval.
        vectorised: Whether ``statistic`` takes a 2-D array of index rows.
        batch: Rows per vectorised call (default: about ``BATCH_ELEMENTS / n``).

    Returns:
        A `BootstrapCI` (percentile interval).

    Example:
        >>> x = np.arange(10.0)
        >>> ci = bootstrap_ci(lambda idx: x[idx].mean(), 10, n_boot=200, seed=1)
        >>> ci.estimate, ci.replicates.shape, bool(ci.low < 4.5 < ci.high)
        (4.5, (200,), True)
    """
    n_boot, seed, level = check_bootstrap(n_boot, seed, level)
    idx = resample_indices(n, n_boot, seed)
    n = idx.shape[1]
    if vectorised:
        rows = max(1, int(batch) if batch else BATCH_ELEMENTS // n)
        estimate = np.asarray(statistic(np.arange(n)[None, :]), dtype=np.float64)[0]
        parts = [
            np.asarray(statistic(idx[i : i + rows]), dtype=np.float64)
            for i in range(0, n_boot, rows)
        ]
        reps = np.concatenate(parts, axis=0)
        if reps.shape[0] != n_boot:
            raise MechprobeError(
                f"a vectorised statistic must return one value per index row; got "
                f"{reps.shape[0]} for {n_boot} rows"
            )
    else:
        estimate = np.asarray(statistic(np.arange(n)), dtype=np.float64)
        reps = np.stack([np.asarray(statistic(row), dtype=np.float64) for row in idx])
    low, high = percentile_interval(reps, level)
    return BootstrapCI(_scalar(estimate), low, high, reps, level)


def ratio_ci(
    numerator: Shaped[np.ndarray, " samples"],
    denominator: Shaped[np.ndarray, " samples"],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    *,
    groups: Shaped[np.ndarray, " samples"] | None = None,
) -> BootstrapCI:
    """Bootstrap interval of a pooled ratio ``sum(numerator) / sum(denominator)``.

    The rows (e.g. query positions with their count of negative scores and of pairs, or samples
    with 0/1 outcomes and 1) are resampled, vectorised. With ``groups`` the rows are summed per
    group first and whole groups are resampled (a cluster bootstrap: e.g. texts, when positions
    within a text are not independent). A resample whose denominator sums to 0 gives NaN.

    Example:
        >>> ci = ratio_ci(np.array([1, 0, 1, 1]), np.ones(4), n_boot=100)
        >>> ci.estimate
        0.75
    """
    num: np.ndarray = np.asarray(numerator, dtype=np.float64)
    den: np.ndarray = np.asarray(denominator, dtype=np.float64)
    if num.ndim != 1 or num.shape != den.shape:
        raise ValueError(f"numerator {num.shape} and denominator {den.shape} must be equal 1-D")
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != num.shape:
            raise ValueError(f"groups has shape {g.shape}, numerator {num.shape}")
        _, inverse = np.unique(g, return_inverse=True)
        num, den = np.bincount(inverse, num), np.bincount(inverse, den)
    if num.size == 0:
        raise MechprobeError("no samples to bootstrap")

    def pooled(idx: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            d = den[idx].sum(-1)
            return np.where(d > 0, num[idx].sum(-1) / np.where(d > 0, d, 1.0), np.nan)

    return bootstrap_ci(pooled, num.size, n_boot, seed, level, vectorised=True)


def _as_int(value: object, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise MechprobeError(f"{what} must be an integer, got {value!r}") from None


def _scalar(x: np.ndarray | float) -> np.ndarray | float:
    a = np.asarray(x)
    return float(a) if a.ndim == 0 else a
