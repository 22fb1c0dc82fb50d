"""A streaming score (Lagrange-multiplier) test of ``label ~ 1 + activation``, per unit.

The score test of ``H0: beta = 0`` needs only the intercept-only fit, so its statistic is
a function of a few per-unit sums that can be accumulated shard by shard and merged, in
memory ``O(units)``, without ever holding all activations at once.

Example:
    >>> import numpy as np
    >>> from mechprobe.stats.score import ScoreAccumulator
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, size=300)
    >>> x = rng.normal(size=(300, 4)) + [0.0, 0.0, 0.0, 1.0] * y[:, None]
    >>> acc = ScoreAccumulator()
    >>> acc.add(x[:100], y[:100])
    >>> other = ScoreAccumulator()
    >>> other.add(x[100:], y[100:])
    >>> acc.merge(other)
    >>> stat, p = acc.result()
    >>> bool(p[3] < 1e-10), bool(p[:3].min() > 1e-3)
    (True, True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Shaped
from scipy import stats

__all__ = ["ScoreAccumulator", "ScoreResult", "score_test"]

Acts = Float[np.ndarray, "samples units"] | Float[torch.Tensor, "samples units"]
Labels = Shaped[np.ndarray, " samples"] | Shaped[torch.Tensor, " samples"]
UnitFloats = Float[np.ndarray, " units"]


class ScoreResult(NamedTuple):
    """Per-unit score statistics and p-values (see :class:`ScoreAccumulator`)."""

    statistic: UnitFloats
    pvalue: UnitFloats


class ScoreAccumulator:
    """Mergeable per-unit sums for Rao's score test of ``beta = 0`` in ``y ~ 1 + x``.

    The statistic is Rao's score statistic at the intercept-only maximum-likelihood fit
    ``p = ybar`` (for one unit, with ``n`` samples, ``n1`` positives and ``ybar = n1 / n``):

        U = sum_i (y_i - ybar) x_i                        (score for beta at the null fit)
        I = ybar (1 - ybar) (sum_i x_i^2 - (sum_i x_i)^2 / n)   (efficient information)
        S = U^2 / I,    p = chi2(1).sf(S)

    which equals ``n r^2``, ``r`` the Pearson correlation of ``x`` and ``y``. It is NaN
    for a constant unit (``I = 0``) and for all units when ``y`` has a single class.

    The state is equivalent to the sums ``n, sum y, sum x, sum x^2, sum x y`` (memory
    ``O(units)``), but is kept in the centred form of Chan, Golub & LeVeque (1979):
    ``n``, ``n1`` (exact integers), the mean of ``x``, ``M2 = sum (x - mean x)^2 =
    I / (ybar (1 - ybar))`` and ``C = sum (x - mean x)(y - ybar) = U``, each updated and
    merged with the pairwise formulas. Raw power sums would lose all their precision
    to cancellation in ``sum x^2 - (sum x)^2 / n`` for activations with a large offset
    (e.g. ``1e4 + N(0, 1)``); the centred form does not, and the result does not depend
    (beyond rounding) on how the samples are split into blocks and shards: the absolute
    error of ``z = sqrt(S)`` is of the order of ``1e-16 * sqrt(n) * |mean x| / sd x``. The per-unit
    minimum and maximum are kept too, to detect constant units exactly.

    Example:
        >>> import numpy as np
        >>> acc = ScoreAccumulator()
        >>> acc.add(np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]), np.array([0, 1, 1]))
        >>> acc.result().statistic  # 3 r^2 = 3 * 0.75; unit 1 is constant
        array([2.25,  nan])
    """

    def __init__(self) -> None:
        self.n = 0
        self.n1 = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.cxy: np.ndarray | None = None
        self.xmin: np.ndarray | None = None
        self.xmax: np.ndarray | None = None

    def _sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``mean, m2, cxy, xmin, xmax``, once set: the first block sets all five together."""
        assert self.mean is not None and self.m2 is not None and self.cxy is not None
        assert self.xmin is not None and self.xmax is not None
        return self.mean, self.m2, self.cxy, self.xmin, self.xmax

    @property
    def n_units(self) -> int | None:
        """Number of units, or ``None`` before the first block."""
        return None if self.mean is None else int(self.mean.shape[0])

    def add(self, x_block: Acts, y_block: Labels) -> None:
        """Add a block of samples.

        Args:
            x_block: Activations, shape ``[samples, units]``, numpy array or torch tensor
                (reduced in float64 on the tensor's device). Must be finite.
            y_block: Binary labels (0/1, bool, int or float), shape ``[samples]``.

        Raises:
            ValueError: On mismatched shapes, non-binary labels or non-finite activations.
        """
        xt = x_block if isinstance(x_block, torch.Tensor) else torch.as_tensor(np.asarray(x_block))
        if xt.ndim != 2:
            raise ValueError(f"x_block must have shape [samples, units], got {tuple(xt.shape)}")
        nb, m = xt.shape
        if self.mean is not None and m != self.mean.shape[0]:
            raise ValueError(f"x_block has {m} units, the accumulator {self.mean.shape[0]}")
        yt = y_block if isinstance(y_block, torch.Tensor) else torch.as_tensor(np.asarray(y_block))
        yt = yt.detach().reshape(-1).to(device=xt.device, dtype=torch.float64)
        if yt.shape[0] != nb:
            raise ValueError(f"y_block has {yt.shape[0]} samples but x_block has {nb}")
        if not bool(((yt == 0) | (yt == 1)).all()):
            raise ValueError("y_block must contain only 0 and 1")
        if nb == 0:
            if self.mean is None:
                self._set_empty(m)
            return
        with torch.no_grad():
            x64 = xt.detach().to(torch.float64)
            xmin, xmax = x64.amin(0), x64.amax(0)
            if not bool((torch.isfinite(xmin) & torch.isfinite(xmax)).all()):
                raise ValueError("x_block contains NaN or infinite values")
            mean = x64.mean(0)
            dev = x64 - mean
            m2 = dev.square().sum(0)
            # sum (x - mean x)(y - ybar), centred in y too: insensitive to rounding in mean x
            cxy = (yt - yt.mean()) @ dev
        block = ScoreAccumulator()
        block.n, block.n1 = nb, int(yt.sum())
        block.mean, block.m2, block.cxy, block.xmin, block.xmax = (
            t.cpu().numpy() for t in (mean, m2, cxy, xmin, xmax)
        )
        self.merge(block)

    def merge(self, other: ScoreAccumulator) -> None:
        """Merge the samples of another accumulator (on the same units) into this one."""
        if other.mean is None:
            return
        if self.mean is None:
            self.n, self.n1 = other.n, other.n1
            self.mean, self.m2, self.cxy, self.xmin, self.xmax = (
                np.array(a) for a in (other.mean, other.m2, other.cxy, other.xmin, other.xmax)
            )
            return
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge {other.mean.shape[0]} units into {self.mean.shape[0]}")
        if other.n == 0:
            return
        if self.n == 0:
            self.xmin, self.xmax = np.array(other.xmin), np.array(other.xmax)
            self.n, self.n1 = other.n, other.n1
            self.mean, self.m2, self.cxy = (np.array(a) for a in (other.mean, other.m2, other.cxy))
            return
        _, m2, cxy, xmin, xmax = self._sums()
        _, o_m2, o_cxy, o_xmin, o_xmax = other._sums()
        na, nb = self.n, other.n
        n = na + nb
        dx = other.mean - self.mean
        dy = other.n1 / nb - self.n1 / na
        f = na * nb / n
        self.mean = self.mean + dx * (nb / n)
        self.m2 = m2 + o_m2 + dx * dx * f
        self.cxy = cxy + o_cxy + dx * (dy * f)
        self.xmin = np.minimum(xmin, o_xmin)
        self.xmax = np.maximum(xmax, o_xmax)
        self.n, self.n1 = n, self.n1 + other.n1

    def result(self) -> ScoreResult:
        """The score statistic ``S = U^2 / I`` and ``p = chi2(1).sf(S)`` per unit.

        Raises:
            ValueError: If no samples were added.
        """
        if self.mean is None or self.n == 0:
            raise ValueError("no samples were added")
        _, m2, cxy, xmin, xmax = self._sums()
        ybar = self.n1 / self.n
        info = ybar * (1.0 - ybar) * m2
        ok = (xmax > xmin) & (info > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = np.where(ok, cxy * cxy / np.where(ok, info, 1.0), np.nan)
        return ScoreResult(statistic=stat, pvalue=stats.chi2.sf(stat, 1))

    def state(self) -> dict[str, np.ndarray]:
        """The accumulator's state as arrays (e.g. for ``np.savez``); see :meth:`from_state`."""
        if self.mean is None:
            return {"n": np.array([0, 0])}
        mean, m2, cxy, xmin, xmax = self._sums()
        return {
            "n": np.array([self.n, self.n1]),
            "mean": mean,
            "m2": m2,
            "cxy": cxy,
            "xmin": xmin,
            "xmax": xmax,
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> ScoreAccumulator:
        """Rebuild an accumulator from :meth:`state` (e.g. one written by another process)."""
        acc = cls()
        acc.n, acc.n1 = (int(v) for v in np.asarray(state["n"]))
        if "mean" in state:
            acc.mean, acc.m2, acc.cxy, acc.xmin, acc.xmax = (
                np.array(state[k], dtype=np.float64) for k in ("mean", "m2", "cxy", "xmin", "xmax")
            )
        return acc

    def _set_empty(self, m: int) -> None:
        self.mean, self.m2, self.cxy = np.zeros(m), np.zeros(m), np.zeros(m)
        self.xmin, self.xmax = np.full(m, np.inf), np.full(m, -np.inf)


def score_test(x: Acts, y: Labels) -> ScoreResult:
    """Score test of ``beta = 0`` in ``y ~ 1 + x`` for every unit, in one pass.

    Shorthand for one :meth:`ScoreAccumulator.add` and :meth:`ScoreAccumulator.result`.

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
        >>> float(score_test(x, np.array([0, 0, 1, 1])).statistic[0])  # 4 r^2 = 4 * 0.8
        3.2
    """
    acc = ScoreAccumulator()
    acc.add(x, y)
    return acc.result()
