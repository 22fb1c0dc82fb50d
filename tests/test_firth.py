"""fit_firth against a plain single-unit implementation of Firth's penalised likelihood."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy import optimize, special, stats

from mechprobe.stats.firth import FirthFit, fit_firth
from mechprobe.stats.logistic import fit_logistic

pytestmark = pytest.mark.unit

RTOL = 1e-7  # estimates and standard errors against the plain implementation
ATOL_LR = 1e-7  # likelihood-ratio statistics


def penalised_loglik(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """l(theta) + 1/2 log det(X' W X) for X = [1, x], written out directly."""
    X = np.column_stack([np.ones_like(x), x])
    eta = X @ theta
    p = special.expit(eta)
    info = X.T @ (X * (p * (1 - p))[:, None])
    sign, logdet = np.linalg.slogdet(info)
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)) + 0.5 * logdet) if sign > 0 else -np.inf


def firth_plain(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Textbook Firth iteration (Heinze & Schemper 2002), one unit, dense matrices.

    theta <- theta + I^-1 U*, with the hat-matrix-adjusted score
    U* = X' (y - p + h (1/2 - p)), h = diag(W^1/2 X I^-1 X' W^1/2); steps capped at 5 and
    halved while the penalised log-likelihood decreases. The restricted model (slope 0,
    penalty of the full model) is maximised numerically over the intercept.
    """
    X = np.column_stack([np.ones_like(x), x])
    theta = np.zeros(2)
    for _ in range(5000):
        p = special.expit(X @ theta)
        w = p * (1 - p)
        inv = np.linalg.inv(X.T @ (X * w[:, None]))
        h = w * np.einsum("ij,jk,ik->i", X, inv, X)
        step = inv @ (X.T @ (y - p + h * (0.5 - p)))
        step *= min(1.0, 5.0 / np.max(np.abs(step)))
        here = penalised_loglik(theta, x, y)
        for _ in range(60):
            if penalised_loglik(theta + step, x, y) >= here - 1e-12:
                break
            step /= 2
        theta = theta + step
        if np.max(np.abs(step)) < 1e-13 * (1 + np.max(np.abs(theta))):
            break
    else:
        raise AssertionError("plain Firth iteration did not converge")
    p = special.expit(X @ theta)
    inv = np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]))
    full = penalised_loglik(theta, x, y)
    res = optimize.minimize_scalar(
        lambda a: -penalised_loglik(np.array([a, 0.0]), x, y),
        bracket=(-5.0, 5.0),
        tol=1e-12,
    )
    lr = 2.0 * (full + res.fun)
    return {
        "intercept": theta[0],
        "beta": theta[1],
        "se": float(np.sqrt(inv[1, 1])),
        "loglik": full,
        "lr": lr,
        "pvalue": float(stats.chi2.sf(lr, 1)),
    }


def make_units(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Ordinary, separated, quasi-separated, ReLU-like and constant units (labelled)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.float64)
    y[:4] = [0, 0, 1, 1]
    cols, names = [], {}

    def add(name: str, col: np.ndarray) -> None:
        names[name] = len(cols)
        cols.append(col)

    add("null", rng.normal(size=n))
    add("weak", rng.normal(size=n) + 0.4 * y)
    add("strong", rng.normal(size=n) - 1.5 * y)
    add("scaled", 3e-3 * (rng.normal(size=n) + 0.8 * y) + 0.2)
    add("separated", rng.random(n) + 1.5 * y)
    add("separated_neg", -(rng.random(n) + 1.2 * y))
    # quasi-separation: max(x | y=0) == min(x | y=1) == 1, with ties at the boundary
    quasi = np.where(y == 1, 1.0 + rng.random(n), 1.0 - rng.random(n))
    quasi[:4] = [1.0, 0.5, 1.0, 1.5]
    add("quasi", quasi)
    # ReLU-like: all negatives at 0, positives at 0 or above (quasi-separated)
    add("relu", np.where(y == 1, np.maximum(rng.normal(0.5, 1.0, n), 0.0), 0.0))
    add("binary", y.copy())  # x == y: complete separation, two values only
    add("constant", np.full(n, 0.7))
    return np.column_stack(cols), y, names


@pytest.fixture(scope="module")
def units() -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    return make_units(60, seed=5)


@pytest.fixture(scope="module")
def reference(units) -> dict[str, np.ndarray]:
    x, y, names = units
    keys = ("intercept", "beta", "se", "loglik", "lr", "pvalue")
    ref = {k: np.full(x.shape[1], np.nan) for k in keys}
    for j in range(x.shape[1]):
        if j == names["constant"]:
            continue
        for k, v in firth_plain(x[:, j], y).items():
            ref[k][j] = v
    return ref


def test_matches_plain_implementation(units, reference):
    x, y, names = units
    fit = fit_firth(x, y)
    assert isinstance(fit, FirthFit) and fit.n_units == x.shape[1]
    fitted = np.arange(x.shape[1]) != names["constant"]
    assert fit.converged[fitted].all()
    assert_allclose(fit.beta, reference["beta"], rtol=RTOL, atol=1e-9)
    assert_allclose(fit.intercept, reference["intercept"], rtol=RTOL, atol=1e-9)
    assert_allclose(fit.se, reference["se"], rtol=RTOL)
    assert_allclose(fit.loglik, reference["loglik"], rtol=1e-10, atol=1e-9)
    assert_allclose(fit.lr, reference["lr"], rtol=1e-7, atol=ATOL_LR)
    assert_allclose(fit.pvalue, reference["pvalue"], rtol=1e-5, atol=1e-12)
    wald = 2 * stats.norm.sf(np.abs(reference["beta"] / reference["se"]))
    assert_allclose(fit.wald_pvalue, wald, rtol=1e-6)


def test_separated_units_get_finite_estimates_and_small_pvalues(units, reference):
    x, y, names = units
    mle = fit_logistic(x, y)
    fit = fit_firth(x, y)
    for name in ("separated", "separated_neg", "quasi", "relu", "binary"):
        j = names[name]
        assert mle.separated[j] and np.isnan(mle.pvalue[j])  # the MLE does not exist here
        assert np.isfinite(fit.beta[j]) and np.isfinite(fit.se[j])
        assert np.sign(fit.beta[j]) == np.sign(mle.beta[j])
        assert fit.pvalue[j] < 1e-4
    # a null unit is not significant, and Firth shrinks the ordinary estimates towards 0
    assert fit.pvalue[names["null"]] > 0.01
    for name in ("weak", "strong"):
        j = names[name]
        assert 0 < fit.beta[j] / mle.beta[j] < 1


def test_direct_maximisation_agrees(units):
    """The plain Newton reference is indeed the maximum of l* (scipy's BFGS from 0)."""
    x, y, names = units
    fit = fit_firth(x, y)
    for name in ("weak", "quasi", "separated"):
        j = names[name]
        res = optimize.minimize(
            lambda t, j=j: -penalised_loglik(t, x[:, j], y),
            np.zeros(2),
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000, "maxfev": 40000},
        )
        assert_allclose([fit.intercept[j], fit.beta[j]], res.x, rtol=1e-5, atol=1e-6)
        assert fit.loglik[j] >= -res.fun - 1e-9


def test_constant_unit_is_nan(units):
    x, y, names = units
    fit = fit_firth(x, y)
    j = names["constant"]
    for field in ("beta", "intercept", "se", "pvalue", "lr", "wald_pvalue", "loglik"):
        assert np.isnan(getattr(fit, field)[j]), field
    assert not fit.converged[j] and fit.n_iter[j] == 0


def test_affine_invariance():
    """A change of units of x rescales beta and se and leaves the tests unchanged."""
    x, y, _ = make_units(80, seed=11)
    x = x[:, :-1]
    fit = fit_firth(x, y)
    scale = np.array([1e-3, 1e3, -2.0] * 3)[: x.shape[1]]
    shift = 1e4 * np.abs(scale)  # an offset far from the data (in units of its spread)
    fit2 = fit_firth(x * scale + shift, y)
    assert_allclose(fit2.beta, fit.beta / scale, rtol=1e-6)
    assert_allclose(fit2.se, fit.se / np.abs(scale), rtol=1e-6)
    assert_allclose(fit2.lr, fit.lr, rtol=1e-6, atol=1e-8)
    assert_allclose(fit2.loglik, fit.loglik + np.log(np.abs(scale)), rtol=1e-9)


def test_chunking_threads_and_torch_input():
    x, y, _ = make_units(70, seed=3)
    x = np.tile(x, (1, 7)) + np.random.default_rng(0).normal(0, 0.01, (70, x.shape[1] * 7))
    ref = fit_firth(x, y)
    for kwargs in ({"chunk_size": 1}, {"chunk_size": 13}):
        fit = fit_firth(x, y, **kwargs)
        assert_allclose(fit.beta, ref.beta, rtol=1e-9)
        assert_allclose(fit.lr, ref.lr, rtol=1e-9, atol=1e-10)
    fit = fit_firth(torch.from_numpy(x).float(), torch.from_numpy(y).bool())
    ref32 = fit_firth(x.astype(np.float32).astype(np.float64), y)
    assert_array_equal(fit.beta, ref32.beta)
    assert_array_equal(fit.n_iter, ref32.n_iter)


def test_single_class_labels():
    """With one class the MLE does not exist; the penalised estimate does."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 2))
    y = np.zeros(40)
    fit = fit_firth(x, y)
    assert fit.converged.all()
    for j in range(2):
        ref = firth_plain(x[:, j], y)
        assert_allclose([fit.intercept[j], fit.beta[j]], [ref["intercept"], ref["beta"]], rtol=RTOL)
        assert_allclose(fit.lr[j], ref["lr"], atol=ATOL_LR)


def test_input_validation():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="samples"):
        fit_firth(x, np.zeros(4))
    with pytest.raises(ValueError, match="0 and 1"):
        fit_firth(x, np.full(5, 2.0))
    with pytest.raises(ValueError, match="finite"):
        fit_firth(np.full((5, 2), np.nan), np.array([0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="shape"):
        fit_firth(np.zeros(5), np.zeros(5))
