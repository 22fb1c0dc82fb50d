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
import threading
from collections.abc import Callable, Iterator
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
#: bytes per row-array, so that they stay in the L2 cache between operations.
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
    dev = xt.device if device is None else torch.device(device)
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
    # Put the positive samples first (the fit does not depend on the order of samples):
    # class-wise reductions and accuracies then work on views instead of masked copies.
    order = torch.argsort(yt, descending=True, stable=True).to(xt.device)
    starts = iter(range(0, m, chunk_size))
    lock = threading.Lock()

    def next_chunk() -> tuple[int, int] | None:
        with lock:
            start = next(starts, None)
        return None if start is None else (start, min(start + chunk_size, m))

    def work() -> None:
        with torch.no_grad():
            _Worker(xt, order, _Labels(yt), out, chunk_size, max_iter, tol, dev).run(next_chunk)

    if dev.type != "cpu":
        work()
    else:
        # On CPU, chunks are spread over as many worker threads as torch may use, and
        # each runs single-threaded torch operations: coarse-grained parallelism, free
        # of the per-operation synchronisation that stalls on a busy machine.
        workers = max(1, min(torch.get_num_threads(), -(-m // chunk_size)))
        with _torch_threads(1):
            if workers == 1:
                work()
            else:
                with ThreadPoolExecutor(workers) as ex:
                    for fut in [ex.submit(work) for _ in range(workers)]:
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
    """Label-derived quantities (samples sorted positives first)."""

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


#: Per-unit Newton state kept in numpy (one entry per row of the pool): unit index, sum of
#: y * xs, mean and sd of the unit's activation, current point (a, b), last accepted point
#: (a0, b0), last step (da, db), directional derivative phi0 of the log-likelihood along
#: it, number of halvings and of iterations.
_STATE = ("ids", "syx", "mu", "sd", "a", "b", "a0", "b0", "da", "db", "phi0", "halv", "nit")


class _Worker:
    """Fits chunks of units with a vectorised Newton-Raphson.

    Units being iterated live in a pool of rows ``(1, xs, xs^2)`` (``xs``: the unit's
    standardised activations). New chunks are loaded whenever fewer than ``chunk_size``
    units are still iterating, so that the slow units of one chunk are iterated together
    with the next chunk instead of on their own. The heavy per-sample work runs in torch
    on ``dev``; the per-unit bookkeeping (closed-form 2x2 solves, step-halving,
    convergence) runs in numpy, where the per-operation overhead on tiny arrays is lower.
    """

    def __init__(
        self,
        xt: torch.Tensor,
        order: torch.Tensor,
        lab: _Labels,
        out: dict[str, np.ndarray],
        chunk_size: int,
        max_iter: int,
        tol: float,
        dev: torch.device,
    ) -> None:
        self.xt, self.order, self.lab, self.out = xt, order, lab, out
        self.chunk_size, self.max_iter, self.tol, self.dev = chunk_size, max_iter, tol, dev
        n, cap = lab.n, 2 * chunk_size
        f64 = dict(dtype=torch.float64, device=dev)
        self.xc = torch.empty(chunk_size, n, **f64)  # a chunk in float64, positives first
        self.pools = (torch.empty(cap, 3, n, **f64), torch.empty(cap, 3, n, **f64))
        for pool in self.pools:
            pool[:, 0] = 1.0
        self.cur = 0  # which of the two pool buffers is in use (the other: for compaction)
        self.rows = 0
        block = BLOCK_BYTES // (8 * n) if dev.type == "cpu" else cap
        self.block = max(1, min(cap, block))
        self.pw = torch.empty(self.block, 2, n, **f64)  # probabilities and IRLS weights
        self.sums = torch.empty(cap, 2, 3, **f64)
        self.st = {k: np.empty(0) for k in _STATE}
        self.active = np.zeros(0, dtype=bool)

    # ------------------------------------------------------------------------------------
    def run(self, next_chunk: Callable[[], tuple[int, int] | None]) -> None:
        """Fit chunks from ``next_chunk`` until there are none left."""
        exhausted = False
        while True:
            while not exhausted and self.active.sum() < self.chunk_size:
                rng = next_chunk()
                if rng is None:
                    exhausted = True
                else:
                    self._compact()
                    self._load(*rng)
            n_active = int(self.active.sum())
            if n_active == 0:
                if exhausted:
                    return
                continue
            if n_active <= 0.75 * self.rows:
                self._compact()
            self._iterate()

    # ------------------------------------------------------------------------------------
    def _load(self, start: int, stop: int) -> None:
        """Separation/constant checks for a chunk; its other units join the pool."""
        lab, out, dev = self.lab, self.out, self.dev
        n, n1 = lab.n, lab.n1
        c = stop - start
        xc = self.xc[:c]
        xc.copy_(self.xt[:, start:stop].detach().index_select(0, self.order).T)

        # exact (quasi-)separation check: min/max of x within each class
        if lab.single_class:
            xmin, xmax = xc.amin(1), xc.amax(1)
            constant = xmax == xmin
            separated = torch.ones(c, dtype=torch.bool, device=dev)
        else:
            min1, max1 = xc[:, :n1].amin(1), xc[:, :n1].amax(1)
            min0, max0 = xc[:, n1:].amin(1), xc[:, n1:].amax(1)
            xmin, xmax = torch.minimum(min1, min0), torch.maximum(max1, max0)
            constant = xmax == xmin
            sep_pos = (max0 <= min1) & ~constant  # slope -> +inf
            sep_neg = (max1 <= min0) & ~constant  # slope -> -inf
            separated = sep_pos | sep_neg
        if not bool((torch.isfinite(xmin) & torch.isfinite(xmax)).all()):
            raise ValueError("x contains NaN or infinite values")

        sl = slice(start, stop)
        const_np = constant.cpu().numpy()
        sep_np = separated.cpu().numpy()
        out["separated"][sl] = sep_np
        out["accuracy"][sl][const_np] = 1.0 if lab.single_class else lab.majority_acc
        out["intercept"][sl][const_np] = lab.logit_ybar
        if lab.single_class:
            out["accuracy"][sl] = 1.0
        elif sep_np.any():
            # Limit of the diverging fit: points strictly on either side of the boundary
            # are classified correctly; points tied at the boundary get p_hat equal to
            # their share of positives.
            sidx = separated.nonzero().squeeze(1)
            bound = torch.where(sep_pos[sidx], max0[sidx], max1[sidx])
            tied = xc[sidx] == bound[:, None]
            n1t, n0t = tied[:, :n1].sum(1), tied[:, n1:].sum(1)
            errors = torch.where(n1t > n0t, n0t, n1t).cpu().numpy()
            pos = sep_pos[sidx].cpu().numpy()
            out["accuracy"][sl][sep_np] = 1.0 - errors / n
            out["beta"][sl][sep_np] = np.where(pos, np.inf, -np.inf)

        # the other units: standardise into the pool, x = mean + sd * xs (an exact
        # reparametrisation, better conditioned; the convergence criterion uses its scale)
        fit_np = ~(const_np | sep_np)
        k = int(fit_np.sum())
        if k == 0:
            return
        src = xc if k == c else xc[torch.from_numpy(fit_np).to(dev)]
        dst = self.pools[self.cur][self.rows : self.rows + k]
        xs, xs2 = dst[:, 1], dst[:, 2]
        mean = src.mean(1)
        torch.sub(src, mean[:, None], out=xs)
        torch.mul(xs, xs, out=xs2)
        sd = xs2.mean(1).sqrt_()
        usable = (sd > 0) & torch.isfinite(sd)  # else: left as failed (NaN results)
        sd = torch.where(usable, sd, 1.0)
        xs.div_(sd[:, None])
        torch.mul(xs, xs, out=xs2)
        syx = xs[:, :n1].sum(1).cpu().numpy()
        ok = usable.cpu().numpy()
        syx = np.where(ok, syx, 0.0)

        # Free first step from the intercept-only MLE (a0, 0): there p_i = ybar, so the
        # gradient is (0, sum y xs) and the information is about ybar (1 - ybar) diag(n, n).
        db = syx / (lab.ybar * (1.0 - lab.ybar) * n)
        zeros = np.zeros(k)
        new = {
            "ids": start + np.flatnonzero(fit_np).astype(np.float64),
            "syx": syx,
            "mu": mean.cpu().numpy(),
            "sd": sd.cpu().numpy(),
            "a": np.full(k, lab.logit_ybar),
            "b": db,
            "a0": np.full(k, lab.logit_ybar),
            "b0": zeros,
            "da": zeros,
            "db": db,
            "phi0": syx * db,
            "halv": zeros,
            "nit": zeros,
        }
        for key, val in new.items():
            self.st[key] = np.concatenate([self.st[key], val])
        self.active = np.concatenate([self.active, ok])
        self.rows += k

    def _compact(self) -> None:
        """Drop the rows of finished units (copy the others into the spare buffer)."""
        keep = np.flatnonzero(self.active)
        if keep.size == self.rows:
            return
        src, dst = self.pools[self.cur], self.pools[1 - self.cur]
        if keep.size:
            idx = torch.from_numpy(keep).to(self.dev)
            torch.index_select(src[: self.rows], 0, idx, out=dst[: keep.size])
        self.cur, self.rows = 1 - self.cur, int(keep.size)
        self.st = {k: v[keep] for k, v in self.st.items()}
        self.active = self.active[keep]

    def _iterate(self) -> None:
        """One Newton iteration for all rows of the pool."""
        st, rows, dev, tol = self.st, self.rows, self.dev, self.tol
        work = self.pools[self.cur][:rows]
        active = self.active

        # ---- gradient and information at (a, b): torch, on the device ----
        # (in blocks of rows small enough for p and w to stay in L2 between operations)
        a_t = torch.from_numpy(st["a"]).to(dev)[:, None]
        b_t = torch.from_numpy(st["b"]).to(dev)[:, None]
        sums_t = self.sums[:rows]
        for lo in range(0, rows, self.block):
            hi = min(lo + self.block, rows)
            pw = self.pw[: hi - lo]
            p, w = pw[:, 0], pw[:, 1]
            torch.addcmul(a_t[lo:hi], work[lo:hi, 1], b_t[lo:hi], out=p)
            p.sigmoid_()
            torch.addcmul(p, p, p, value=-1.0, out=w)  # w = p (1 - p)
            torch.bmm(pw, work[lo:hi].transpose(1, 2), out=sums_t[lo:hi])  # (p,w).(1,xs,xs^2)
        sums = sums_t.cpu().numpy()

        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            a, b, a0, b0, da, db = (st[k] for k in ("a", "b", "a0", "b0", "da", "db"))
            g0 = self.lab.n1 - sums[:, 0, 0]  # sum (y - p)
            g1 = st["syx"] - sums[:, 0, 1]  # sum (y - p) xs
            h00, h01, h11 = sums[:, 1, 0], sums[:, 1, 1], sums[:, 1, 2]  # sum w (1, xs, xs^2)

            # ---- safeguard: halve the previous step if it overshot the line maximum ----
            # (for a quadratic log-likelihood, slope1 < -phi0 means the log-likelihood
            # fell; steps below the tolerance are left alone, being at the noise level)
            bad = active & (g0 * da + g1 * db < -st["phi0"]) & (st["halv"] < MAX_HALVINGS)
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

            if bad.any():
                st["a"] = np.where(bad, a0 + 0.5 * da, a)
                st["b"] = np.where(bad, b0 + 0.5 * db, b)
                st["da"] = np.where(bad, 0.5 * da, da)
                st["db"] = np.where(bad, 0.5 * db, db)
                st["phi0"] = np.where(bad, 0.5 * st["phi0"], st["phi0"])
                st["halv"] = st["halv"] + bad
            st["a0"], st["b0"] = np.where(take, a, a0), np.where(take, b, b0)
            st["a"] = np.where(take, a + s0, st["a"])
            st["b"] = np.where(take, b + s1, st["b"])
            st["da"], st["db"] = np.where(take, s0, st["da"]), np.where(take, s1, st["db"])
            st["phi0"] = np.where(take, g0 * s0 + g1 * s1, st["phi0"])
            st["nit"] = st["nit"] + (take | bad)

        finish = done | fail | (active & (st["nit"] >= self.max_iter))
        if finish.any():
            self._finish(np.flatnonzero(finish), done, fail, sums[:, 1])
            self.active = active & ~finish

    def _finish(
        self, idx: np.ndarray, done: np.ndarray, fail: np.ndarray, info: np.ndarray
    ) -> None:
        """Write the results of the units in pool rows ``idx``."""
        st, lab, out = self.st, self.lab, self.out
        n, n1 = lab.n, lab.n1
        a = np.where(fail[idx], np.nan, st["a"][idx])
        b = np.where(fail[idx], np.nan, st["b"][idx])
        # in-sample accuracy at the final estimates: p_hat > 0.5  <=>  a + b xs > 0
        rows = torch.from_numpy(idx).to(self.dev)
        xs = self.pools[self.cur][:, 1].index_select(0, rows)
        a_t, b_t = torch.from_numpy(a).to(self.dev), torch.from_numpy(b).to(self.dev)
        eta = torch.addcmul(a_t[:, None], xs, b_t[:, None])
        above = eta > 0
        correct = above[:, :n1].sum(1) + (n - n1) - above[:, n1:].sum(1)

        h00, h01, h11 = info[idx, 0], info[idx, 1], info[idx, 2]
        sd, mu = st["sd"][idx], st["mu"][idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            se_s = np.sqrt(h00 / (h00 * h11 - h01 * h01))  # inverse information, slope
            good = np.isfinite(a) & np.isfinite(b) & np.isfinite(se_s)
            beta = np.where(good, b / sd, np.nan)
            u = st["ids"][idx].astype(np.int64)
            out["beta"][u] = beta
            out["intercept"][u] = np.where(good, a - beta * mu, np.nan)
            out["se"][u] = np.where(good, se_s / sd, np.nan)
            out["z"][u] = np.where(good, b / se_s, np.nan)
            out["accuracy"][u] = np.where(good, correct.cpu().numpy() / n, np.nan)
            out["converged"][u] = done[idx] & good
            out["n_iter"][u] = st["nit"][idx].astype(np.int64)
