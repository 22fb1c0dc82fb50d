"""The probe solver's C extension against numpy, its checks at the boundary, and the solver with
and without it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

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
            pytest.fail("the probe kernels' C extension was not built (CI has gcc)")
        pytest.skip("the C extension is not built (python setup.py build_ext --inplace)")
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
    lib.sums(x, a, b, got)
    assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    x32 = x.astype(np.float32)
    got32 = np.full((5, 9), np.nan)
    lib.sums(x32, a, b, got32)
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
        lib.prepare(full[:, 2:], order, n1, xs, xs32, stats)  # rows of full: m apart

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
    lib.count_above(xs, 20, thr, got)
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


def test_without_the_extension_the_solver_uses_torch_and_says_so_once(monkeypatch, caplog):
    _kernels.library.cache_clear()
    monkeypatch.setitem(sys.modules, _kernels.MODULE, None)  # import fails: not installed
    try:
        with caplog.at_level(logging.WARNING, logger=_kernels.__name__):
            assert _kernels.library() is None
            fit = fit_logistic(np.c_[np.arange(8.0)], np.array([0, 1] * 4))
            fit_logistic(np.c_[np.arange(8.0)], np.array([1, 0] * 4))
        assert fit.converged[0]
        said = [r.getMessage() for r in caplog.records if "C extension" in r.getMessage()]
        assert len(said) == 1 and "torch code" in said[0]
        path = _kernels.solver_path("cpu")
        assert path["path"] == "torch" and path["why"] == "the C extension is not installed"
    finally:
        _kernels.library.cache_clear()


def test_a_nan_is_refused_with_the_kernels(lib):
    x = np.random.default_rng(2).standard_normal((30, 4))
    x[9, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_logistic(x, np.arange(30) % 2)


def test_the_extension_reports_its_build(lib):
    path = _kernels.solver_path("cpu")
    assert path["path"] == "compiled kernels"
    assert path["build"]["module"] == "mechprobe.stats._native" == lib.__name__
    assert path["build"]["dispatch"] and path["build"]["flags"] and path["build"]["compiler"]
    assert not hasattr(_kernels, "FLAGS")  # no run-time compiler left


def test_a_wrong_array_is_a_python_exception(lib):
    x = np.zeros((3, 10))
    a, b, out = np.zeros(3), np.zeros(3), np.zeros((3, 9))
    with pytest.raises(TypeError, match="a must be float64"):
        lib.sums(x, a.astype(np.float32), b, out)  # float32 where float64 is expected
    with pytest.raises(TypeError, match="out must be float64"):
        lib.sums(x, a, b, out.astype(np.float32))
    with pytest.raises(TypeError, match="xs must be float64"):
        lib.count_above(x.astype(np.float32), 1, a, np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="out must be int64"):
        lib.count_above(x, 1, a, np.zeros(3, dtype=np.int32))
    with pytest.raises(TypeError):
        lib.sums([[0.0] * 10] * 3, a, b, out)  # a list has no buffer
    with pytest.raises(ValueError, match=r"a and b need one entry per row of xs \(got 2"):
        lib.sums(x, np.zeros(2), b, out)  # a wrong shape
    with pytest.raises(ValueError, match=r"out must have shape \[rows of xs, 9\] \(got 8"):
        lib.sums(x, a, b, np.zeros((3, 8)))
    with pytest.raises(ValueError, match="xs must have 2 dimension"):
        lib.sums(np.zeros(30), a, b, out)
    with pytest.raises(ValueError, match="xs must be C-contiguous"):
        lib.sums(np.zeros((10, 3)).T, a, b, out)
    with pytest.raises(ValueError, match="writable"):
        ro = np.zeros((3, 9))
        ro.flags.writeable = False
        lib.sums(x, a, b, ro)
    with pytest.raises(ValueError, match="n1 must be between 0"):
        lib.count_above(x, 11, a, np.zeros(3, dtype=np.int64))
    xs, xs32, stats = np.empty((2, 4)), np.empty((2, 4), np.float32), np.empty((7, 2))
    with pytest.raises(ValueError, match=r"order\[3\] = 10 is not a row of x"):
        lib.prepare(x.T.copy(), np.array([0, 1, 2, 10]), 1, xs, xs32, stats)
    with pytest.raises(ValueError, match="xs32 must have the shape of xs"):
        lib.prepare(x.T.copy(), np.arange(4), 1, xs, np.empty((2, 5), np.float32), stats)
    with pytest.raises(ValueError, match="x must be contiguous along its last axis"):
        lib.prepare(np.zeros((3, 10)).T, np.arange(4), 1, xs, xs32, stats)
    assert (out == 0).all()  # nothing was written by a refused call


def test_a_probe_run_compiles_nothing_and_writes_no_kernel_files(tmp_path, lib):
    cache, shims, calls = tmp_path / "cache", tmp_path / "bin", tmp_path / "calls.txt"
    cache.mkdir()
    shims.mkdir()
    for name in ("cc", "gcc", "clang", "c99"):  # a compiler shim that records its calls
        shim = shims / name
        shim.write_text(f'#!/bin/sh\necho "$0 $*" >> {calls}\nexit 1\n', encoding="utf-8")
        shim.chmod(0o755)
    text = tmp_path / "story.txt"
    gap = " The old keeper walked slowly along the harbour wall at dawn," * 8
    text.write_text(("We can go." + gap + " It is not here." + gap) * 3, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("CC", _kernels.ENV)}
    env.update(MECHPROBE_CACHE=str(cache), PATH=f"{shims}{os.pathsep}{env['PATH']}")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-m", "mechprobe", "probe", "--model", "tiny-gpt2", "--text", str(text),
         "--components", "mlp", "--context-pre", "20", "--context-post", "3",
         "--out", str(tmp_path / "out"), "--no-png"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not calls.exists(), calls.read_text()  # no compiler ran
    made = [p.relative_to(cache) for p in cache.rglob("*")]
    assert not [p for p in made if "kernel" in str(p) or p.suffix in (".so", ".c", ".o")], made
    manifest = json.loads((tmp_path / "out" / "probe" / "manifest.json").read_text())
    assert manifest["request"]["solver"]["path"] == "compiled kernels"


def test_resume_on_the_torch_path_after_a_kernel_run_reruns_and_says_why(
    tmp_path, lib, tiny_cli, shared_text, monkeypatch
):
    from tests.helpers import run_cli

    args = ("negation", "--model", "tiny-gpt2", "--no-png", "--out", str(tmp_path),
            "--text", str(shared_text), "--max-samples", "20")  # fmt: skip
    monkeypatch.delenv(_kernels.ENV, raising=False)
    _kernels.library.cache_clear()
    assert run_cli(*args)[0] == 0
    first = json.loads((tmp_path / "negation" / "manifest.json").read_text())
    assert first["solver"] == first["request"]["solver"]
    assert first["solver"]["path"] == "compiled kernels" and first["solver"]["device"] == "cpu"
    assert first["solver"]["build"]["dispatch"] == lib.DISPATCH
    assert first["solver"]["dtype"].startswith("float64")
    monkeypatch.setenv(_kernels.ENV, "0")
    _kernels.library.cache_clear()
    try:
        code, _, err = run_cli(*args, "--resume")
        assert code == 0, err
        assert (
            "[rerun] negation: the probe solver's path changed (compiled kernels -> torch)" in err
        )
        second = json.loads((tmp_path / "negation" / "manifest.json").read_text())
        assert second["solver"] == {"path": "torch", "device": "cpu", "why": "MECHPROBE_KERNELS=0",
                                    "dtype": "float64 (float32 warm-up passes)"}  # fmt: skip
        code, _, err = run_cli(*args, "--resume")  # the same path again: reused
        assert code == 0 and "[reuse] negation" in err
        page = (tmp_path / "index.html").read_text(encoding="utf-8")
        assert "negation: probe solver" in page
        assert "torch (MECHPROBE_KERNELS=0); cpu; float64 (float32 warm-up passes)" in page
    finally:
        _kernels.library.cache_clear()
