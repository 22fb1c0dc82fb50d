"""E3 bootstrap over sentences: against direct numpy cosine matrices and the streaming stats."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from mechprobe.errors import MechprobeError
from mechprobe.stats import cosine_bootstrap as cb
from mechprobe.stats.bootstrap import resample_indices
from mechprobe.stats.cosine import cosine_block_stats, depth_profile
from mechprobe.stats.cosine_bootstrap import (
    depth_bootstrap,
    early_minus_late,
    pooled_mean_abs_cos,
    resampled_mean_abs_cos,
)

pytestmark = pytest.mark.unit

SLICES = {"q": slice(0, 10), "k": slice(10, 16), "v": slice(16, 22)}


def direct(x: np.ndarray, centre: bool = False) -> float:
    """Mean |cos| over all pairs u < v of non-degenerate columns: the full matrix, in numpy."""
    x = np.array(x, dtype=np.float64)
    keep = np.ones(x.shape[1], dtype=bool)
    if centre:
        keep = np.ptp(x, axis=0) > 0
        x = x - x.mean(axis=0)
    x = x[:, keep & (np.linalg.norm(x, axis=0) > 0)]
    xn = x / np.linalg.norm(x, axis=0)
    cos = xn.T @ xn
    iu = np.triu_indices(cos.shape[0], k=1)
    return float(np.abs(cos[iu]).mean()) if iu[0].size else float("nan")


def layer(seed: int, n: int = 15) -> np.ndarray:
    """Units with shared structure, a unit active in one sentence only, and a constant unit."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) @ rng.normal(size=(3, 22)) + 0.5 * rng.normal(size=(n, 22))
    x[:, 4] = 0.0
    x[2, 4] = 1.5  # zero norm in any resample without sentence 2
    x[:, 13] = 0.7  # constant: left out when centred
    x[:, 20] = 0.0  # zero norm everywhere
    return x


@pytest.mark.parametrize("centre", [False, True])
def test_pooled_equals_depth_profile_and_direct(centre):
    x = layer(0)
    stats = cosine_block_stats(x, SLICES, centre=centre)
    mean_abs, _ = depth_profile(
        stats["n_pairs"][:, None], stats["cos_mean_abs"][:, None], stats["hist"][:, None]
    )
    got = pooled_mean_abs_cos(x, SLICES, centre=centre)
    assert got == pytest.approx(mean_abs[0], rel=1e-12)
    assert got == pytest.approx(direct(x, centre), rel=1e-12)


@pytest.mark.parametrize("centre", [False, True])
def test_resamples_against_direct_numpy(centre, monkeypatch):
    x = layer(1)
    idx = resample_indices(15, 40, seed=3)
    want = np.array([direct(x[row], centre) for row in idx])
    assert_allclose(resampled_mean_abs_cos(x, SLICES, idx, centre=centre), want, atol=2e-6)
    exact = resampled_mean_abs_cos(x, SLICES, idx, centre=centre, dtype=np.float64)
    assert_allclose(exact, want, rtol=1e-12)
    monkeypatch.setattr(cb, "TILE_ROWS", 3)  # many tiles, one ragged
    tiled = resampled_mean_abs_cos(x, SLICES, idx, centre=centre, dtype=np.float64)
    assert_allclose(tiled, want, rtol=1e-12)
    loose = resampled_mean_abs_cos(x, SLICES, idx, centre=centre, blas_threads=None)
    assert_allclose(loose, want, atol=2e-6)


def test_slices_select_columns_and_must_not_overlap():
    x = np.random.default_rng(2).normal(size=(12, 30))
    sl = {"q": slice(20, 30), "k": slice(0, 5), "v": slice(5, 8)}
    cols = np.r_[20:30, 0:8]
    assert pooled_mean_abs_cos(x, sl) == pytest.approx(direct(x[:, cols]), rel=1e-12)
    with pytest.raises(ValueError, match="overlap"):
        pooled_mean_abs_cos(x, {"q": slice(0, 10), "k": slice(5, 12), "v": slice(12, 14)})
    with pytest.raises(ValueError):
        resampled_mean_abs_cos(x, None, np.array([[0, 12]]))


def test_fewer_than_two_units_is_nan():
    x = np.zeros((5, 3))
    x[:, 0] = 1.0
    assert np.isnan(pooled_mean_abs_cos(x))


def test_early_minus_late():
    diff, k = early_minus_late(np.array([0.9, 0.7, 0.6, 0.5, 0.2, 0.4, 0.1]))
    assert k == 2 and diff == pytest.approx(0.8 - 0.25)
    d2, k2 = early_minus_late(np.array([[0.5, 0.1], [0.2, 0.3]]))
    assert k2 == 1 and d2 == pytest.approx([0.4, -0.1])
    d1, _ = early_minus_late(np.array([0.5]))
    assert np.isnan(d1)


def test_depth_bootstrap_uses_one_set_of_resamples():
    layers = [layer(s, n=18) * (1.0 + s) for s in range(5)]
    res = depth_bootstrap(iter(layers), SLICES, n_boot=60, seed=9, level=0.9)
    idx = resample_indices(18, 60, 9)
    want = np.stack([[direct(x[row]) for row in idx] for x in layers], axis=1)
    assert_allclose(res["replicates"], want, atol=2e-6)
    assert_allclose(res["mean_abs"], [direct(x) for x in layers], rtol=1e-12)
    assert_allclose(res["low"], np.quantile(res["replicates"], 0.05, axis=0))
    assert_allclose(res["high"], np.quantile(res["replicates"], 0.95, axis=0))
    diffs = want[:, 0] - want[:, -1]  # 5 layers: a third is one layer
    assert res["third"] == 1
    assert_allclose(res["early_minus_late_replicates"], diffs, atol=4e-6)
    assert res["early_minus_late_low"] == pytest.approx(np.quantile(diffs, 0.05), abs=4e-6)
    assert res["early_minus_late"] == pytest.approx(res["mean_abs"][0] - res["mean_abs"][-1])
    assert_allclose(res["bias"], want.mean(0) - res["mean_abs"], atol=2e-6)


def test_depth_bootstrap_detects_a_depth_trend_and_validates():
    # early layers: units share one factor strongly (|cos| near 1); late: unrelated units
    rng = np.random.default_rng(4)
    f = rng.normal(size=(40, 1))
    layers = [f @ rng.normal(size=(1, 22)) + s * rng.normal(size=(40, 22)) for s in (0.1, 1, 9)]
    res = depth_bootstrap(layers, SLICES, n_boot=100)
    assert res["early_minus_late_low"] > 0.3
    with pytest.raises(MechprobeError):
        depth_bootstrap([], SLICES)
    with pytest.raises(ValueError, match="sentences"):
        depth_bootstrap([np.ones((5, 22)), np.ones((6, 22))], SLICES)


def test_resampling_inflates_small_cosines_as_documented():
    x = np.random.default_rng(0).normal(size=(54, 120))
    res = depth_bootstrap([x], n_boot=100)
    assert res["mean_abs"][0] == pytest.approx(np.sqrt(2 / np.pi / 54), rel=0.05)
    ratio = res["replicates"].mean() / res["mean_abs"][0]
    assert 1.25 < ratio < 1.55
