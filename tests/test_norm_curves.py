"""E4 over many samples: vectorised scaling rule against scaling_verdict, bands, hit rates."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from mechprobe.errors import MechprobeError
from mechprobe.stats.bootstrap import resample_indices
from mechprobe.stats.logits import scaling_verdict
from mechprobe.stats.norm_curves import (
    curve_band,
    holds_fraction,
    scaling_holds,
    scaling_summary,
)

pytestmark = pytest.mark.unit


def synthetic_curves(rng, n, n_hidden, layer, factor):
    """Curves that start at 1, jump by about ``factor`` at the block, then drift back or not."""
    at = factor * np.exp(rng.normal(0, 1.0, size=n))
    recover = rng.uniform(-0.5, 1.5, size=n)  # share of the log gap restored by the last block
    curves = np.ones((n, n_hidden))
    steps = np.linspace(0, 1, n_hidden - layer - 1)
    log_at = np.log(at)
    curves[:, layer + 1 :] = np.exp(log_at[:, None] * (1 - recover[:, None] * steps[None, :]))
    final = np.exp(log_at * rng.uniform(-0.2, 1.0, size=n))
    return curves, final


@pytest.mark.parametrize(("factor", "layer"), [(0.1, 3), (10.0, 3), (0.1, 7), (10.0, 0), (1.0, 2)])
def test_vectorised_rule_matches_scaling_verdict(factor, layer):
    rng = np.random.default_rng(int(factor * 10) + layer)
    curves, final = synthetic_curves(rng, 400, 10, layer, factor)
    curves[::37, layer + 1] = np.nan  # NaN never holds
    got = scaling_holds(curves, final, layer, factor)
    want = [
        scaling_verdict(c, f, layer, factor)["holds"] for c, f in zip(curves, final, strict=True)
    ]
    assert_array_equal(got, want)
    assert 0 < got.sum() < got.size  # both outcomes occur, so the comparison means something


def test_edge_cases_of_the_rule():
    # no later block after the scaled one: never restored
    r = np.array([[1.0, 0.8, 0.1]])
    assert not scaling_holds(r, None, 1, 0.1)[0]
    assert not scaling_verdict(r[0], 1.0, 1, 0.1)["holds"]
    # ... even where the block after the one before would have restored it
    assert scaling_holds(np.array([[1.0, 0.1, 0.5]]), None, 0, 0.1)[0]
    # overshoot (last >= 1) is not "partly restored"
    assert not scaling_holds(np.array([[1.0, 0.1, 1.0]]), None, 0, 0.1)[0]
    # a final ratio <= 0 never compresses (scaling_verdict cannot take its log)
    r = np.array([[1.0, 5.0, 4.0]] * 2)
    assert scaling_holds(r, np.array([0.0, -1.0]), 0, 10.0).tolist() == [False, False]
    with pytest.raises(MechprobeError, match="final norm"):
        scaling_holds(r, None, 0, 10.0)
    with pytest.raises(MechprobeError, match="out of range"):
        scaling_holds(r, None, 2, 0.1)
    with pytest.raises(ValueError):
        scaling_holds(r, np.ones(3), 0, 10.0)


def test_curve_band():
    rng = np.random.default_rng(0)
    curves = rng.lognormal(size=(1001, 6))
    med, lo, hi = curve_band(curves)
    assert_allclose(med, np.median(curves, axis=0))
    assert_allclose(lo, np.percentile(curves, 2.5, axis=0))
    assert_allclose(hi, np.percentile(curves, 97.5, axis=0))
    # on 1001 iid samples about 95% lie inside the band in every column
    inside = ((curves >= lo) & (curves <= hi)).mean(axis=0)
    assert np.all(np.abs(inside - 0.95) < 0.01)
    curves[3, 2] = np.nan
    med, lo, hi = curve_band(curves)
    assert np.isnan(med[2]) and np.isnan(lo[2]) and not np.isnan(med[1])


def test_holds_fraction_and_its_interval():
    rng = np.random.default_rng(1)
    holds = rng.random(300) < 0.3
    res = holds_fraction(holds, n_boot=500, seed=2)
    assert res["fraction"] == pytest.approx(holds.mean()) and res["n_holds"] == holds.sum()
    idx = resample_indices(300, 500, 2)
    reps = holds[idx].mean(1)
    assert [res["low"], res["high"]] == pytest.approx(np.quantile(reps, [0.025, 0.975]).tolist())
    # close to the normal-approximation interval of a proportion
    se = np.sqrt(holds.mean() * (1 - holds.mean()) / 300)
    assert res["high"] - res["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    # grouped: sentences of 5 positions that all agree give a wider interval
    sentence = np.repeat(np.arange(60), 5)
    agree = np.repeat(rng.random(60) < 0.3, 5)
    g = holds_fraction(agree, groups=sentence, n_boot=500, seed=2)
    ng = holds_fraction(agree, n_boot=500, seed=2)
    assert g["high"] - g["low"] > 1.8 * (ng["high"] - ng["low"])
    assert holds_fraction(np.ones(10, bool), n_boot=50)["low"] == 1.0
    with pytest.raises(MechprobeError):
        holds_fraction(np.array([], dtype=bool))


def test_scaling_summary_on_synthetic_curves():
    rng = np.random.default_rng(5)
    curves, final = synthetic_curves(rng, 200, 8, 2, 0.1)
    s = scaling_summary(curves, final, 2, 0.1, n_boot=200, seed=1, level=0.9)
    assert_array_equal(s["holds"], scaling_holds(curves, final, 2, 0.1))
    assert s["fraction"] == pytest.approx(s["holds"].mean())
    assert s["fraction_low"] < s["fraction"] < s["fraction_high"]
    assert_allclose(s["low"], np.quantile(curves, 0.05, axis=0))
    assert_allclose(s["median"][:3], 1.0)
