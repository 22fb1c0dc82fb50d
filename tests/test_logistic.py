"""fit_logistic against per-unit statsmodels Logit fits, edge cases, and chunking."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from numpy.testing import assert_allclose, assert_array_equal
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from mechprobe.stats import LogisticFit, fit_logistic
from mechprobe.stats._newton import F32_PASSES
from tests.helpers import realistic

pytestmark = pytest.mark.unit

RTOL_BETA = 1e-6  # relative difference of slopes, intercepts and standard errors
ATOL_LOG10P = 1e-6  # |log10 p - log10 p_statsmodels| where p > 1e-300


def sm_fit(x: np.ndarray, y: np.ndarray, **kw):
    """The reference: ``sm.Logit(y, sm.add_constant(x)).fit(disp=0)`` (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sm.Logit(y, sm.add_constant(np.asarray(x, dtype=np.float64), **kw)).fit(disp=0)


def sm_accuracy(res, y: np.ndarray) -> float:
    with np.errstate(over="ignore"):
        return float(np.mean((res.predict() > 0.5) == y))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return realistic(600, 300, seed=1234)


@pytest.fixture(scope="module")
def reference(data):
    x, y = data
    ref = {k: np.full(x.shape[1], np.nan) for k in ("beta", "intercept", "se", "p", "acc")}
    ref["converged"] = np.zeros(x.shape[1], dtype=bool)
    for j in range(x.shape[1]):
        res = sm_fit(x[:, j], y)
        ref["intercept"][j], ref["beta"][j] = res.params
        ref["se"][j], ref["p"][j] = res.bse[1], res.pvalues[1]
        ref["acc"][j] = sm_accuracy(res, y)
        ref["converged"][j] = res.mle_retvals["converged"]
    return ref


def test_matches_statsmodels_on_realistic_data(data, reference):
    x, y = data
    fit = fit_logistic(x, y)
    assert fit.converged.all() and not fit.separated.any()
    assert reference["converged"].all()
    assert reference["p"].min() < 1e-30  # the strongly predictive units are really strong
    assert_allclose(fit.beta, reference["beta"], rtol=RTOL_BETA, atol=0)
    assert_allclose(fit.se, reference["se"], rtol=RTOL_BETA, atol=0)
    assert_allclose(fit.intercept, reference["intercept"], rtol=RTOL_BETA, atol=1e-9)
    ok = reference["p"] > 1e-300
    assert_allclose(
        np.log10(fit.pvalue[ok]), np.log10(reference["p"][ok]), rtol=0, atol=ATOL_LOG10P
    )
    assert_array_equal(fit.accuracy, reference["acc"])
    assert (fit.n_iter >= 1).all() and (fit.n_iter < 30).all()


def test_float32_numpy_and_torch_inputs_agree(data):
    x, y = data
    x32 = x.astype(np.float32)
    a = fit_logistic(x32, y.astype(bool))
    b = fit_logistic(torch.from_numpy(x32), torch.from_numpy(y).long(), device="cpu")
    c = fit_logistic(x32.astype(np.float64), y)  # the same values, already float64
    for other in (b, c):
        for f in dataclasses.fields(LogisticFit):
            assert_array_equal(getattr(a, f.name), getattr(other, f.name))
    # and float32 activations still match statsmodels on the same (float32) values
    for j in (0, 1, 2):
        res = sm_fit(x32[:, j], y)
        assert_allclose(a.beta[j], res.params[1], rtol=RTOL_BETA)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_chunking_gives_identical_results(data, chunk_size):
    x, y = data
    if chunk_size == 1:
        x = x[:, :60]
    whole = fit_logistic(x, y, chunk_size=x.shape[1])
    chunked = fit_logistic(x, y, chunk_size=chunk_size)
    for f in ("beta", "intercept", "se", "pvalue"):
        assert_allclose(getattr(chunked, f), getattr(whole, f), rtol=1e-12, atol=0)
    for f in ("accuracy", "converged", "separated", "n_iter"):
        assert_array_equal(getattr(chunked, f), getattr(whole, f))


def test_worker_threads_give_identical_results_and_restore_setting(data):
    x, y = data
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fit_logistic(x, y, chunk_size=16)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(3)
        three = fit_logistic(x, y, chunk_size=16)  # chunks spread over 3 worker threads
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    for f in dataclasses.fields(LogisticFit):
        assert_array_equal(getattr(one, f.name), getattr(three, f.name))


def test_result_container(data):
    x, y = data
    fit = fit_logistic(x[:, :5], y)
    assert fit.n_units == 5
    for f in dataclasses.fields(LogisticFit):
        arr = getattr(fit, f.name)
        assert isinstance(arr, np.ndarray) and arr.shape == (5,)
    assert fit.converged.dtype == bool and fit.separated.dtype == bool
    assert fit.n_iter.dtype.kind == "i" and fit.beta.dtype == np.float64
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.beta = np.zeros(5)  # type: ignore[misc]


# ---------------------------------------------------------------- edge cases --------------


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.random(80) < 0.35).astype(np.float64)


def test_constant_unit_statsmodels_behaviour(labels):
    """Pin statsmodels: no slope can be estimated for a constant activation."""
    y = labels
    # add_constant() sees a nonzero constant column as the intercept and adds nothing:
    # the model fitted is intercept-only, and its single coefficient is no slope.
    res = sm_fit(np.full(80, 2.5), y)
    assert res.params.shape == (1,) and res.mle_retvals["converged"]
    assert sm_accuracy(res, y) == pytest.approx(1 - y.mean())
    # An all-zero column is kept, and the information matrix is singular.
    with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
        sm.Logit(y, sm.add_constant(np.zeros(80))).fit(disp=0)
    # Forcing the constant in gives NaN or meaningless standard errors.
    forced = sm_fit(np.full(80, 2.5), y, has_constant="add")
    assert forced.params.shape == (2,)
    assert not np.isfinite(forced.bse).all() or forced.bse[1] > 1e3


def test_constant_unit_flagged(labels):
    y = labels
    x = np.column_stack([np.full(80, 2.5), np.zeros(80), np.linspace(-1, 1, 80) + y])
    fit = fit_logistic(x, y)
    assert_array_equal(np.isnan(fit.beta), [True, True, False])
    assert_array_equal(np.isnan(fit.pvalue), [True, True, False])
    assert_array_equal(np.isnan(fit.se), [True, True, False])
    assert_array_equal(fit.converged, [False, False, True])
    assert not fit.separated.any()
    # accuracy of the intercept-only model (majority class), as statsmodels' 1-param fit
    majority = sm_accuracy(sm_fit(np.full(80, 2.5), y), y)
    assert_array_equal(fit.accuracy[:2], [majority, majority])
    assert_allclose(fit.intercept[:2], math.log(y.mean() / (1 - y.mean())), rtol=1e-12)
    # the constant units do not disturb their neighbour
    alone = fit_logistic(x[:, 2:], y)
    assert fit.beta[2] == alone.beta[0] and fit.pvalue[2] == alone.pvalue[0]


def test_perfect_separation_statsmodels_behaviour():
    """Pin statsmodels 0.15: no PerfectSeparationError any more; it gives up silently-ish."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=60)
    y = (x > 0.1).astype(np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sm.Logit(y, sm.add_constant(x)).fit(disp=0)  # does not raise
    categories = {w.category for w in caught}
    assert ConvergenceWarning in categories
    assert not res.mle_retvals["converged"]
    assert abs(res.params[1]) > 50  # diverging slope ...
    assert res.pvalues[1] > 0.9  # ... reported as "not significant"
    assert sm_accuracy(res, y) == 1.0

    # tiny n: the fitted probabilities reach 0/1 and statsmodels warns about separation
    xt = np.array([0.1, 0.5, -0.3, 1.2, 0.7])
    yt = np.array([0.0, 0.0, 0.0, 1.0, 1.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sm.Logit(yt, sm.add_constant(xt)).fit(disp=0)
    assert {PerfectSeparationWarning, ConvergenceWarning} <= {w.category for w in caught}
    assert not res.mle_retvals["converged"] and res.pvalues[1] > 0.9


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_perfect_separation_flagged(sign):
    rng = np.random.default_rng(3)
    x = rng.normal(size=60)
    y = (x > 0.1).astype(np.float64)
    ok = x + rng.normal(size=60)  # an ordinary unit alongside
    fit = fit_logistic(np.column_stack([sign * x, ok]), y)
    assert_array_equal(fit.separated, [True, False])
    assert_array_equal(fit.converged, [False, True])
    assert np.isnan(fit.pvalue[0]) and np.isnan(fit.se[0]) and np.isnan(fit.intercept[0])
    assert fit.beta[0] == sign * np.inf
    assert fit.accuracy[0] == 1.0
    assert fit.n_iter[0] == 0
    assert_allclose(fit.beta[1], sm_fit(ok, y).params[1], rtol=RTOL_BETA)


def test_quasi_separation_flagged():
    """Classes overlap only at one tied value: the MLE does not exist either."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=50)
    y = (x > 0).astype(np.float64)
    x[:3] = 0.0  # three tied points at the boundary, one of them positive
    y[:3] = [0.0, 1.0, 0.0]
    res = sm_fit(x, y)
    assert not res.mle_retvals["converged"] and res.pvalues[1] > 0.9
    fit = fit_logistic(x[:, None], y)
    assert fit.separated[0] and not fit.converged[0] and np.isnan(fit.pvalue[0])
    assert fit.beta[0] == np.inf
    # limit of the fit: ties get p_hat = 1/3 -> one error; statsmodels' last iterate agrees
    assert fit.accuracy[0] == pytest.approx(49 / 50)
    assert fit.accuracy[0] == sm_accuracy(res, y)


def test_single_class_labels():
    x = np.random.default_rng(0).normal(size=(30, 3))
    y = np.ones(30)
    with pytest.warns(PerfectSeparationWarning):
        sm.Logit(y, sm.add_constant(x[:, 0])).fit(disp=0, warn_convergence=False)
    fit = fit_logistic(x, y)
    assert fit.separated.all() and not fit.converged.any()
    assert np.isnan(fit.beta).all() and np.isnan(fit.pvalue).all()
    assert_array_equal(fit.accuracy, 1.0)


def test_tiny_n_matches_statsmodels():
    x = np.array([[0.1, 3.0], [0.5, 1.0], [-0.3, 0.5], [1.2, 2.5], [0.7, 2.0]])
    y = np.array([0.0, 1.0, 0.0, 0.0, 1.0])
    fit = fit_logistic(x, y)
    assert fit.converged.all() and not fit.separated.any()
    for j in range(2):
        res = sm_fit(x[:, j], y)
        assert res.mle_retvals["converged"]
        assert_allclose(fit.beta[j], res.params[1], rtol=RTOL_BETA)
        assert_allclose(fit.se[j], res.bse[1], rtol=RTOL_BETA)
        assert_allclose(np.log10(fit.pvalue[j]), np.log10(res.pvalues[1]), atol=ATOL_LOG10P)
        assert fit.accuracy[j] == sm_accuracy(res, y)


def test_tiny_p_does_not_underflow():
    # Wald z ~ 30 (1 - Phi(z) would underflow to 0 beyond z ~ 8.3 in float64)
    rng = np.random.default_rng(11)
    y = (rng.random(4000) < 0.5).astype(np.float64)
    x = rng.normal(size=(4000, 2)) + np.array([1.5, 2.0]) * y[:, None]
    fit = fit_logistic(x, y)
    for j in range(2):
        res = sm_fit(x[:, j], y)
        p = res.pvalues[1]
        assert 0 < p < 1e-200
        assert_allclose(np.log10(fit.pvalue[j]), np.log10(p), atol=ATOL_LOG10P)


def test_large_offset_statsmodels_loses_precision_we_do_not():
    """Offset/spread ~ 1e6: raw statsmodels Newton fails; centred statsmodels is the truth."""
    rng = np.random.default_rng(21)
    y = (rng.random(500) < 0.4).astype(np.float64)
    x = 1e4 + 1e-2 * (rng.normal(size=500) + 0.8 * y)
    raw = sm_fit(x, y)
    centred = sm_fit(x - x.mean(), y)  # same slope, well conditioned
    assert centred.mle_retvals["converged"] and not raw.mle_retvals["converged"]
    assert abs(raw.params[1] / centred.params[1] - 1) > 0.1  # raw statsmodels is wrong
    fit = fit_logistic(x[:, None], y)
    assert fit.converged[0]
    assert_allclose(fit.beta[0], centred.params[1], rtol=RTOL_BETA)
    assert_allclose(fit.intercept[0], centred.params[0] - fit.beta[0] * x.mean(), rtol=RTOL_BETA)
    assert_allclose(np.log10(fit.pvalue[0]), np.log10(centred.pvalues[1]), atol=ATOL_LOG10P)
    assert fit.accuracy[0] == sm_accuracy(centred, y)


def test_outlier_dominated_units_converge_and_match_statsmodels():
    """One huge value dominates mean and sd: the bulk of xs sits far from 0 relative to its
    spread, and the information's determinant would cancel; the fit re-centres and still
    converges to statsmodels' estimate, standard error and accuracy."""
    rng = np.random.default_rng(17)
    y = (rng.random(400) < 0.3).astype(np.float64)
    x = rng.normal(size=(400, 3)) + np.array([0.3, 0.6, 1.0]) * y[:, None]
    x[0], y[0] = [1e6, 3e5, 1e5], 1.0
    fit = fit_logistic(x, y)
    assert fit.converged.all()
    for j in range(3):
        res = sm_fit(x[:, j] - np.median(x[:, j]), y)  # well-conditioned reference
        assert res.mle_retvals["converged"]
        assert_allclose(fit.beta[j], res.params[1], rtol=RTOL_BETA)
        assert_allclose(fit.se[j], res.bse[1], rtol=RTOL_BETA)
        assert_allclose(np.log10(fit.pvalue[j]), np.log10(res.pvalues[1]), atol=ATOL_LOG10P)
        assert fit.accuracy[j] == sm_accuracy(sm_fit(x[:, j], y), y)


def test_units_needing_several_float64_passes_match_statsmodels():
    """Strong effects need more float64 passes than a chunk's first one: such units are
    finished together after all chunks, with statsmodels' results in any chunking."""
    rng = np.random.default_rng(8)
    y = (rng.random(300) < 0.5).astype(np.float64)
    effects = np.array([2.5, 3.0, 3.5, 4.0, -3.0, 0.0, 0.3])
    x = rng.normal(size=(300, effects.size)) + effects * y[:, None]
    fit = fit_logistic(x, y)
    assert fit.converged.all()
    assert (fit.n_iter[1:5] > F32_PASSES + 1).all()  # at least two float64 passes
    for j in range(effects.size):
        res = sm_fit(x[:, j], y)
        assert res.mle_retvals["converged"]
        assert_allclose(fit.beta[j], res.params[1], rtol=RTOL_BETA)
        assert_allclose(fit.se[j], res.bse[1], rtol=RTOL_BETA)
        assert_allclose(np.log10(fit.pvalue[j]), np.log10(res.pvalues[1]), atol=ATOL_LOG10P)
        assert fit.accuracy[j] == sm_accuracy(res, y)
    one_by_one = fit_logistic(x, y, chunk_size=1)
    for f in dataclasses.fields(LogisticFit):
        assert_allclose(getattr(one_by_one, f.name), getattr(fit, f.name), rtol=1e-12, atol=0)


def test_max_iter_reached_is_not_converged(data):
    x, y = data
    fit = fit_logistic(x[:, :20], y, max_iter=1)
    assert (fit.n_iter == 1).all()
    assert not fit.converged.all()  # some units need more than one Newton step
    assert np.isfinite(fit.beta).all()


def test_input_validation():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="only 0 and 1"):
        fit_logistic(x, np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="samples"):
        fit_logistic(x, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="shape"):
        fit_logistic(np.zeros(4), np.array([0, 1, 1, 0]))
    bad = np.random.default_rng(0).normal(size=(4, 2))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_logistic(bad, np.array([0, 1, 1, 0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(data):
    x, y = data
    cpu = fit_logistic(x, y)
    gpu = fit_logistic(torch.from_numpy(x).cuda(), y)
    assert_allclose(gpu.beta, cpu.beta, rtol=1e-9)
    assert_allclose(gpu.pvalue, cpu.pvalue, rtol=1e-6)
    assert_array_equal(gpu.accuracy, cpu.accuracy)


def test_bench_probe_prints_both_sides_load_and_agreement(capsys):
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_probe.py"
    spec = importlib.util.spec_from_file_location("bench_probe", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--samples", "150", "--units", "120", "--statsmodels-units", "30", "--repeats", "1"]
    bench.main(args)
    rows = dict(
        re.split(r"\s{2,}", line, maxsplit=1) for line in capsys.readouterr().out.splitlines()
    )
    assert re.fullmatch(
        r"[\d.]+ wall, [\d.]+ cpu \(best of 1; median wall [\d.]+\)", rows["fit_logistic seconds"]
    )
    assert re.fullmatch(
        r"[\d.]+ wall, [\d.]+ cpu \(.+ ms per unit; .+\)", rows["statsmodels seconds"]
    )
    assert re.fullmatch(r"\d+x wall, \d+x cpu", rows["ratio (speed-up)"])
    loads = re.fullmatch(r"1/5/15 min (.+) at the start, (.+) at the end", rows["load average"])
    assert loads and len((loads[1] + " " + loads[2]).split()) == 6
    assert float(rows["max relative beta diff"]) < 1e-9
    assert float(rows["max |log10 p diff|"]) < 1e-6
    assert rows["accuracy identical"].startswith("yes")
