"""Chunked driver of the probe solver: data preparation, separation check and results.

:func:`fit_columns` does the work behind :func:`mechprobe.stats.fit_logistic`: chunks of
columns are loaded, standardised and checked for separation here, fitted by
:func:`mechprobe.stats._newton.newton`, and turned into estimates, standard errors and
in-sample accuracies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from jaxtyping import Float, Int

from mechprobe.stats import _kernels
from mechprobe.stats._newton import BLOCK_ELEMENTS, Pending, Rows, UnitFloats, dot, newton

#: Target size in bytes of one chunk's float64 activations on CPU (the per-unit bookkeeping
#: runs once per chunk and pass, so chunks are large), and on an accelerator.
CPU_CHUNK_BYTES = 1 << 24
GPU_CHUNK_BYTES = 1 << 26

Results = dict[str, np.ndarray]


class Labels:
    """Label-derived quantities shared by all chunks (samples sorted positives first)."""

    def __init__(self, y: Float[torch.Tensor, " samples"]) -> None:
        self.n = int(y.shape[0])
        self.n1 = int((y > 0.5).sum())
        self.ybar = self.n1 / self.n
        self.single_class = self.n1 in (0, self.n)
        # intercept-only (majority class) model
        if self.single_class:
            self.logit_ybar = math.inf if self.n1 else -math.inf
        else:
            self.logit_ybar = math.log(self.ybar / (1.0 - self.ybar))
        # (count / n, rounded exactly as statsmodels' mean of the correct predictions)
        self.majority_acc = (self.n1 if self.ybar > 0.5 else self.n - self.n1) / self.n


def fit_columns(
    x: Float[torch.Tensor, "samples units"],
    order: Int[torch.Tensor, " samples"],
    lab: Labels,
    *,
    chunk_size: int,
    device: torch.device,
    max_iter: int,
    tol: float,
) -> Results:
    """Fit every unit (column) of ``x``; samples are taken in ``order`` (positives first).

    Chunks of ``chunk_size`` columns are fitted up to their first float64 pass (see
    :func:`~mechprobe.stats._newton.newton`), on CPU by ``torch.get_num_threads()`` worker
    threads, each running single-threaded torch operations (per-operation parallelism
    gains little at this size and stalls when the machine is busy). The few units that
    need more passes are then fitted together, so that their passes pay the per-pass
    overhead once and not once per chunk.

    Returns the fields of :class:`~mechprobe.stats.LogisticFit` with the Wald statistic ``z``
    in place of ``pvalue``, as numpy arrays.
    """
    m = x.shape[1]
    out = {k: np.full(m, np.nan) for k in ("beta", "intercept", "se", "z", "accuracy")}
    out |= {k: np.zeros(m, dtype=bool) for k in ("converged", "separated")}
    out["n_iter"] = np.zeros(m, dtype=np.int64)

    def run(cols: slice | np.ndarray, resume: Pending | None = None) -> Pending | None:
        idx = cols if isinstance(cols, slice) else torch.from_numpy(cols).to(x.device)
        res, pending = _fit_chunk(x[:, idx], order, lab, device, max_iter, tol, resume)
        for key, val in res.items():
            out[key][cols] = val
        if pending is None:
            return None
        return (np.arange(m)[cols][pending[0]], *pending[1:])

    chunks = [slice(lo, min(lo + chunk_size, m)) for lo in range(0, m, chunk_size)]
    cpu = device.type == "cpu"
    workers = min(torch.get_num_threads(), len(chunks)) if cpu else 1
    with torch.no_grad(), _torch_threads(1 if cpu else torch.get_num_threads()):
        if workers > 1:
            with ThreadPoolExecutor(workers) as ex:
                pending = list(ex.map(run, chunks))
        else:
            pending = [run(cols) for cols in chunks]
        pending = [p for p in pending if p is not None]
        if pending:
            cols, path, n_it, halvings = (
                np.concatenate(v, axis=-1) for v in zip(*pending, strict=True)
            )
            for lo in range(0, cols.size, chunk_size):
                part = slice(lo, lo + chunk_size)
                run(cols[part], (cols[part], path[..., part], n_it[..., part], halvings[..., part]))
    return out


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _fit_chunk(
    x: Float[torch.Tensor, "samples units"],
    order: Int[torch.Tensor, " samples"],
    lab: Labels,
    device: torch.device,
    max_iter: int,
    tol: float,
    resume: Pending | None,
) -> tuple[Results, Pending | None]:
    """Fit the units of one chunk, or go on with the ``resume`` state of pending units.

    Returns the results (NaN and zeros for units still pending) and the pending units.
    """
    c, n, n1 = x.shape[1], lab.n, lab.n1
    xs, xs32, (min1, max1, min0, max0, mean, sd, syx) = _load(x, order, lab, device)
    out = {k: np.full(c, np.nan) for k in ("beta", "intercept", "se", "z", "accuracy")}
    out["converged"] = np.zeros(c, dtype=bool)

    # --- exact (quasi-)separation check: min/max of x within each class ----------------
    lo, hi = np.minimum(min1, min0), np.maximum(max1, max0)
    if not (np.isfinite(lo) & np.isfinite(hi)).all():
        raise ValueError("x contains NaN or infinite values")
    constant = lo == hi
    if lab.single_class:
        separated = np.ones(c, dtype=bool)
        out["accuracy"][:] = 1.0
    else:
        sep_pos = (max0 <= min1) & ~constant  # slope -> +inf
        sep_neg = (max1 <= min0) & ~constant  # slope -> -inf
        separated = sep_pos | sep_neg
        if separated.any():
            # Limit of the diverging fit: points strictly on either side of the boundary
            # are classified correctly; points tied at the boundary get p_hat equal to
            # their share of positives.
            sidx = np.flatnonzero(separated)
            raw = x[:, torch.from_numpy(sidx).to(x.device)].index_select(0, order).T
            bound = torch.from_numpy(np.where(sep_pos, max0, max1)[sidx]).to(raw)
            tied = raw == bound[:, None]
            errors = torch.minimum(tied[:, :n1].sum(1), tied[:, n1:].sum(1)).cpu().numpy()
            out["accuracy"][sidx] = (n - errors) / n  # rounded as count / n
            out["beta"][sidx] = np.where(sep_pos[sidx], math.inf, -math.inf)
    out["separated"] = separated
    out["accuracy"][constant] = 1.0 if lab.single_class else lab.majority_acc
    out["intercept"][constant] = lab.logit_ybar

    # --- maximum likelihood on the others ----------------------------------------------
    fit = ~(constant | separated) & (sd > 0) & np.isfinite(sd)
    if not fit.any():
        out["n_iter"] = np.zeros(c, dtype=np.int64)
        return out, None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        res = newton(xs, xs32, fit, syx, n1, max_iter=max_iter, tol=tol, resume=resume)
        a, b, (h00, h01, h11), conv, out["n_iter"], pending = res
        # in-sample accuracy at the estimates: p_hat > 0.5  <=>  a + b xs > 0
        ok = np.isfinite(a) & np.isfinite(b)
        correct = _correct(xs, np.where(ok, a, 0.0), np.where(ok, b, 0.0), n1)
        se_s = np.sqrt(h00 / (h00 * h11 - h01 * h01))  # inverse information, slope entry
        good = fit & ok & np.isfinite(se_s)
        beta = b / sd  # back from the standardised xs = (x - mean) / sd
        new = {
            "beta": beta,
            "intercept": a - beta * mean,
            "se": se_s / sd,
            "z": b / se_s,
            "accuracy": (correct + n - n1) / n,
            "converged": conv,
        }
    for key, val in new.items():
        out[key] = np.where(good, val, out[key])
    return out, pending


def _load(
    x: Float[torch.Tensor, "samples units"],
    order: Int[torch.Tensor, " samples"],
    lab: Labels,
    device: torch.device,
) -> tuple[Rows, Float[torch.Tensor, "units samples"], Float[np.ndarray, "7 units"]]:
    """Standardised activations of a chunk, one row per unit, samples positives first.

    Each activation is standardised, ``x = mean + sd * xs`` (an exact reparametrisation;
    the fit is better conditioned, and the convergence criterion gets a meaningful scale).
    Returns ``xs`` in float64 and float32, and per unit ``min1, max1, min0, max0`` (of
    ``x`` among positives and negatives), ``mean``, ``sd`` and ``sum y xs``. The work is
    done in blocks of rows small enough to stay in cache from the transposing copy on.
    """
    c, n, n1 = x.shape[1], lab.n, lab.n1
    xs = torch.empty(c, n, dtype=torch.float64, device=device)
    xs32 = torch.empty(c, n, dtype=torch.float32, device=device)
    stats = torch.empty(7, c, dtype=torch.float64, device=device)
    lib = _kernels.library() if device.type == "cpu" else None
    if lib is not None:  # the same, fused (mechprobe.stats._kernels), the chunk in one call
        if x.dtype not in (torch.float32, torch.float64) or x.device != device or x.stride(1) != 1:
            x = x.to(device=device, dtype=torch.float64).contiguous()
        order = order.to(device=device, dtype=torch.int64).contiguous()
        arr = _kernels.array
        lib.prepare(arr(x), arr(order), n1, arr(xs), arr(xs32), arr(stats))
        return xs, xs32, stats.numpy()
    classes = (slice(0, n1), slice(n1, n)) if 0 < n1 < n else (slice(0, n), slice(0, n))
    block = max(1, BLOCK_ELEMENTS // n) if device.type == "cpu" else c
    for lo in range(0, c, block):
        hi = min(lo + block, c)
        raw = x[:, lo:hi].index_select(0, order)  # samples-major: min/max down columns
        minmax = [f(raw[k], 0) for k in classes for f in (torch.amin, torch.amax)]
        stats[:4, lo:hi] = torch.stack(minmax)
        xb = xs[lo:hi]
        xb.copy_(raw.T)
        mean, sd, syx = stats[4:, lo:hi]
        torch.mean(xb, 1, out=mean)
        xb.sub_(mean[:, None])
        torch.linalg.vector_norm(xb, dim=1, out=sd).div_(math.sqrt(n))
        xb.mul_(torch.where((sd > 0) & torch.isfinite(sd), 1.0 / sd, 1.0)[:, None])
        torch.sum(xb[:, :n1], 1, out=syx)
        xs32[lo:hi].copy_(xb)
    return xs, xs32, stats.cpu().numpy()


def _correct(xs: Rows, a: UnitFloats, b: UnitFloats, n1: int) -> Int[np.ndarray, " units"]:
    """Correct classifications minus the number of negatives, for every row of ``xs``.

    That is ``#(a + b xs > 0 among positives) - #(a + b xs > 0 among negatives)``. With
    ``t = -a / b``, ``a + b xs > 0`` is ``xs > t`` for ``b > 0`` and ``not xs >= t`` for
    ``b < 0``: one comparison with a threshold per row, counted as the dot product of the
    indicator with +1 (positives) / -1 (negatives).
    """
    r, n = xs.shape
    t = -a / b
    thr = np.where(b > 0, t, np.nextafter(t, -np.inf))  # xs >= t  <=>  xs > thr
    thr = np.where(b == 0, np.where(a > 0, -np.inf, np.inf), thr)
    lib = _kernels.library() if xs.device.type == "cpu" else None
    if lib is not None:  # the same count, fused (mechprobe.stats._kernels)
        count: np.ndarray = np.empty(r, dtype=np.int64)
        thr = np.ascontiguousarray(thr, dtype=np.float64)
        lib.count_above(_kernels.array(xs.contiguous()), n1, thr, count)
        return np.where(b < 0, 2 * n1 - n - count, count)
    thr_t = torch.from_numpy(thr).to(xs)[:, None]
    sign = torch.where(torch.arange(n, device=xs.device) < n1, 1.0, -1.0).to(xs)
    block = max(1, BLOCK_ELEMENTS // n) if xs.device.type == "cpu" else r
    ind = torch.empty(min(block, r), n, dtype=xs.dtype, device=xs.device)
    count = np.empty(r)
    for lo in range(0, r, block):
        hi = min(lo + block, r)
        count[lo:hi] = dot(torch.gt(xs[lo:hi], thr_t[lo:hi], out=ind[: hi - lo]), sign)
    count = np.rint(count).astype(np.int64)
    return np.where(b < 0, 2 * n1 - n - count, count)
