"""Percentile bootstrap: agreement with scipy, coverage on a known case, ratios, validation."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats

from mechprobe.errors import MechprobeError
from mechprobe.stats.bootstrap import (
    bootstrap_ci,
    check_bootstrap,
    percentile_interval,
    ratio_ci,
    resample_indices,
)

pytestmark = pytest.mark.unit


def test_matches_scipy_percentile_bootstrap():
    x = np.random.default_rng(3).gamma(2.0, size=37)
    ref = stats.bootstrap(
        (x,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(11)
    )
    ci = bootstrap_ci(lambda i: x[i].mean(-1), x.size, n_boot=2000, seed=11, vectorised=True)
    assert_allclose([ci.low, ci.high], ref.confidence_interval, rtol=1e-12)
    assert_allclose(ci.replicates, ref.bootstrap_distribution, rtol=1e-12)
    assert ci.estimate == pytest.approx(x.mean())


def test_loop_and_vectorised_forms_agree_and_batch_does_not_matter():
    x = np.random.default_rng(0).normal(size=25)
    loop = bootstrap_ci(lambda i: np.median(x[i]), 25, n_boot=300, seed=5)
    vec = bootstrap_ci(lambda i: np.median(x[i], -1), 25, n_boot=300, seed=5, vectorised=True)
    small = bootstrap_ci(
        lambda i: np.median(x[i], -1), 25, n_boot=300, seed=5, vectorised=True, batch=7
    )
    assert_array_equal(loop.replicates, vec.replicates)
    assert_array_equal(vec.replicates, small.replicates)
    assert (loop.low, loop.high) == (vec.low, vec.high)
    # the replicates are the statistic on the documented draw
    idx = np.random.default_rng(5).integers(0, 25, (300, 25))
    assert_array_equal(loop.replicates, np.median(x[idx], -1))
    assert_allclose([loop.low, loop.high], np.quantile(np.median(x[idx], -1), [0.025, 0.975]))


def test_vector_valued_statistic():
    x = np.random.default_rng(1).normal(size=(30, 3)) + np.array([0.0, 5.0, -5.0])
    ci = bootstrap_ci(lambda i: x[i].mean(0), 30, n_boot=400, seed=2)
    assert ci.replicates.shape == (400, 3)
    assert_allclose(ci.estimate, x.mean(0))
    assert np.all(ci.low < x.mean(0)) and np.all(x.mean(0) < ci.high)
    idx = resample_indices(30, 400, 2)
    assert_allclose(ci.replicates, x[idx].mean(1))


def test_coverage_of_the_mean_of_normal_data():
    # 95% percentile intervals of the mean of N(0, 1) samples of 40: the percentile bootstrap
    # under-covers slightly at this n (about 0.93-0.94). 400 repetitions give a binomial SE of
    # about 0.012 on the coverage, so [0.89, 0.98] is about +-3.5 SE around the expected value.
    rng = np.random.default_rng(2024)
    hits = 0
    for rep in range(400):
        x = rng.normal(size=40)
        ci = bootstrap_ci(lambda i, x=x: x[i].mean(-1), 40, n_boot=400, seed=rep, vectorised=True)
        hits += ci.low < 0.0 < ci.high
    assert 0.89 <= hits / 400 <= 0.98
    # and a 50% interval covers about half the time (SE 0.025)
    hits50 = 0
    for rep in range(400):
        x = rng.normal(size=40)
        ci = bootstrap_ci(
            lambda i, x=x: x[i].mean(-1), 40, n_boot=400, seed=rep, level=0.5, vectorised=True
        )
        hits50 += ci.low < 0.0 < ci.high
    assert 0.40 <= hits50 / 400 <= 0.60


def test_nan_replicate_makes_the_interval_nan():
    x = np.array([1.0, 2.0, np.nan, 4.0])
    ci = bootstrap_ci(lambda i: x[i].mean(), 4, n_boot=50, seed=0)
    assert np.isnan(ci.low) and np.isnan(ci.high)


def test_percentile_interval_quantiles():
    reps = np.random.default_rng(0).normal(size=(1000, 2))
    lo, hi = percentile_interval(reps, 0.9)
    assert_allclose(lo, np.quantile(reps, 0.05, axis=0))
    assert_allclose(hi, np.quantile(reps, 0.95, axis=0))


def test_ratio_ci_pooled_and_clustered():
    rng = np.random.default_rng(7)
    num = rng.integers(0, 10, size=60).astype(float)
    den = num + rng.integers(1, 10, size=60)
    ci = ratio_ci(num, den, n_boot=500, seed=3)
    assert ci.estimate == pytest.approx(num.sum() / den.sum())
    idx = resample_indices(60, 500, 3)
    assert_allclose(ci.replicates, num[idx].sum(1) / den[idx].sum(1))
    # clusters: the same as resampling the per-group sums
    groups = np.repeat(np.arange(12), 5)[rng.permutation(60)]
    cl = ratio_ci(num, den, n_boot=500, seed=3, groups=groups)
    gn, gd = np.bincount(groups, num), np.bincount(groups, den)
    gidx = resample_indices(12, 500, 3)
    assert_allclose(cl.replicates, gn[gidx].sum(1) / gd[gidx].sum(1))
    assert cl.estimate == pytest.approx(ci.estimate)
    # a resample with zero denominator is NaN
    z = ratio_ci(np.array([1.0, 0.0]), np.array([1.0, 0.0]), n_boot=200, seed=0)
    assert np.isnan(z.replicates).any() and np.isnan(z.low)


def test_validation():
    with pytest.raises(MechprobeError):
        check_bootstrap(0, 0, 0.95)
    with pytest.raises(MechprobeError):
        check_bootstrap(10, -1, 0.95)
    with pytest.raises(MechprobeError):
        check_bootstrap(10, 0, 1.0)
    with pytest.raises(MechprobeError):
        check_bootstrap(True, 0, 0.5)
    with pytest.raises(MechprobeError):
        resample_indices(0, 10)
    with pytest.raises(MechprobeError, match="one value per index row"):
        bootstrap_ci(lambda i: np.zeros(3), 5, n_boot=10, vectorised=True)
    with pytest.raises(ValueError):
        ratio_ci(np.ones(3), np.ones(4))
