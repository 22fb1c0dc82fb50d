"""Benchmark :func:`mechprobe.stats.fit_logistic` against per-unit ``statsmodels`` Logit fits.

By default statsmodels is timed on a subset of units (``--statsmodels-units``) and its time
is extrapolated linearly to all units (the table says so); ``--full`` runs it on all units.
Both sides are timed warm: one call of each comes first, untimed (statsmodels' first fit
costs about 0.7 s of one-off imports, which extrapolation would multiply).
Agreement (beta, p-value, accuracy) is computed on the units statsmodels fitted.

Usage:
    python scripts/bench_probe.py --samples 800 --units 20000
    python scripts/bench_probe.py --samples 398             # the negation experiment's n
    python scripts/bench_probe.py --acts acts.npz          # keys: x [samples, units], y
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

from mechprobe.stats import _kernels, fit_logistic


def synthetic(n_samples: int, n_units: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Realistic-looking activations: varied scales/offsets, sparse strong effects, ReLUs."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n_samples) < 0.45).astype(np.float64)
    scale = 10.0 ** rng.uniform(-2, 1.5, n_units)
    offset = rng.normal(0, 2, n_units) * scale
    effect = np.where(rng.random(n_units) < 0.2, rng.normal(0, 1.0, n_units), 0.0)
    x = (rng.standard_normal((n_samples, n_units)) + effect * y[:, None]) * scale + offset
    relu = rng.random(n_units) < 0.1  # some ReLU-like units with exact zeros
    x[:, relu] = np.maximum(x[:, relu], 0.0)
    return x.astype(np.float32), y


def statsmodels_fits(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-unit ``sm.Logit(y, sm.add_constant(x[:, j])).fit(disp=0)``; NaN where it fails.

    The loop as a researcher writes it (warnings silenced once, around the loop), including
    the in-sample accuracy ``mean((res.predict() > 0.5) == y)`` that ``fit_logistic`` also
    computes.
    """
    import statsmodels.api as sm

    m = x.shape[1]
    out = {k: np.full(m, np.nan) for k in ("beta", "pvalue", "accuracy")}
    out["converged"] = np.zeros(m, dtype=bool)
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("ignore")
        for j in range(m):
            exog = sm.add_constant(x[:, j].astype(np.float64))
            try:
                res = sm.Logit(y, exog).fit(disp=0)
            except np.linalg.LinAlgError:  # singular information (e.g. an all-zero unit)
                continue
            out["accuracy"][j] = np.mean((res.predict() > 0.5) == y)
            if exog.shape[1] == 2:  # add_constant skips constant columns
                out["beta"][j] = res.params[1]
                out["pvalue"][j] = res.pvalues[1]
                out["converged"][j] = bool(res.mle_retvals["converged"])
    return out


def timed(x: np.ndarray, y: np.ndarray, repeats: int, chunk_size: int | None) -> tuple:
    """``fit_logistic`` timed: the fit, best wall and cpu seconds, median wall seconds."""
    times, cpu_times = [], []
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        fit = fit_logistic(x, y, chunk_size=chunk_size)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return fit, min(times), min(cpu_times), float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=800)
    ap.add_argument("--units", type=int, default=20000)
    ap.add_argument("--statsmodels-units", type=int, default=1000)
    ap.add_argument("--full", action="store_true", help="run statsmodels on all units")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--acts", type=str, default=None, help="npz file with keys x and y")
    ap.add_argument("--repeats", type=int, default=5, help="fit_logistic timing: best of N")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--chunk-size", type=int, default=None)
    args = ap.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.acts:
        data = np.load(args.acts)
        x, y = np.asarray(data["x"]), np.asarray(data["y"]).astype(np.float64)
        source = args.acts
    else:
        x, y = synthetic(args.samples, args.units, args.seed)
        source = f"synthetic (seed {args.seed})"
    n, m = x.shape

    load_start = os.getloadavg()  # other processes' load skews both timings
    fit_logistic(x[:, : min(m, 256)], y)  # warm-up
    lib = _kernels.library()
    fit, t_fast, c_fast, t_median = timed(x, y, args.repeats, args.chunk_size)
    os.environ[_kernels.ENV] = "0"  # the same solver without its compiled kernels
    _kernels.library.cache_clear()
    _, t_torch, c_torch, _ = timed(x, y, args.repeats, args.chunk_size)
    del os.environ[_kernels.ENV]
    _kernels.library.cache_clear()

    m_sm = m if args.full else min(m, args.statsmodels_units)
    rng = np.random.default_rng(args.seed + 1)
    cols = np.arange(m) if m_sm == m else np.sort(rng.choice(m, m_sm, replace=False))
    # The first fit pays one-off costs (lazy imports: about 0.7 s here); extrapolating it
    # with the rest would count it once per --statsmodels-units units. It is timed apart.
    t0 = time.perf_counter()
    statsmodels_fits(x[:, cols[:1]], y)
    t_sm_first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    ref = statsmodels_fits(x[:, cols], y)
    t_sm_meas, c_sm_meas = time.perf_counter() - t0, time.process_time() - c0
    t_sm, c_sm = t_sm_meas * m / m_sm, c_sm_meas * m / m_sm
    sm_note = "measured" if m_sm == m else f"extrapolated from {m_sm} units"

    beta, pval, acc = fit.beta[cols], fit.pvalue[cols], fit.accuracy[cols]
    both = ref["converged"] & fit.converged[cols]
    rel_beta = np.abs(beta[both] - ref["beta"][both]) / np.abs(ref["beta"][both])
    ok_p = both & (ref["pvalue"] > 1e-300) & (pval > 1e-300)
    dlogp = np.abs(np.log10(pval[ok_p]) - np.log10(ref["pvalue"][ok_p]))
    fitted = ~np.isnan(ref["accuracy"])  # statsmodels raised on the others (singular)
    acc_same = bool(np.array_equal(acc[fitted], ref["accuracy"][fitted]))
    load_end = os.getloadavg()

    rows = [
        ("data", source),
        ("n_samples", f"{n}"),
        ("n_units", f"{m}"),
        ("torch threads", f"{torch.get_num_threads()} (os.cpu_count() = {os.cpu_count()})"),
        (
            "load average",
            "1/5/15 min {:.2f} {:.2f} {:.2f} at the start, {:.2f} {:.2f} {:.2f} at the end".format(
                *load_start, *load_end
            ),
        ),
        (
            "fit_logistic seconds",
            f"{t_fast:.3f} wall, {c_fast:.3f} cpu (best of {max(1, args.repeats)}; median wall "
            f"{t_median:.3f})",
        ),
        (
            "  its kernels",
            f"C extension {lib.__name__} ({lib.COMPILER}, {lib.FLAGS}, dispatch {lib.DISPATCH})"
            if lib is not None
            else "none (the C extension is not built): torch code",
        ),
        (
            "  without them",
            f"{t_torch:.3f} wall, {c_torch:.3f} cpu (torch code, best of {max(1, args.repeats)}; "
            f"kernels {t_torch / t_fast:.1f}x faster)",
        ),
        (
            "statsmodels seconds",
            f"{t_sm:.2f} wall, {c_sm:.2f} cpu ({sm_note}: {t_sm_meas:.2f} s wall measured, "
            f"{1e3 * t_sm_meas / m_sm:.2f} ms per unit; a first fit before, {t_sm_first:.2f} s "
            "with one-off imports, not counted)",
        ),
        ("ratio (speed-up)", f"{t_sm / t_fast:.0f}x wall, {c_sm / c_fast:.0f}x cpu"),
        ("units compared", f"{int(both.sum())} of {m_sm} (both converged)"),
        ("max relative beta diff", f"{rel_beta.max() if rel_beta.size else float('nan'):.2e}"),
        ("max |log10 p diff|", f"{dlogp.max() if dlogp.size else float('nan'):.2e}"),
        (
            "accuracy identical",
            f"{'yes' if acc_same else 'no'} ({int(fitted.sum())} units statsmodels fitted)",
        ),
        (
            "flags (all units)",
            f"separated {int(fit.separated.sum())}, not converged {int((~fit.converged).sum())}"
            f", constant {int(np.isnan(fit.beta).sum())}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
