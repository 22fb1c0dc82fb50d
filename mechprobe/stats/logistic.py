"""Exact, vectorised univariate logistic-regression probes.

For every unit ``j`` of an activation matrix ``x`` this module fits the model
``label ~ 1 + x[:, j]`` by maximum likelihood (Newton-Raphson / IRLS), for all units at
once, in float64. The result is the same maximum-likelihood estimate that
``statsmodels.api.Logit(y, sm.add_constant(x[:, j])).fit()`` finds, but one to two orders
of magnitude faster, because the 2x2 Newton systems of a whole chunk of units are solved
in closed form with a handful of tensor operations.

Example:
    >>> import numpy as np
    >>> from mechprobe.stats import fit_logistic
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, size=500)
    >>> x = rng.normal(size=(500, 64)) + 0.5 * y[:, None]
    >>> fit = fit_logistic(x, y)
    >>> fit.beta.shape
    (64,)
"""

from __future__ import annotations

import math
import queue
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int, Shaped
from scipy import stats

__all__ = ["LogisticFit", "fit_logistic"]

# Type aliases (module level so that linters do not parse the dimension strings).
Acts = Float[np.ndarray, "samples units"] | Float[torch.Tensor, "samples units"]
Labels = Shaped[np.ndarray, " samples"] | Shaped[torch.Tensor, " samples"]
UnitFloats = Float[np.ndarray, " units"]
UnitBools = Bool[np.ndarray, " units"]
UnitInts = Int[np.ndarray, " units"]

#: Target size in bytes of one float64 chunk of activations on CPU. The per-unit Newton
#: bookkeeping runs once per chunk and iteration; the chunk's working set (activations,
#: standardised activations and their squares) is about four times this, within L3.
CPU_CHUNK_BYTES = 1 << 21
#: On CPU, probabilities and weights are computed in blocks of rows of about this many
#: bytes per row-array, so that they stay in (L2) cache between operations.
BLOCK_BYTES = 1 << 19
#: Target size in bytes of one float64 chunk on an accelerator (bigger is better there).
GPU_CHUNK_BYTES = 1 << 26
#: Maximum number of step-halvings per unit (a safeguard; plain Newton rarely needs one).
MAX_HALVINGS = 30


@dataclass(frozen=True)
class LogisticFit:
    """Per-unit results of :func:`fit_logistic` (1-D numpy arrays, one entry per unit).

    Attributes:
        beta: Slope of ``label ~ 1 + activation``. ``+inf``/``-inf`` for a unit that
            (quasi-)separates the classes (the direction in which the likelihood keeps
            increasing), ``nan`` for a constant unit or when ``y`` has a single class.
        intercept: Intercept. For a constant unit, the intercept-only fit
            ``logit(mean(y))``; ``nan`` for a separated, non-constant unit.
        se: Standard error of ``beta`` from the observed information at the estimate.
        pvalue: Two-sided Wald p-value ``2 * norm.sf(|beta / se|)``; ``nan`` where the
            estimate does not exist (constant, separated or failed unit).
        accuracy: In-sample accuracy ``mean((p_hat > 0.5) == y)``. For a constant unit
            ``p_hat`` comes from the intercept-only model (majority class); for a separated
            unit from the limit of the diverging fit (1.0 under complete separation).
        converged: Newton-Raphson met the convergence criterion.
        separated: Perfect or quasi-perfect separation (or a single class in ``y``): the
            maximum-likelihood estimate does not exist.
        n_iter: Number of Newton iterations (gradient/information evaluations; each is
            followed by a step or a step-halving) after the closed-form first step from the
            intercept-only model; 0 for constant or separated units.
    """

    beta: UnitFloats
    intercept: UnitFloats
    se: UnitFloats
    pvalue: UnitFloats
    accuracy: UnitFloats
    converged: UnitBools
    separated: UnitBools
    n_iter: UnitInts

    @property
    def n_units(self) -> int:
        """Number of units fitted."""
        return int(self.beta.shape[0])


def fit_logistic(
    x: Acts,
    y: Labels,
    *,
    chunk_size: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-10,
    device: str | torch.device | None = None,
) -> LogisticFit:
    """Fit one logistic-regression probe ``label ~ 1 + activation`` per unit.

    All units are fitted at once by Newton-Raphson in float64, processed in chunks of
    columns; the only Python loops are over chunks and Newton iterations. Each unit's
    activation is centred and scaled internally (an exact reparametrisation), the first
    Newton step from the intercept-only model is taken in closed form, and every further
    step solves the unit's 2x2 system with the closed-form inverse. A unit has converged
    when its Newton step changes no (standardised) parameter by more than ``tol`` (the
    criterion of ``statsmodels``' Newton solver). Standard errors come from the observed
    information, as in ``statsmodels``.

    Separation is detected exactly, before iterating: with an intercept and one regressor
    the MLE fails to exist iff ``max(x | y=0) <= min(x | y=1)`` or
    ``max(x | y=1) <= min(x | y=0)`` (or ``y`` has a single class). Such units are
    flagged ``separated`` and get ``pvalue`` NaN instead of the huge slope and p close to 1
    that an iterative solver returns when it gives up. Constant units get ``beta`` NaN.

    Args:
        x: Activations, shape ``[samples, units]``; numpy array or torch tensor of any
            float dtype (converted to float64 one chunk at a time). Must be finite.
        y: Binary labels (0/1, bool, int or float), shape ``[samples]``.
        chunk_size: Number of units per chunk. Default: about 2 MiB of float64
            activations per chunk on CPU (``2**21 / (8 * samples)`` units), 64 MiB on
            an accelerator.
        max_iter: Maximum number of Newton iterations per unit (see ``n_iter``).
        tol: Convergence tolerance on the change of the standardised parameters.
        device: Torch device to compute on. Default: the device of ``x`` if it is a
            tensor, else CPU. On CPU, chunks are fitted by ``torch.get_num_threads()``
            worker threads, each running single-threaded torch operations (torch's
            thread setting is set to 1 for the duration of the call and then restored):
            per-operation intra-op parallelism gains little on chunk-sized operations
            and stalls badly when the machine is busy.

    Returns:
        A :class:`LogisticFit` of 1-D numpy arrays with one entry per unit.

    Raises:
        ValueError: If shapes do not match, ``y`` is not binary or ``x`` is not finite.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, size=400)
        >>> x = rng.normal(size=(400, 3)) * [1.0, 1.0, 0.0] + [0.0, 1.0, 0.0] * y[:, None]
        >>> fit = fit_logistic(x, y)
        >>> bool(fit.pvalue[1] < 1e-10), bool(fit.converged[2])  # unit 2 is constant
        (True, False)
    """
    xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if device is None:
        dev = xt.device
    else:
        dev = torch.device(device)
    if xt.ndim != 2:
        raise ValueError(f"x must have shape [samples, units], got {tuple(xt.shape)}")
    if not (xt.is_floating_point() or xt.dtype in (torch.int32, torch.int64, torch.bool)):
        raise ValueError(f"x must be a float array, got dtype {xt.dtype}")
    n, m = xt.shape

    yt = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    yt = yt.detach().reshape(-1).to(device=dev, dtype=torch.float64)
    if yt.shape[0] != n:
        raise ValueError(f"y has {yt.shape[0]} samples but x has {n}")
    if n == 0:
        raise ValueError("need at least one sample")
    if not bool(((yt == 0) | (yt == 1)).all()):
        raise ValueError("y must contain only 0 and 1")
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")

    if chunk_size is None:
        target = CPU_CHUNK_BYTES if dev.type == "cpu" else GPU_CHUNK_BYTES
        chunk_size = max(1, target // (8 * n))
    chunk_size = int(max(1, min(chunk_size, max(m, 1))))

    out = {
        "beta": np.full(m, np.nan),
        "intercept": np.full(m, np.nan),
        "se": np.full(m, np.nan),
        "z": np.full(m, np.nan),
        "accuracy": np.full(m, np.nan),
        "converged": np.zeros(m, dtype=bool),
        "separated": np.zeros(m, dtype=bool),
        "n_iter": np.zeros(m, dtype=np.int64),
    }
    lab = _Labels(yt)
    # Put the positive samples first (the fit does not depend on the order of samples):
    # class-wise reductions and accuracies then work on views instead of masked copies.
    order = torch.argsort(yt, descending=True, stable=True).to(xt.device)
    rows = min(chunk_size, m)

    def fit_range(start: int, ws: _Workspace) -> None:
        stop = min(start + chunk_size, m)
        with torch.no_grad():
            xc = ws.xc[: stop - start]
            xc.copy_(xt[:, start:stop].detach().index_select(0, order).T)
            res = _fit_chunk(xc, ws, lab, max_iter=max_iter, tol=tol)
        for key, val in res.items():
            out[key][start:stop] = val.cpu().numpy()

    starts = range(0, m, chunk_size)
    if dev.type != "cpu":
        ws = _Workspace(rows, n, dev)
        for start in starts:
            fit_range(start, ws)
    else:
        # On CPU, chunks are spread over as many worker threads as torch may use, and
        # each runs single-threaded torch operations: coarse-grained parallelism, free
        # of the per-operation synchronisation that stalls on a busy machine.
        workers = max(1, min(torch.get_num_threads(), len(starts)))
        with _torch_threads(1):
            if workers == 1:
                ws = _Workspace(rows, n, dev)
                for start in starts:
                    fit_range(start, ws)
            else:
                pool: queue.SimpleQueue[_Workspace] = queue.SimpleQueue()
                for _ in range(workers):
                    pool.put(_Workspace(rows, n, dev))

                def task(start: int) -> None:
                    ws = pool.get()
                    try:
                        fit_range(start, ws)
                    finally:
                        pool.put(ws)

                with ThreadPoolExecutor(workers) as ex:
                    for fut in [ex.submit(task, start) for start in starts]:
                        fut.result()

    z = out.pop("z")
    with np.errstate(invalid="ignore"):
        pvalue = 2.0 * stats.norm.sf(np.abs(z))
    return LogisticFit(pvalue=pvalue, **out)


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


class _Labels:
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
        self.majority_acc = self.ybar if self.ybar > 0.5 else 1.0 - self.ybar


class _Workspace:
    """Buffers reused by every chunk (allocated once, so they stay warm in cache)."""

    def __init__(self, rows: int, n: int, dev: torch.device) -> None:
        f64 = dict(dtype=torch.float64, device=dev)
        self.xc = torch.empty(rows, n, **f64)  # activations, float64, positives first
        self.basis = torch.empty(rows, 3, n, **f64)  # (1, xs, xs^2), xs standardised
        self.basis[:, 0] = 1.0
        block = BLOCK_BYTES // (8 * n) if dev.type == "cpu" else rows
        self.block = max(1, min(rows, block))
        self.pw = torch.empty(self.block, 2, n, **f64)  # probabilities and IRLS weights
        self.sums = torch.empty(rows, 2, 3, **f64)


def _fit_chunk(
    xc: Float[torch.Tensor, "units samples"],
    ws: _Workspace,
    lab: _Labels,
    *,
    max_iter: int,
    tol: float,
) -> dict[str, torch.Tensor]:
    """Fit all units of one chunk (``xc``: float64, units-major, positives first)."""
    c, n = xc.shape
    n1 = lab.n1
    dev = xc.device

    # --- exact (quasi-)separation check: min/max of x within each class ----------------
    nan = torch.full((c,), math.nan, dtype=torch.float64, device=dev)
    beta, intercept, accuracy = nan.clone(), nan.clone(), nan.clone()
    if lab.single_class:
        xmin, xmax = xc.amin(1), xc.amax(1)
        constant = xmax == xmin
        separated = torch.ones(c, dtype=torch.bool, device=dev)
        accuracy[:] = 1.0
    else:
        x1, x0 = xc[:, :n1], xc[:, n1:]
        min1, max1, min0, max0 = x1.amin(1), x1.amax(1), x0.amin(1), x0.amax(1)
        xmin, xmax = torch.minimum(min1, min0), torch.maximum(max1, max0)
        constant = xmax == xmin
        sep_pos = (max0 <= min1) & ~constant  # slope -> +inf
        sep_neg = (max1 <= min0) & ~constant  # slope -> -inf
        separated = sep_pos | sep_neg
        if bool(separated.any()):
            # Limit of the diverging fit: points strictly on either side of the boundary
            # are classified correctly; points tied at the boundary get p_hat equal to
            # their share of positives.
            sidx = separated.nonzero().squeeze(1)
            bound = torch.where(sep_pos[sidx], max0[sidx], max1[sidx])
            tied = xc[sidx] == bound[:, None]
            n1t, n0t = tied[:, :n1].sum(1), tied[:, n1:].sum(1)
            errors = torch.where(n1t > n0t, n0t, n1t)
            accuracy[sidx] = 1.0 - errors.to(torch.float64) / n
            inf = torch.full_like(bound, math.inf)
            beta[sidx] = torch.where(sep_pos[sidx], inf, -inf)
    if not bool((torch.isfinite(xmin) & torch.isfinite(xmax)).all()):
        raise ValueError("x contains NaN or infinite values")

    accuracy[constant] = 1.0 if lab.single_class else lab.majority_acc
    intercept[constant] = lab.logit_ybar
    res = {
        "beta": beta,
        "intercept": intercept,
        "se": nan.clone(),
        "z": nan.clone(),
        "accuracy": accuracy,
        "converged": torch.zeros(c, dtype=torch.bool, device=dev),
        "separated": separated,
        "n_iter": torch.zeros(c, dtype=torch.int64, device=dev),
    }

    # --- Newton-Raphson on the remaining units -------------------------------------------
    fit = ~(constant | separated)
    if bool(fit.any()):
        nt = _newton(xc, fit, ws, lab, max_iter=max_iter, tol=tol)
        for key, val in nt.items():
            res[key] = torch.where(fit, val, res[key])
    return res


def _newton(
    xc: Float[torch.Tensor, "units samples"],
    fit: Bool[torch.Tensor, " units"],
    ws: _Workspace,
    lab: _Labels,
    *,
    max_iter: int,
    tol: float,
) -> dict[str, torch.Tensor]:
    """Vectorised Newton-Raphson for the units (rows of ``xc``) where ``fit`` is set.

    The heavy per-sample work (probabilities, weights and the sums forming each unit's
    gradient and 2x2 information) runs in torch on ``xc.device``; the per-unit bookkeeping
    (closed-form 2x2 solves, step-halving, convergence) runs in numpy on tiny arrays,
    where the per-operation overhead is much lower.
    """
    c, n = xc.shape
    n1 = lab.n1
    dev = xc.device

    # Standardise: x = mean + sd * xs. The fit on xs is an exact reparametrisation,
    # better conditioned, and gives a meaningful scale for the convergence criterion.
    basis = ws.basis[:c]  # rows (1, xs, xs^2), each contiguous
    xs, xs2 = basis[:, 1], basis[:, 2]
    mean = xc.mean(1)
    torch.sub(xc, mean[:, None], out=xs)
    sd_t = torch.linalg.vector_norm(xs, dim=1).div_(math.sqrt(n))
    fit_t = fit & (sd_t > 0) & torch.isfinite(sd_t)
    sd_t = torch.where(fit_t, sd_t, 1.0)
    xs.div_(sd_t[:, None])
    torch.mul(xs, xs, out=xs2)
    syx_t = xs[:, :n1].sum(1)

    fit_np = fit_t.cpu().numpy()
    syx = syx_t.cpu().numpy()
    sy = float(n1)

    # Free first step from the intercept-only MLE (a0, 0): there p_i = ybar, so the
    # gradient is (0, sum y xs) and the information is about ybar (1 - ybar) diag(n, n).
    # State per unit: current point (a, b), last accepted point (a0, b0), last step
    # (da, db) and the directional derivative phi0 of the log-likelihood along it.
    a0, b0 = np.full(c, lab.logit_ybar), np.zeros(c)
    da, db = np.zeros(c), np.where(fit_np, syx, 0.0) / (lab.ybar * (1.0 - lab.ybar) * n)
    a, b = a0 + da, b0 + db
    phi0 = np.where(fit_np, syx, 0.0) * db
    halvings = np.zeros(c, dtype=np.int64)
    n_it = np.zeros(c, dtype=np.int64)

    # results, per unit of the chunk
    r_a, r_b = np.full(c, np.nan), np.full(c, np.nan)
    r_info = np.full((c, 3), np.nan)
    r_conv = np.zeros(c, dtype=bool)
    r_nit = np.zeros(c, dtype=np.int64)

    # Rows of `work` still being computed; `ids` maps them to units. Finished rows are
    # dropped lazily (once a quarter of them are done) to avoid copying at every step.
    work, ids, active = basis, np.arange(c), fit_np.copy()

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while active.any():
            if active.sum() <= 0.75 * active.shape[0]:
                work = work.index_select(0, torch.from_numpy(np.flatnonzero(active)).to(dev))
                state = (ids, syx, a, b, a0, b0, da, db, phi0, halvings, n_it)
                ids, syx, a, b, a0, b0, da, db, phi0, halvings, n_it = (t[active] for t in state)
                active = active[active]
            rows = active.shape[0]

            # ---- gradient and information at (a, b): torch, on the device ----
            # (in blocks of rows small enough for p and w to stay in L2 between operations)
            a_t = torch.from_numpy(a).to(dev)[:, None]
            b_t = torch.from_numpy(b).to(dev)[:, None]
            sums_t = ws.sums[:rows]
            for lo in range(0, rows, ws.block):
                hi = min(lo + ws.block, rows)
                pw = ws.pw[: hi - lo]
                p, w = pw[:, 0], pw[:, 1]
                torch.addcmul(a_t[lo:hi], work[lo:hi, 1], b_t[lo:hi], out=p)
                p.sigmoid_()
                torch.addcmul(p, p, p, value=-1.0, out=w)  # w = p (1 - p)
                # (p, w) . (1, xs, xs^2)
                torch.bmm(pw, work[lo:hi].transpose(1, 2), out=sums_t[lo:hi])
            sums = sums_t.cpu().numpy()
            g0 = sy - sums[:, 0, 0]  # sum (y - p)
            g1 = syx - sums[:, 0, 1]  # sum (y - p) xs
            h00, h01, h11 = sums[:, 1, 0], sums[:, 1, 1], sums[:, 1, 2]  # sum w (1, xs, xs^2)

            # ---- safeguard: halve the previous step if it overshot the line maximum ----
            # (for a quadratic log-likelihood, slope1 < -phi0 means the log-likelihood
            # fell; steps below the tolerance are left alone, being at the noise level)
            slope1 = g0 * da + g1 * db
            bad = active & (slope1 < -phi0) & (halvings < MAX_HALVINGS)
            bad &= np.maximum(np.abs(da), np.abs(db)) > tol

            # ---- Newton step: closed-form inverse of the 2x2 information ----
            det = h00 * h11 - h01 * h01
            s0 = (h11 * g0 - h01 * g1) / det
            s1 = (h00 * g1 - h01 * g0) / det
            ok = (det > 0) & np.isfinite(s0) & np.isfinite(s1)
            not_bad = active & ~bad
            take = not_bad & ok
            done = take & (np.maximum(np.abs(s0), np.abs(s1)) <= tol)
            fail = not_bad & ~ok

            a_half, b_half = a0 + 0.5 * da, b0 + 0.5 * db
            a0, b0 = np.where(take, a, a0), np.where(take, b, b0)
            a = np.where(take, a + s0, np.where(bad, a_half, a))
            b = np.where(take, b + s1, np.where(bad, b_half, b))
            da = np.where(take, s0, np.where(bad, 0.5 * da, da))
            db = np.where(take, s1, np.where(bad, 0.5 * db, db))
            phi0 = np.where(take, g0 * s0 + g1 * s1, np.where(bad, 0.5 * phi0, phi0))
            halvings += bad
            n_it += take | bad

            finish = done | fail | (active & (n_it >= max_iter))
            if finish.any():
                u = ids[finish]
                r_a[u] = np.where(fail[finish], np.nan, a[finish])
                r_b[u] = np.where(fail[finish], np.nan, b[finish])
                r_info[u] = sums[finish, 1]
                r_conv[u] = done[finish]
                r_nit[u] = n_it[finish]
                active &= ~finish

    # ---- in-sample accuracy at the final estimates: p_hat > 0.5  <=>  a + b xs > 0 ----
    a_t, b_t = torch.from_numpy(r_a).to(dev)[:, None], torch.from_numpy(r_b).to(dev)[:, None]
    correct = torch.empty(c, dtype=torch.int64, device=dev)
    for lo in range(0, c, ws.block):
        hi = min(lo + ws.block, c)
        eta = ws.pw[: hi - lo, 0]
        torch.addcmul(a_t[lo:hi], xs[lo:hi], b_t[lo:hi], out=eta)
        above = eta > 0
        correct[lo:hi] = above[:, :n1].sum(1) + (n - n1) - above[:, n1:].sum(1)
    r_acc = correct.cpu().numpy() / n

    a, b = r_a, r_b
    h00, h01, h11 = r_info[:, 0], r_info[:, 1], r_info[:, 2]
    sd, mu = sd_t.cpu().numpy(), mean.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        se_s = np.sqrt(h00 / (h00 * h11 - h01 * h01))  # inverse information, slope entry
        good = fit_t.cpu().numpy() & np.isfinite(a) & np.isfinite(b) & np.isfinite(se_s)
        beta = np.where(good, b / sd, np.nan)
        res = {
            "beta": beta,
            "intercept": np.where(good, a - beta * mu, np.nan),
            "se": np.where(good, se_s / sd, np.nan),
            "z": np.where(good, b / se_s, np.nan),
            "accuracy": np.where(good, r_acc, np.nan),
            "converged": r_conv & good,
            "n_iter": r_nit,
        }
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in res.items()}
