"""bonferroni_mask / fdr_mask against statsmodels.stats.multitest.multipletests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from statsmodels.stats.multitest import multipletests

from mechprobe.stats import bonferroni_mask, fdr_mask

pytestmark = pytest.mark.unit


def pvalues(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A mixture of nulls (uniform) and signals (tiny p), some exact ties."""
    rng = np.random.default_rng(seed)
    p = rng.random(shape)
    signal = rng.random(shape) < 0.2
    p[signal] = 10.0 ** rng.uniform(-8, -1, signal.sum())
    p.flat[::17] = p.flat[5]  # ties
    return p


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fdr_matches_statsmodels_fdr_bh(alpha, seed):
    p = pvalues((500,), seed)
    reject, *_ = multipletests(p, alpha=alpha, method="fdr_bh")
    assert reject.any() and not reject.all()
    assert_array_equal(fdr_mask(p, alpha), reject)


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_bonferroni_matches_statsmodels(alpha):
    p = pvalues((500,), 3)
    reject, *_ = multipletests(p, alpha=alpha, method="bonferroni")
    assert reject.any()
    assert_array_equal(bonferroni_mask(p, alpha), reject)  # no p equals alpha / n here
    assert_array_equal(bonferroni_mask(p, alpha), p < alpha / p.size)


def test_bonferroni_is_strict():
    p = np.array([0.01, 0.02, 0.5, 0.9, 0.04])
    assert_array_equal(bonferroni_mask(p, 0.05), [False, False, False, False, False])
    assert_array_equal(bonferroni_mask(p, 0.051), [True, False, False, False, False])


def test_last_axis_batches():
    p = pvalues((4, 3, 200), 4)
    for fn, method in ((fdr_mask, "fdr_bh"), (bonferroni_mask, "bonferroni")):
        mask = fn(p, 0.05)
        assert mask.shape == p.shape and mask.dtype == bool
        for idx in np.ndindex(p.shape[:-1]):
            reject, *_ = multipletests(p[idx], alpha=0.05, method=method)
            assert_array_equal(mask[idx], reject)


def test_nan_never_significant_and_not_counted():
    p = pvalues((300,), 5)
    nan_at = np.arange(0, 300, 7)
    p_nan = p.copy()
    p_nan[nan_at] = np.nan
    keep = ~np.isnan(p_nan)
    for fn, method in ((fdr_mask, "fdr_bh"), (bonferroni_mask, "bonferroni")):
        mask = fn(p_nan, 0.05)
        assert not mask[nan_at].any()
        reject, *_ = multipletests(p_nan[keep], alpha=0.05, method=method)
        assert_array_equal(mask[keep], reject)
    # also a NaN p-value of 0 or a would-be-significant one stays False
    assert_array_equal(fdr_mask(np.array([np.nan, 1e-9]), 0.05), [False, True])
    assert_array_equal(bonferroni_mask(np.array([np.nan, np.nan]), 0.05), [False, False])
    assert_array_equal(fdr_mask(np.array([np.nan, np.nan]), 0.05), [False, False])


def test_inputs_and_edge_cases():
    p = pvalues((50,), 6)
    assert_array_equal(fdr_mask(torch.from_numpy(p), 0.05), fdr_mask(p, 0.05))
    assert_array_equal(bonferroni_mask(p.tolist(), 0.05), bonferroni_mask(p, 0.05))
    assert fdr_mask(np.zeros((3, 0)), 0.05).shape == (3, 0)
    assert_array_equal(fdr_mask(np.array([0.2, 0.3]), 0.0), [False, False])
    assert_array_equal(fdr_mask(np.array([0.2, 0.3]), 1.0), [True, True])
    with pytest.raises(ValueError, match="alpha"):
        fdr_mask(p, 1.5)
    with pytest.raises(ValueError, match="dimension"):
        bonferroni_mask(np.float64(0.1), 0.05)
