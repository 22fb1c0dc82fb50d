"""The probe solver's compiled kernels against numpy, and the solver with and without them."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from mechprobe.stats import LogisticFit, _kernels, fit_logistic
from tests.helpers import realistic

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def lib():
    lib = _kernels.library()
    if lib is None:
        if os.environ.get("MECHPROBE_CI"):
            pytest.fail("no C compiler built the probe kernels (CI has gcc)")
        pytest.skip("no working C compiler: the solver uses its torch code")
    return lib


@pytest.fixture
def no_kernels(monkeypatch):
    """The solver's torch code: ``MECHPROBE_KERNELS=0`` (the library's cache cleared)."""
    _kernels.library.cache_clear()
    monkeypatch.setenv(_kernels.ENV, "0")
    yield
    _kernels.library.cache_clear()


def newton_sums(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The nine sums of a Newton pass, written out in numpy (float64)."""
    with np.errstate(over="ignore"):  # exp(800): p = 0
        p = 1.0 / (1.0 + np.exp(-(a[:, None] + b[:, None] * x)))
    w = p * (1.0 - p)
    v = w * (1.0 - 2.0 * p)
    pairs = [(p, 0), (w, 0), (v, 0), (p, 1), (w, 1), (v, 1), (w, 2), (v, 2), (v, 3)]
    return np.stack([(f * x**k).sum(1) for f, k in pairs], 1)


def test_pass_sums_match_numpy(lib):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 803))
    a, b = rng.normal(0, 1, 5), rng.normal(0, 2, 5)
    a[4], b[4] = 800.0, 900.0  # p = 1 to the last bit: w = v = 0
    want = newton_sums(x, a, b)
    got = np.full((5, 9), np.nan)
    lib.sums64(x.ctypes.data, 5, 803, a.ctypes.data, b.ctypes.data, got.ctypes.data)
    assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    x32 = x.astype(np.float32)
    got32 = np.full((5, 9), np.nan)
    lib.sums32(x32.ctypes.data, 5, 803, a.ctypes.data, b.ctypes.data, got32.ctypes.data)
    cols = [0, 1, 3, 4, 6]
    assert_allclose(got32[:, cols], want[:, cols], rtol=1e-5, atol=1e-3)
    assert np.isnan(got32[:, [2, 5, 7, 8]]).all()  # float32 passes give five sums


@pytest.mark.parametrize(("n", "n1", "c"), [(40, 0, 19), (40, 3, 19), (40, 40, 19), (5000, 9, 37)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_prepare_gathers_and_standardises_like_numpy(lib, n, n1, c, dtype):
    rng = np.random.default_rng(n1)
    m = c + 6  # a chunk of c units out of c + 6 columns (5000 samples: tiles of 16 units)
    full = rng.normal(5, 3, (n, m)).astype(dtype)
    full[:, 4] = 7.0  # constant: sd 0, scaled by 1
    order = rng.permutation(n).astype(np.int64)
    raw = full[order, 2 : 2 + c].astype(np.float64)  # what the kernel must read
    xs, xs32 = np.empty((c, n)), np.empty((c, n), dtype=np.float32)
    stats = np.full((7, c + 2), -1.0)  # rows c + 2 apart: the kernel writes columns 0..c-1

    def prepare():
        kernel = lib.prepare64 if dtype == np.float64 else lib.prepare32
        kernel(full[:, 2:].ctypes.data, m, order.ctypes.data, n, c, n1, xs.ctypes.data,
               xs32.ctypes.data, stats.ctypes.data, c + 2)  # fmt: skip

    prepare()
    mean = raw.mean(0)
    sd = np.sqrt(((raw - mean) ** 2).mean(0))
    want = ((raw - mean) / np.where(sd > 0, sd, 1.0)).T
    assert_allclose(xs, want, rtol=1e-12, atol=1e-12)
    assert_array_equal(xs32, xs.astype(np.float32))
    pos, neg = (raw[:n1], raw[n1:]) if 0 < n1 < n else (raw, raw)
    assert_array_equal(stats[:4, :c], [pos.min(0), pos.max(0), neg.min(0), neg.max(0)])
    assert_allclose(stats[4:6, :c], [mean, sd], rtol=1e-12, atol=1e-15)
    assert_allclose(stats[6, :c], want[:, :n1].sum(1), atol=1e-12)
    assert (stats[:, c:] == -1.0).all()
    full[order[5], 2 + 3] = np.nan  # NaN reaches the caller's finiteness check via the minima
    prepare()
    assert np.isnan(stats[:4, 3]).all() and np.isfinite(stats[:4, 4]).all()


def test_count_above_matches_numpy(lib):
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((4, 50))
    thr = np.array([0.0, -np.inf, np.inf, xs[3, 7]])  # a threshold tied with an entry
    got = np.empty(4, dtype=np.int64)
    lib.count_above(xs.ctypes.data, 4, 50, 20, thr.ctypes.data, got.ctypes.data)
    above = xs > thr[:, None]
    assert_array_equal(got, above[:, :20].sum(1) - above[:, 20:].sum(1))


def test_solver_gives_the_same_results_with_and_without_kernels(lib, no_kernels):
    x, y = realistic(500, 400, seed=77)
    x[:, 5] = 3.0  # constant
    x[:, 6] = y * 2.0 + 1.0  # separated
    x[:, 7] = np.where(y > 0, 1.0, 0.0) + (np.arange(500) == 3)  # quasi-separated, with a tie
    torch_code = fit_logistic(x, y)
    _kernels.library.cache_clear()
    os.environ[_kernels.ENV] = "1"
    compiled = fit_logistic(x, y)
    assert _kernels.library() is not None
    for f in dataclasses.fields(LogisticFit):
        a, b = getattr(compiled, f.name), getattr(torch_code, f.name)
        if f.name == "pvalue":  # relative errors grow by about z^2 in the tail
            assert_allclose(np.log10(a), np.log10(b), rtol=0, atol=1e-9, equal_nan=True)
        elif f.name == "n_iter":  # float32 warm-up passes may round a pass either way
            assert np.abs(a - b).max() <= 1 and np.mean(a != b) < 0.02
        elif a.dtype.kind == "f":
            assert_allclose(a, b, rtol=1e-11, atol=0, equal_nan=True, err_msg=f.name)
        else:
            assert_array_equal(a, b, err_msg=f.name)
    # float32 activations and tensors take the same path; strided ones are copied first
    t32 = torch.from_numpy(x.astype(np.float32))
    assert_allclose(fit_logistic(t32, y).beta, fit_logistic(t32.numpy(), y).beta, rtol=0)
    strided = fit_logistic(np.asfortranarray(x), y)
    assert_allclose(strided.beta, compiled.beta, rtol=0, equal_nan=True)


def test_without_a_compiler_the_solver_uses_torch(monkeypatch):
    _kernels.library.cache_clear()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    try:
        assert _kernels.library() is None
        fit = fit_logistic(np.c_[np.arange(8.0)], np.array([0, 1] * 4))
        assert fit.converged[0]
    finally:
        _kernels.library.cache_clear()


def test_a_nan_is_refused_with_the_kernels(lib):
    x = np.random.default_rng(2).standard_normal((30, 4))
    x[9, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_logistic(x, np.arange(30) % 2)
