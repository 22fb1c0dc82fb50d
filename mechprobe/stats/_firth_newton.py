"""The Newton iteration of :mod:`mechprobe.stats.firth`: penalised likelihood from five sums.

For a unit with standardised activations ``d`` (re-centred at ``cen``), one pass over the
samples computes the sums ``(p, w, v, u) . d^k`` for ``k = 0..4``; the penalised
log-likelihood, its gradient and Hessian, and the Fisher information of ``[1, d]`` follow
from them in closed form (:func:`_penalised`), so the iteration over units is a batched
matrix product per pass rather than a 2x2 solve per unit and sample.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
from jaxtyping import Float

#: Largest Newton step per (standardised) parameter, as ``logistf``'s ``maxstep``.
MAX_STEP = 5.0
#: Maximum number of step-halvings per unit.
MAX_HALVINGS = 30
#: A step is halved when the penalised log-likelihood falls by more than this many times
#: ``1 + |l*|`` (smaller changes are rounding noise near the optimum).
DECREASE_TOL = 1e-10
#: The activations of a unit are re-centred at their weighted mean ``m`` (weights
#: ``p (1 - p)``) when ``m^2`` exceeds this many times their weighted variance, so that the
#: determinant of the information, ``W0 W2 - W1^2``, does not lose its precision to
#: cancellation.
RECENTRE = 1.0


def _powers(
    xs: Float[torch.Tensor, "units samples"], cen: Float[np.ndarray, " units"]
) -> Float[torch.Tensor, "units 5 samples"]:
    """Rows ``d^0 .. d^4`` of ``d = xs - cen`` for every unit."""
    c, n = xs.shape
    pw = torch.empty(c, 5, n, dtype=xs.dtype, device=xs.device)
    pw[:, 0] = 1.0
    torch.sub(xs, torch.from_numpy(cen).to(xs.device)[:, None], out=pw[:, 1])
    torch.mul(pw[:, 1], pw[:, 1], out=pw[:, 2])
    torch.mul(pw[:, 2], pw[:, 1], out=pw[:, 3])
    torch.mul(pw[:, 2], pw[:, 2], out=pw[:, 4])
    return pw


def _pass(
    pw: Float[torch.Tensor, "units 5 samples"],
    a: Float[np.ndarray, " units"],
    b: Float[np.ndarray, " units"],
) -> tuple[np.ndarray, np.ndarray]:
    """Sums ``(p, w, v, u) . d^k`` (shape ``[units, 4, 5]``) and ``sum softplus(eta)``."""
    dev = pw.device
    d = pw[:, 1]
    a_t = torch.from_numpy(a).to(dev)[:, None]
    b_t = torch.from_numpy(b).to(dev)[:, None]
    eta = torch.addcmul(a_t, d, b_t)
    q = torch.empty(pw.shape[0], 4, pw.shape[2], dtype=pw.dtype, device=dev)
    p, w, v, u = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    torch.sigmoid(eta, out=p)
    torch.addcmul(p, p, p, value=-1.0, out=w)  # w = p (1 - p)
    torch.addcmul(w, p, w, value=-2.0, out=v)  # v = w (1 - 2 p)
    torch.addcmul(w, w, w, value=-6.0, out=u)  # u = w (1 - 6 w)
    sp = torch.nn.functional.softplus(eta).sum(1)
    sums = torch.bmm(q, pw.transpose(1, 2))
    return sums.cpu().numpy(), sp.cpu().numpy()


def _penalised(
    sums: np.ndarray, sp: np.ndarray, a: np.ndarray, b: np.ndarray, syd: np.ndarray, n1: int
) -> tuple[np.ndarray, ...]:
    """Penalised log-likelihood, gradient, Hessian and information from one pass's sums."""
    p0, p1 = sums[:, 0, 0], sums[:, 0, 1]
    wk, vk, uk = sums[:, 1], sums[:, 2], sums[:, 3]
    w0, w1, w2 = wk[:, 0], wk[:, 1], wk[:, 2]
    det = w0 * w2 - w1 * w1
    with np.errstate(invalid="ignore", divide="ignore"):
        lstar = a * n1 + b * syd - sp + 0.5 * np.log(det)
        dr = [vk[:, r] * w2 + w0 * vk[:, r + 2] - 2.0 * w1 * vk[:, r + 1] for r in (0, 1)]

        def drs(r: int, s: int) -> np.ndarray:
            return (
                uk[:, r + s] * w2
                + w0 * uk[:, r + s + 2]
                + vk[:, r] * vk[:, s + 2]
                + vk[:, s] * vk[:, r + 2]
                - 2.0 * vk[:, r + 1] * vk[:, s + 1]
                - 2.0 * w1 * uk[:, r + s + 1]
            )

        g0 = n1 - p0 + 0.5 * dr[0] / det
        g1 = syd - p1 + 0.5 * dr[1] / det
        h00 = -w0 + 0.5 * (drs(0, 0) / det - dr[0] * dr[0] / (det * det))
        h01 = -w1 + 0.5 * (drs(0, 1) / det - dr[0] * dr[1] / (det * det))
        h11 = -w2 + 0.5 * (drs(1, 1) / det - dr[1] * dr[1] / (det * det))
    return lstar, g0, g1, h00, h01, h11, w0, w1, w2, det


def _newton(  # noqa: PLR0915 (one Newton iteration of logistf, step for step; see below)
    xs: Float[torch.Tensor, "units samples"],
    syx: Float[np.ndarray, " units"],
    n1: int,
    *,
    max_iter: int,
    tol: float,
) -> tuple:
    """Safeguarded Newton-Raphson on ``l*`` for every row of the standardised ``xs``.

    Returns per unit ``a`` and ``b`` (with ``eta = a + b (xs - cen)``), ``cen``, the
    information sums ``(W0, W1, W2)`` at the estimate (centred at ``cen``), ``l*``, the
    convergence flag and the pass count.
    """
    c, n = xs.shape
    dev = xs.device
    # results
    r_a, r_b, r_cen = np.full(c, np.nan), np.full(c, np.nan), np.zeros(c)
    r_info = np.full((3, c), np.nan)
    r_l, r_conv, r_nit = np.full(c, np.nan), np.zeros(c, dtype=bool), np.zeros(c, np.int64)

    # state of the rows still being fitted (`ids` maps them to units)
    ids = np.arange(c)
    cen = np.zeros(c)
    a = np.full(c, math.log((n1 + 1) / (n - n1 + 1)))  # the restricted maximum
    b = np.zeros(c)
    a_prev, b_prev = a.copy(), b.copy()  # last accepted point
    sa, sb = np.zeros(c), np.zeros(c)  # step from there to (a, b)
    l_prev = np.full(c, -np.inf)
    best = np.zeros((6, c))  # a, b, l*, W0, W1, W2 at the last accepted point
    halvings = np.zeros(c, dtype=np.int64)
    n_it = np.zeros(c, dtype=np.int64)
    work = xs
    pw = _powers(work, cen)
    active = np.ones(c, dtype=bool)
    while True:
        n_active = int(active.sum())
        if not n_active:
            break
        if n_active <= 0.75 * active.size:
            keep = np.flatnonzero(active)
            kt = torch.from_numpy(keep).to(dev)
            work, pw = work.index_select(0, kt), pw.index_select(0, kt)
            state = (ids, syx, cen, a, b, a_prev, b_prev, sa, sb, l_prev, halvings, n_it)
            ids, syx, cen, a, b, a_prev, b_prev, sa, sb, l_prev, halvings, n_it = (
                t[keep] for t in cast("tuple[np.ndarray, ...]", state)
            )
            best = best[:, keep]
            active = np.ones(n_active, dtype=bool)

        sums, sp = _pass(pw, a, b)
        n_it += active
        syd = syx - n1 * cen
        lstar, g0, g1, h00, h01, h11, w0, w1, w2, det = _penalised(sums, sp, a, b, syd, n1)
        ok = np.isfinite(lstar) & (det > 0)
        ok &= lstar >= l_prev - DECREASE_TOL * (1.0 + np.abs(l_prev))
        bad = active & ~ok
        good = active & ok

        # ---- accepted points: record them and take the next step --------------------
        best = np.where(good, np.stack([a, b, lstar, w0, w1, w2]), best)
        hdet = h00 * h11 - h01 * h01
        newton = (h00 < 0) & (hdet > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            # Newton step -H^-1 g where H is negative definite, else Fisher scoring I^-1 g
            s0 = np.where(newton, (h01 * g1 - h11 * g0) / hdet, (w2 * g0 - w1 * g1) / det)
            s1 = np.where(newton, (h01 * g0 - h00 * g1) / hdet, (w0 * g1 - w1 * g0) / det)
        big = np.maximum(np.abs(s0), np.abs(s1))
        scale = np.where(big > MAX_STEP, MAX_STEP / np.where(big > 0, big, 1.0), 1.0)
        s0, s1 = s0 * scale, s1 * scale
        done = good & (big <= tol)
        failed = good & ~np.isfinite(big)
        step_on = good & ~done & ~failed
        a_prev, b_prev = np.where(good, a, a_prev), np.where(good, b, b_prev)
        l_prev = np.where(good, lstar, l_prev)
        sa, sb = np.where(good, s0, sa), np.where(good, s1, sb)
        halvings = np.where(good, 0, halvings)

        # ---- rejected points: halve the step -----------------------------------------
        halve = bad & (halvings < MAX_HALVINGS) & np.isfinite(l_prev)
        failed |= bad & ~halve
        sa, sb = np.where(halve, 0.5 * sa, sa), np.where(halve, 0.5 * sb, sb)
        halvings += halve
        a = np.where(step_on | halve, a_prev + sa, a)
        b = np.where(step_on | halve, b_prev + sb, b)

        # ---- finished units ----------------------------------------------------------
        finish = done | failed | (active & ~done & (n_it >= max_iter))
        if finish.any():
            u = ids[finish]
            fin_a = np.where(done, a + s0, best[0])  # a converged unit takes its last step
            fin_b = np.where(done, b + s1, best[1])
            r_a[u], r_b[u], r_cen[u] = fin_a[finish], fin_b[finish], cen[finish]
            r_l[u] = best[2][finish]
            r_info[:, u] = best[3:, finish]
            r_conv[u] = done[finish]
            r_nit[u] = n_it[finish]
            never = finish & ~np.isfinite(l_prev)  # no acceptable point at all
            if never.any():
                r_a[ids[never]] = r_b[ids[never]] = np.nan
            active &= ~finish

        # ---- re-centre where the weighted mean of d drifted far from 0 ---------------
        with np.errstate(invalid="ignore", divide="ignore"):
            mw = w1 / w0
            far = active & good & (mw * mw > RECENTRE * (w2 / w0 - mw * mw))
        if far.any():
            # eta = a + b d = (a + b m) + b (d - m): shift every stored point
            mf = np.where(far, mw, 0.0)
            cen = cen + mf
            a, a_prev = a + b * mf, a_prev + b_prev * mf
            sa = sa + sb * mf
            best = best.copy()
            best[0] += best[1] * mf  # keep `best` in the current centring
            rows = np.flatnonzero(far)
            rt = torch.from_numpy(rows).to(dev)
            pw[rt] = _powers(work.index_select(0, rt), cen[rows])
    return r_a, r_b, r_cen, tuple(r_info), r_l, r_conv, r_nit
