"""Cross-validated accuracy of univariate logistic probes (stratified K folds).

Example:
    >>> y = np.array([0, 1] * 30)
    >>> x = np.random.default_rng(0).normal(size=(60, 4)) + 2.0 * y[:, None]
    >>> acc = cv_accuracy(x, y, stratified_folds(y, 3))
    >>> bool((acc > 0.7).all())
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechprobe.errors import MechprobeError
from mechprobe.stats.logistic import fit_logistic


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per sample: each class shuffled (seeded) and dealt round-robin.

    Raises:
        MechprobeError: If ``k < 2`` or a class has fewer than ``k`` samples.

    Example:
        >>> sorted(stratified_folds(np.array([0, 0, 1, 1]), 2).tolist())
        [0, 0, 1, 1]
    """
    if k < 2:
        raise MechprobeError(f"cv needs at least 2 folds, got {k}")
    folds = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < k:
            raise MechprobeError(f"cv {k}: class {int(label)} has only {len(idx)} samples")
        folds[rng.permutation(idx)] = np.arange(len(idx)) % k
    return folds


def _predict(fit: Any, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """``p_hat > 0.5`` per test sample and unit (float 0/1; NaN where no prediction exists).

    Regular units: ``intercept + beta x > 0``. Constant units: the intercept-only model.
    Separated units: the limit of the diverging fit, a threshold halfway between the classes.
    """
    beta, icpt = fit.beta[None, :], fit.intercept[None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        pred = (icpt + beta * x_test > 0).astype(np.float64)
    regular = np.isfinite(fit.beta) & np.isfinite(fit.intercept)
    constant = np.isnan(fit.beta) & np.isfinite(fit.intercept)
    pred[:, constant] = (fit.intercept[constant] > 0).astype(np.float64)
    sep = fit.separated & np.isinf(fit.beta)
    if sep.any():
        xs, pos = x_train[:, sep], y_train > 0.5
        up = fit.beta[sep] > 0  # class 1 above the boundary
        lo = np.where(up, xs[~pos].max(0), xs[pos].max(0))
        hi = np.where(up, xs[pos].min(0), xs[~pos].min(0))
        thr = (lo + hi) / 2
        above = x_test[:, sep] > thr
        below = x_test[:, sep] < thr
        pred[:, sep] = np.where(up, above, below).astype(np.float64)
    pred[:, ~(regular | constant | sep)] = np.nan
    return pred


def cv_accuracy(
    x: Float[np.ndarray, "batch units"] | Tensor,
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    device: str | torch.device | None = None,
) -> Float[np.ndarray, " units"]:
    """Cross-validated accuracy per unit: fit on the other folds, predict the held-out fold.

    Returns the fraction of all samples predicted correctly when held out (``p_hat > .5``).

    Example:
        >>> y = np.array([0, 1] * 10)
        >>> cv_accuracy(np.c_[y, np.ones(20)], y, stratified_folds(y, 5)).tolist()
        [1.0, 0.5]
    """
    x = x.double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    correct = np.zeros(x.shape[1])
    for f in np.unique(folds):
        test = folds == f
        fit = fit_logistic(x[~test], y[~test], device=device)
        pred = _predict(fit, x[~test], y[~test], x[test])
        correct += (pred == y[test, None]).sum(0)
        correct[np.isnan(pred).any(0)] = np.nan
    return correct / len(y)
