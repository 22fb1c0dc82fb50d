"""Vectorised Newton-Raphson for univariate logistic regressions: the probe solver.

:func:`newton` maximises the likelihood of ``label ~ 1 + xs[j]`` for every row ``j`` of a
chunk of standardised activations at once, in float64, by safeguarded Newton-Raphson with
closed-form 2x2 solves; :mod:`mechprobe.stats._chunks` prepares the rows and turns the
estimates into results.

Why hand-written: library solvers fit one model at a time, and at this size their per-fit
overhead is the whole cost. Measured here (2 cores, 800 samples, warm): statsmodels'
``Logit(y, add_constant(x[:, j])).fit()`` with its p-value and accuracy takes 0.7-1.1 ms a
unit (14-23 s for 20,000 units), scikit-learn's ``LogisticRegression(penalty=None,
solver="newton-cholesky")`` 1.5-1.8 ms; no library batches many independent logistic fits.
Written as array operations over all units, the same Newton iterations take 0.17-0.25 s for
the 20,000 units with torch operations on blocks of rows that stay in cache (the code below;
about 5.4 ns of CPU time per sample and unit for a float64 pass), and well under 0.1 s where
the fused kernels of :mod:`mechprobe.stats._kernels` (a C extension built at install time;
1.7-2.1 ns) are installed, which
:func:`_sums` and the data preparation in :mod:`mechprobe.stats._chunks` then call instead
(``scripts/bench_probe.py`` prints both). The rest of this module keeps the number of passes
down:

* the fit starts from linear discriminant analysis (free from the class means);
* up to ``F32_PASSES`` float32 passes (a third of the cost of a float64 one) bring each
  unit close to its optimum;
* one float64 pass then finishes nearly every unit: it also gives the third derivatives
  of the log-likelihood, so the next Newton step, the convergence test and the
  information at the estimate follow by Taylor expansion instead of another pass.

Every result comes from float64 sums at float64 iterates.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from mechprobe.stats import _kernels

#: On CPU, a pass computes its per-sample arrays for blocks of rows of about this many
#: elements, so that they stay in cache between operations.
BLOCK_ELEMENTS = 1 << 17
#: Warm-up: at most this many float32 Newton passes before the float64 passes.
F32_PASSES = 3
#: A unit leaves the float32 warm-up once its float32 Newton step is at most this large
#: (its distance to the optimum is then about this squared, or the float32 noise level).
F32_STEP = 1e-3
#: The float64 convergence test uses the Taylor-predicted next Newton step only after a
#: Newton step at most this large (the prediction's error is of the order of its cube).
PREDICT_STEP = 1e-4
#: A float64 pass re-centres a unit's standardised activations at their weighted mean when
#: its square exceeds this many times their weighted variance (see :func:`_recentre`).
RECENTRE = 1e4
#: Maximum number of step-halvings per unit (a safeguard; plain Newton rarely needs one).
MAX_HALVINGS = 30

Rows = Float[torch.Tensor, "units samples"]
UnitFloats = Float[np.ndarray, " units"]
UnitBools = Bool[np.ndarray, " units"]
UnitInts = Int[np.ndarray, " units"]
#: The Newton state of units: rows ``a, b, a0, b0, da, db, phi0``. The point (a, b) was
#: reached by the step (da, db) from (a0, b0), along which the slope of the log-likelihood
#: was phi0 at (a0, b0).
Path = Float[np.ndarray, "7 units"]
#: Units left after a chunk's first float64 pass: their rows, Newton state (in the common
#: centring of ``xs``), pass counts and step-halvings.
Pending = tuple[np.ndarray, Path, np.ndarray, np.ndarray]


def newton(
    xs: Rows,
    xs32: Float[torch.Tensor, "units samples"],
    fit: UnitBools,
    syx: UnitFloats,
    n1: int,
    *,
    max_iter: int,
    tol: float,
    resume: Pending | None = None,
) -> tuple:
    """Maximum likelihood of ``label ~ 1 + xs`` for the rows of ``xs`` where ``fit`` is set.

    ``xs`` (float64, with its float32 copy ``xs32``) holds standardised activations (mean
    0, mean square 1), samples positives first, ``n1`` of them; ``syx`` is ``sum y xs``.
    Without ``resume``, units start from linear discriminant analysis, get up to
    ``F32_PASSES`` float32 passes and one float64 pass; the units then left are returned as
    pending. With the ``resume`` state of pending units (the rows of ``xs``), they get
    float64 passes to the end.

    Each float64 pass at ``theta`` also yields the third derivatives of the log-likelihood,
    so the gradient and information at ``theta + s`` after the Newton step ``s`` follow by
    Taylor expansion (remainder of order ``|s|^3``). When ``|s| <= PREDICT_STEP``, the next
    Newton step ``s'`` is computed from them instead of by another pass over the data; the
    unit has converged when ``|s'| <= tol`` (the criterion an actual pass would apply, up
    to that remainder), its estimate is ``theta + s + s'`` and its information, for the
    standard errors, the expansion at that point.

    Returns per unit ``a, b`` (intercept and slope on ``xs``; NaN where the information
    became singular, or pending), the information ``(h00, h01, h11)`` there, the
    convergence flag and the pass count; and the pending units, or None.
    """
    syx = np.where(fit, syx, 0.0)
    if resume is None:
        path = _start(syx, n1, xs.shape[1])
        n_it, halvings = np.zeros(fit.size, dtype=np.int64), np.zeros(fit.size, dtype=np.int64)
        warm = min(F32_PASSES, max_iter - 1)
        if warm > 0:
            _warm_up(xs32, path, n_it, fit, n1, syx, passes=warm, tol=tol)
    else:
        path, n_it, halvings = (np.array(v) for v in resume[1:])
    passes = 1 if resume is None else None
    return _polish(
        xs, path, n_it, halvings, fit, n1, syx, passes=passes, max_iter=max_iter, tol=tol
    )


def _start(syx: UnitFloats, n1: int, n: int) -> Path:
    """The starting point: linear discriminant analysis, a free step from ``(a0, 0)``.

    At the intercept-only estimate ``(a0, 0)``, ``a0 = logit(ybar)``, the first Newton step
    is ``(0, d)``, with ``d`` the difference of the class means of ``xs``; LDA's slope is
    ``d / (1 - W d^2)``, ``W = ybar (1 - ybar)``, here capped at ``2 d``.
    """
    ybar = n1 / n
    w0 = ybar * (1.0 - ybar)
    d = syx / (w0 * n)
    db = d / (1.0 - np.minimum(w0 * d * d, 0.5))
    da = -0.5 * (1.0 - 2.0 * ybar) * d * db  # a = a0 - b (mean of the class means)
    a0, zero = np.full(syx.size, np.log(ybar / (1.0 - ybar))), np.zeros(syx.size)
    return np.stack([a0 + da, db, a0, zero, da, db, syx * db])


def _step(path: Path, mask: UnitBools, s0: UnitFloats, s1: UnitFloats, g0, g1) -> None:
    """Take the step ``(s0, s1)`` where ``mask`` is set (``g``: gradient at ``(a, b)``)."""
    a, b = path[0], path[1]
    np.copyto(path, [a + s0, b + s1, a, b, s0, s1, g0 * s0 + g1 * s1], where=mask)


def _halve(path: Path, mask: UnitBools) -> None:
    """Go back to the middle of the last step where ``mask`` is set."""
    _, _, a0, b0, da, db, phi0 = path
    np.copyto(path, [a0 + da / 2, b0 + db / 2, a0, b0, da / 2, db / 2, phi0 / 2], where=mask)


def _overshot(path: Path, g0: UnitFloats, g1: UnitFloats, tol: float) -> UnitBools:
    """Whether the last step overshot the maximum on its line (``g``: gradient at ``(a, b)``).

    For a quadratic log-likelihood, a slope below ``-phi0`` at the end means it fell. Steps
    below ``tol`` are left alone (they are at the noise level).
    """
    da, db, phi0 = path[4:]
    return (g0 * da + g1 * db < -phi0) & (np.maximum(np.abs(da), np.abs(db)) > tol)


def _newton_step(sums: Float[np.ndarray, "units 9"], n1: int, syx: UnitFloats) -> tuple:
    """Gradient, information, its determinant and Newton step from the sums of a pass.

    Returns ``g0, g1, h00, h01, h11, det, s0, s1`` (the step by the closed-form inverse of
    the 2x2 information); see :func:`_sums` for the sums.
    """
    g0 = n1 - sums[:, 0]  # sum (y - p)
    g1 = syx - sums[:, 3]  # sum (y - p) xs
    h00, h01, h11 = sums[:, 1], sums[:, 4], sums[:, 6]  # sum w (1, xs, xs^2)
    det = h00 * h11 - h01 * h01
    s0 = (h11 * g0 - h01 * g1) / det
    s1 = (h00 * g1 - h01 * g0) / det
    return g0, g1, h00, h01, h11, det, s0, s1


def _warm_up(
    xs32: Float[torch.Tensor, "units samples"],
    path: Path,
    n_it: UnitInts,
    fit: UnitBools,
    n1: int,
    syx: UnitFloats,
    *,
    passes: int,
    tol: float,
) -> None:
    """Float32 Newton passes, updating ``path`` and ``n_it`` in place.

    A unit leaves the warm-up after a step of at most ``F32_STEP``, or, with its state
    unchanged, when its last step overshot, its Newton step is not usable or did not
    shrink: the float64 passes take over from there.
    """
    # rows `ids` of the chunk are in `work`; `keep`: those still warming up
    ids, keep, work, last = np.arange(fit.size), fit, xs32, np.inf
    for _ in range(passes):
        p = path[:, ids]
        sums = _sums(work, p[0], p[1], third=False)
        g0, g1, *_, det, s0, s1 = _newton_step(sums, n1, syx[ids])
        step = np.maximum(np.abs(s0), np.abs(s1))
        take = keep & ~_overshot(p, g0, g1, tol) & (det > 0) & (step < last)
        _step(p, take, s0, s1, g0, g1)
        path[:, ids] = p
        n_it[ids] += keep
        keep = take & (step > F32_STEP)
        if not keep.any():
            break
        ids, work, last = ids[keep], _rows(work, keep), step[keep]
        keep = np.ones(ids.size, dtype=bool)


def _polish(
    xs: Rows,
    path: Path,
    n_it: UnitInts,
    halvings: UnitInts,
    fit: UnitBools,
    n1: int,
    syx: UnitFloats,
    *,
    passes: int | None,
    max_iter: int,
    tol: float,
) -> tuple:
    """Safeguarded float64 Newton passes from ``path``; returns :func:`newton`'s results.

    Units left after ``passes`` passes (None: none are) are pending. ``n_it`` counts the
    passes.
    """
    c = fit.size
    r_a, r_b, r_info = np.full(c, np.nan), np.full(c, np.nan), np.full((3, c), np.nan)
    r_conv = np.zeros(c, dtype=bool)
    # rows `ids` of the chunk are in `work`, with their state; `keep`: those still iterating
    ids, keep, work, shift = np.arange(c), fit, xs, np.zeros(c)  # shift: see _recentre
    it = 0
    while True:
        it += 1
        sums = _sums(work, path[0], path[1], third=True)
        g0, g1, h00, h01, h11, det, s0, s1 = _newton_step(sums, n1, syx)
        mw = h01 / h00
        far = keep & (mw * mw > RECENTRE * (h11 / h00 - mw * mw)) & (shift == 0)
        live = keep & ~far  # the others' pass is repeated after re-centring
        ok = (det > 0) & np.isfinite(s0) & np.isfinite(s1)
        bad = live & _overshot(path, g0, g1, tol) & (halvings < MAX_HALVINGS)
        take, fail = live & ~bad & ok, live & ~bad & ~ok
        _halve(path, bad)
        _step(path, take, s0, s1, g0, g1)
        halvings += bad
        n_it[ids] += take | bad

        # ---- the next Newton step, from the Taylor expansion at the pass's point ----
        # With v = w (1 - 2 p) and V_k = sum v xs^k, the information at (a, b) + s is
        # H + s0 V[i+j] + s1 V[i+j+1] and the gradient there -1/2 sum v x_i (s . x)^2.
        v0, v1, v2, v3 = sums[:, 2], sums[:, 5], sums[:, 7], sums[:, 8]
        e00 = h00 + s0 * v0 + s1 * v1
        e01 = h01 + s0 * v1 + s1 * v2
        e11 = h11 + s0 * v2 + s1 * v3
        q0 = -0.5 * (s0 * s0 * v0 + 2.0 * s0 * s1 * v1 + s1 * s1 * v2)
        q1 = -0.5 * (s0 * s0 * v1 + 2.0 * s0 * s1 * v2 + s1 * s1 * v3)
        det2 = e00 * e11 - e01 * e01
        t0 = (e11 * q0 - e01 * q1) / det2
        t1 = (e00 * q1 - e01 * q0) / det2
        step = np.maximum(np.abs(s0), np.abs(s1))
        done = take & (step <= tol)  # converged by an actual pass (the step is tiny)
        predicted = take & ~done & (step <= PREDICT_STEP) & (det2 > 0)
        predicted &= np.maximum(np.abs(t0), np.abs(t1)) <= tol
        np.copyto(path[:2], [path[0] + t0, path[1] + t1], where=predicted)
        e = np.stack([e00, e01, e11])  # information at (a, b) + s
        e_t = e + t0 * np.stack([v0, v1, v2]) + t1 * np.stack([v1, v2, v3])
        np.copyto(e, e_t, where=predicted)  # at (a, b) + s + t
        done |= predicted

        finish = done | fail | (live & (n_it[ids] >= max_iter))
        u = ids[finish]
        a, b = np.where(fail, np.nan, path[0]), np.where(fail, np.nan, path[1])
        r_a[u], r_b[u] = (a - b * shift)[finish], b[finish]  # back to the common centring
        # information at the final point where a step was taken, else at the pass's
        info = np.where(take, e, [h00, h01, h11])
        r_info[:, u] = info[:, finish]
        r_conv[u] = done[finish]
        keep = keep & ~finish
        if not keep.any():
            return r_a, r_b, r_info, r_conv, n_it, None
        state: tuple[np.ndarray, ...] = (ids, path, syx, shift, halvings, far, mw)
        ids, path, syx, shift, halvings, far, mw = (v[..., keep] for v in state)
        if it == passes:
            path[[0, 2, 4]] -= path[[1, 3, 5]] * shift  # a, a0, da in the common centring
            return r_a, r_b, r_info, r_conv, n_it, (ids, path, n_it[ids], halvings)
        work = _rows(work, keep)
        if far.any():
            _recentre(work, far, mw[far], path, syx, shift, n1)
        keep = np.ones(ids.size, dtype=bool)


def _recentre(
    work: Rows,
    far: UnitBools,
    m: UnitFloats,
    path: Path,
    syx: UnitFloats,
    shift: UnitFloats,
    n1: int,
) -> None:
    """Re-centre the rows of ``work`` where ``far`` at ``m``, their mean weighted by ``w``.

    For a unit whose xs lies far out in the tails (an outlier dominates the mean and sd),
    the information ``sum w * (1, xs, xs^2)`` would lose the precision of its determinant
    to cancellation. Its state is mapped to the new coordinates (``a + b xs`` unchanged).
    """
    idx = torch.from_numpy(np.flatnonzero(far)).to(work.device)
    work[idx] = work[idx] - torch.from_numpy(m).to(work)[:, None]
    shift[far] += m
    syx[far] -= m * n1  # sum y (xs - m)
    a, b, a0, b0, da, db, _ = path[:, far]
    path[0, far], path[2, far], path[4, far] = a + b * m, a0 + b0 * m, da + db * m


def _rows(work: torch.Tensor, keep: UnitBools) -> torch.Tensor:
    """The rows of ``work`` where ``keep`` is set (a copy)."""
    return work.index_select(0, torch.from_numpy(np.flatnonzero(keep)).to(work.device))


def _sums(xs: Rows, a: UnitFloats, b: UnitFloats, *, third: bool) -> Float[np.ndarray, "units 9"]:
    """One Newton pass over the rows of ``xs`` (float64 or float32).

    For every row, ``p = sigmoid(a + b xs)``, ``w = p (1 - p)`` and, with ``third``,
    ``v = w (1 - 2 p)`` (the derivative of ``w`` along ``a + b xs``); returns the sums
    ``(p, w, v) . 1``, ``(p, w, v) . xs``, ``(w, v) . xs^2`` and ``v . xs^3`` as the 9
    columns of a float64 numpy array (those of ``v`` are NaN or, from the fused float64
    kernel, computed anyway, without ``third``).
    """
    lib = _kernels.library() if xs.device.type == "cpu" else None
    if lib is not None:  # the same sums, fused (mechprobe.stats._kernels)
        out = np.full((xs.shape[0], 9), np.nan)
        a, b = np.ascontiguousarray(a, np.float64), np.ascontiguousarray(b, np.float64)
        # (float64 passes give all nine sums, float32 ones five)
        lib.sums(_kernels.array(xs.contiguous()), a, b, out)
        return out
    dev, dt = xs.device, xs.dtype
    r, n = xs.shape
    a_t = torch.from_numpy(a).to(device=dev, dtype=dt)[:, None]
    b_t = torch.from_numpy(b).to(device=dev, dtype=dt)[:, None]
    k = 3 if third else 2
    block = max(1, BLOCK_ELEMENTS // n) if dev.type == "cpu" else r
    f = xs.new_empty(min(block, r), k + 2, n)  # p, w[, v], xs^2, scratch
    out = np.full((r, 9), np.nan)
    for lo in range(0, r, block):
        hi = min(lo + block, r)
        x, fb, s = xs[lo:hi], f[: hi - lo, :k], out[lo:hi]
        p, w, x2, tmp = fb[:, 0], fb[:, 1], f[: hi - lo, k], f[: hi - lo, k + 1]
        torch.mul(x, b_t[lo:hi], out=p).add_(a_t[lo:hi]).sigmoid_()
        torch.addcmul(p, p, p, value=-1.0, out=w)  # w = p (1 - p)
        torch.mul(x, x, out=x2)
        if third:
            v = fb[:, 2]
            torch.addcmul(w, p, w, value=-2.0, out=v)  # v = w (1 - 2 p)
            s[:, 8] = dot(torch.mul(v, x, out=tmp), x2)
        s[:, 0:k] = fb.sum(2).cpu().numpy()
        s[:, 3 : 3 + k] = dot(fb, x[:, None])
        s[:, 6 : 5 + k] = dot(fb[:, 1:], x2[:, None])
    return out


def dot(u: torch.Tensor, v: torch.Tensor) -> np.ndarray:
    """Dot products over the last axis (broadcasting), as a numpy array.

    On CPU numpy's kernel: torch's float64 one is about 100x slower there.
    """
    if u.device.type == "cpu":
        return np.vecdot(u.numpy(), v.numpy())
    return torch.linalg.vecdot(u, v).cpu().numpy()
