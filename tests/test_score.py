"""The streaming score test against statsmodels' GLM score test, and shard merging."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from numpy.testing import assert_allclose, assert_array_equal

from mechprobe.stats.score import ScoreAccumulator, ScoreResult, score_test

pytestmark = pytest.mark.unit


def sm_score(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: statsmodels' score test of adding x[:, j] to the intercept-only GLM."""
    null = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial()).fit(tol=1e-14)
    out = [null.score_test(exog_extra=x[:, [j]]) for j in range(x.shape[1])]
    return np.array([r.statistic[0] for r in out]), np.array([r.pvalue[0] for r in out])


def make_data(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.37).astype(np.float64)
    effect = rng.normal(0, 0.5, m)
    scale = 10.0 ** rng.uniform(-2, 2, m)
    offset = rng.normal(0, 5, m) * scale
    x = (rng.standard_normal((n, m)) + effect * y[:, None]) * scale + offset
    x[:, : m // 4] = np.maximum(x[:, : m // 4], np.median(x[:, : m // 4], axis=0))  # ReLU-like
    return x, y


def test_matches_statsmodels():
    x, y = make_data(250, 40, seed=0)
    res = score_test(x, y)
    assert isinstance(res, ScoreResult)
    stat, p = sm_score(x, y)
    assert p.min() < 1e-6 and p.max() > 0.1  # both real effects and null units
    assert_allclose(res.statistic, stat, rtol=1e-8)
    assert_allclose(res.pvalue, p, rtol=1e-7)


def shards(n: int, rng: np.random.Generator) -> list[slice]:
    cuts = np.sort(rng.choice(np.arange(1, n), size=6, replace=False))
    cuts = np.concatenate([[0, 0, 1], cuts, [n]])  # an empty and a one-sample shard
    return [slice(a, b) for a, b in itertools.pairwise(cuts)]


def test_merged_shards_equal_one_pass():
    x, y = make_data(301, 25, seed=1)
    rng = np.random.default_rng(2)
    one = score_test(x, y)
    # shards accumulated block by block, then merged in a tree
    accs = []
    for sl in shards(len(y), rng):
        acc = ScoreAccumulator()
        for lo in range(sl.start, max(sl.stop, sl.start + 1), 17):
            hi = min(lo + 17, sl.stop)
            acc.add(x[lo:hi], y[lo:hi])
        accs.append(acc)
    left, right = ScoreAccumulator(), ScoreAccumulator()
    for acc in accs[:3]:
        left.merge(acc)
    for acc in accs[3:]:
        right.merge(acc)
    left.merge(right)
    assert left.n == len(y) and left.n1 == int(y.sum())
    merged = left.result()
    assert_allclose(merged.statistic, one.statistic, rtol=1e-10)
    assert_allclose(merged.pvalue, one.pvalue, rtol=1e-9)


def test_large_offset_is_exact():
    """Centred sums: an offset of 1e8 sd changes nothing (raw power sums would cancel)."""
    x, y = make_data(200, 10, seed=3)
    x = (x - x.mean(0)) / x.std(0)
    shifted = x + 1e8
    ref = sm_score(shifted - 1e8, y)[0]  # the same rounded inputs, without the offset
    acc = ScoreAccumulator()
    for lo in range(0, 200, 30):
        acc.add(shifted[lo : lo + 30], y[lo : lo + 30])
    # the block means carry rounding errors of ulp(1e8) ~ 1.5e-8, i.e. 1.5e-8 sd: compare
    # |z| = sqrt(S), on the scale of a standard normal
    assert_allclose(np.sqrt(acc.result().statistic), np.sqrt(ref), rtol=0, atol=1e-7)
    # the textbook formula from raw power sums is useless here
    n, ybar = len(y), y.mean()
    sx, sxx, sxy = shifted.sum(0), (shifted**2).sum(0), y @ shifted
    with np.errstate(divide="ignore", invalid="ignore"):
        naive = (sxy - ybar * sx) ** 2 / (ybar * (1 - ybar) * (sxx - sx**2 / n))
    assert not np.allclose(naive, ref, rtol=1e-2)


def test_constant_units_and_single_class():
    y = np.array([0, 1, 0, 1, 1, 0], dtype=float)
    x = np.column_stack([np.full(6, 2.5), np.arange(6.0), np.r_[np.zeros(3), np.ones(3)]])
    acc = ScoreAccumulator()
    acc.add(x[:3], y[:3])  # unit 2 is constant in this shard only
    acc.add(x[3:], y[3:])
    stat, p = acc.result()
    assert np.isnan(stat[0]) and np.isnan(p[0])
    assert_allclose(stat[1:], sm_score(x[:, 1:], y)[0], rtol=1e-8)
    single = score_test(x, np.ones(6))
    assert np.isnan(single.statistic).all() and np.isnan(single.pvalue).all()


def test_state_round_trip_and_torch_input():
    x, y = make_data(120, 8, seed=4)
    acc = ScoreAccumulator()
    acc.add(torch.from_numpy(x[:60]), torch.from_numpy(y[:60]).bool())
    restored = ScoreAccumulator.from_state(dict(acc.state()))
    restored.add(x[60:], y[60:])
    assert_allclose(restored.result().statistic, score_test(x, y).statistic, rtol=1e-10)
    empty = ScoreAccumulator.from_state(ScoreAccumulator().state())
    empty.merge(restored)
    assert_array_equal(empty.result().statistic, restored.result().statistic)


def test_errors():
    acc = ScoreAccumulator()
    with pytest.raises(ValueError, match="no samples"):
        acc.result()
    acc.add(np.zeros((3, 2)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="units"):
        acc.add(np.zeros((3, 5)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="0 and 1"):
        acc.add(np.zeros((3, 2)), np.array([0, 2, 0]))
    with pytest.raises(ValueError, match="finite"):
        acc.add(np.full((3, 2), np.inf), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="samples"):
        acc.add(np.zeros((3, 2)), np.array([0, 1]))
