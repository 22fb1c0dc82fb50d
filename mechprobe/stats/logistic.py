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
#: bookkeeping runs once per chunk and pass, so chunks are large; the passes are bound by
#: computing the sigmoid, not by memory traffic.
CPU_CHUNK_BYTES = 1 << 23
#: On CPU, probabilities and weights are computed in blocks of rows of about this many
#: bytes per row-array, so that they stay in cache between operations (fewer, larger
#: operations also mean less Python overhead, which the worker threads serialise on).
BLOCK_BYTES = 1 << 20
#: Target size in bytes of one float64 chunk on an accelerator (bigger is better there).
GPU_CHUNK_BYTES = 1 << 26
#: Maximum number of step-halvings per unit (a safeguard; plain Newton rarely needs one).
MAX_HALVINGS = 30
#: Warm-up: at most this many float32 Newton passes before the float64 passes.
F32_PASSES = 3
#: A unit leaves the float32 warm-up once its float32 Newton step is at most this large
#: (its remaining distance to the optimum is then about this squared, or float32 noise).
F32_STEP = 1e-3
#: The float64 convergence test uses the analytic next Newton step (see ``_newton``) only
#: after a Newton step at most this large (its error is of the order of this cubed).
PREDICT_STEP = 1e-4
#: A float64 pass re-centres a unit's standardised activations at their weighted mean
#: when its square exceeds this many times their weighted variance (see ``_newton64``).
RECENTRE = 1e4


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
        n_iter: Number of Newton iterations, i.e. passes over the unit's data (gradient/
            information evaluations, float32 warm-up passes included; each is followed by
            a step or a step-halving) after the closed-form first step from the
            intercept-only model; 0 for constant or separated units. The final step of a
            unit that converges is usually computed analytically (see
            :func:`fit_logistic`) and not counted.
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

    All units are fitted at once by Newton-Raphson, processed in chunks of columns; the
    only Python loops are over chunks and Newton iterations. Each unit's activation is
    centred and scaled internally (an exact reparametrisation), the first Newton step
    from the intercept-only model is taken in closed form, and every further step solves
    the unit's 2x2 system with the closed-form inverse. Up to ``F32_PASSES`` cheap float32
    passes warm the estimate up (to about 1e-3 in the standardised parameters, or the
    float32 noise level); the estimate, its convergence and its standard error then come
    from float64 passes only. A unit has converged when its Newton step changes no
    (standardised) parameter by more than ``tol`` (the criterion of ``statsmodels``'
    Newton solver). That last step is usually computed without another pass over the
    data: each float64 pass also gives the third derivatives of the log-likelihood, from
    which the gradient and information after a small step ``s`` follow by Taylor
    expansion up to a remainder of order ``|s|^3`` (below 1e-12 where it is used).
    Standard errors come from the observed information at the estimate, as in
    ``statsmodels``.

    Separation is detected exactly, before iterating: with an intercept and one regressor
    the MLE fails to exist iff ``max(x | y=0) <= min(x | y=1)`` or
    ``max(x | y=1) <= min(x | y=0)`` (or ``y`` has a single class). Such units are
    flagged ``separated`` and get ``pvalue`` NaN instead of the huge slope and p close to 1
    that an iterative solver returns when it gives up. Constant units get ``beta`` NaN.

    Args:
        x: Activations, shape ``[samples, units]``; numpy array or torch tensor of any
            float dtype (converted to float64 one chunk at a time). Must be finite.
        y: Binary labels (0/1, bool, int or float), shape ``[samples]``.
        chunk_size: Number of units per chunk. Default: about 8 MiB of float64
            activations per chunk on CPU (``2**23 / (8 * samples)`` units, fewer when
            that leaves less than about 4 chunks per worker thread), 64 MiB on an
            accelerator.
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
        if dev.type == "cpu":  # at least about 4 chunks per worker thread
            chunk_size = min(chunk_size, max(64, -(-m // (4 * torch.get_num_threads()))))
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
        ws = _Workspace(rows, n, lab.n1, dev)
        for start in starts:
            fit_range(start, ws)
    else:
        # On CPU, chunks are spread over as many worker threads as torch may use, and
        # each runs single-threaded torch operations: coarse-grained parallelism, free
        # of the per-operation synchronisation that stalls on a busy machine.
        workers = max(1, min(torch.get_num_threads(), len(starts)))
        with _torch_threads(1):
            if workers == 1:
                ws = _Workspace(rows, n, lab.n1, dev)
                for start in starts:
                    fit_range(start, ws)
            else:
                pool: queue.SimpleQueue[_Workspace] = queue.SimpleQueue()
                for _ in range(workers):
                    pool.put(_Workspace(rows, n, lab.n1, dev))

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
        # (count / n, rounded exactly as statsmodels' mean of the correct predictions)
        self.majority_acc = (self.n1 if self.ybar > 0.5 else self.n - self.n1) / self.n


class _Workspace:
    """Buffers reused by every chunk (allocated once, so they stay warm in cache)."""

    def __init__(self, rows: int, n: int, n1: int, dev: torch.device) -> None:
        f64 = dict(dtype=torch.float64, device=dev)
        f32 = dict(dtype=torch.float32, device=dev)
        self.cpu = dev.type == "cpu"
        # Per unit, rows (xs, xs^2) on CPU and (1, xs, xs^2) elsewhere (for the batched
        # matrix product), with xs standardised in place from the raw activations ``xc``;
        # and the same in float32 for the warm-up passes.
        k = 2 if self.cpu else 3
        self.basis = torch.empty(rows, k, n, **f64)
        self.basis32 = torch.empty(rows, k, n, **f32)
        if not self.cpu:
            self.basis[:, 0] = 1.0
        self.xc = self.basis[:, -2]  # activations, float64, positives first
        block = BLOCK_BYTES // (8 * n) if self.cpu else rows
        self.block = max(1, min(rows, block))
        # probabilities p, IRLS weights w = p (1 - p) and their derivative v = w (1 - 2 p)
        self.pwv = torch.empty(self.block, 3, n, **f64)
        self.pw32 = torch.empty(self.block, 2, n, **f32)
        self.tmp = torch.empty(self.block, n, **f64)
        self.sums = np.empty((rows, 9))  # see _pass
        if self.cpu:
            self.pwv_np, self.pw32_np, self.tmp_np = (
                t.numpy() for t in (self.pwv, self.pw32, self.tmp)
            )
            self.ones, self.ones32 = np.ones(n), np.ones(n, dtype=np.float32)
            self.sign_y = np.where(np.arange(n) < n1, 1.0, -1.0)  # +1 positives, -1 negatives
        else:
            self.sign_y_t = torch.where(torch.arange(n, device=dev) < n1, 1.0, -1.0).to(**f64)


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
            accuracy[sidx] = (n - errors).to(torch.float64) / n  # rounded as count / n
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

    Each activation is standardised (``x = mean + sd * xs``, an exact reparametrisation)
    and the fit starts with the closed-form Newton step from the intercept-only model. A
    few float32 Newton passes then bring every unit close to its optimum (the float32 sums
    are accurate to about 1e-6, far closer than needed for a starting point), and float64
    Newton passes finish the job: every result comes from float64 sums at float64
    iterates.

    A float64 pass at ``theta`` also yields the third derivatives of the log-likelihood,
    so the gradient and information at ``theta + s`` after the Newton step ``s`` follow
    by Taylor expansion (remainder of order ``|s|^3``). When ``|s| <= PREDICT_STEP``, the
    next Newton step ``s'`` is computed from them instead of by another pass over the
    data; the unit has converged when ``|s'| <= tol`` (the same criterion as an actual
    pass would apply, up to that remainder), its estimate is ``theta + s + s'`` and its
    information, for the standard errors, the expansion at that point.

    The heavy per-sample work (probabilities, weights and the sums forming each unit's
    gradient, information and third derivatives) runs in torch on ``xc.device`` (the sums
    as numpy row-wise dot products on CPU, a batched matrix product elsewhere); the
    per-unit bookkeeping (closed-form 2x2 solves, step-halving, convergence) runs in numpy
    on small arrays, where the per-operation overhead is much lower.
    """
    c, n = xc.shape
    n1 = lab.n1
    dev = xc.device

    # Standardise: x = mean + sd * xs. The fit on xs is an exact reparametrisation,
    # better conditioned, and gives a meaningful scale for the convergence criterion.
    basis = ws.basis[:c]  # rows ([1,] xs, xs^2), each contiguous
    xs, xs2 = basis[:, -2], basis[:, -1]  # xs is xc, standardised in place
    mean = xc.mean(1)
    xs.sub_(mean[:, None])
    sd_t = torch.linalg.vector_norm(xs, dim=1).div_(math.sqrt(n))
    fit_t = fit & (sd_t > 0) & torch.isfinite(sd_t)
    sd_t = torch.where(fit_t, sd_t, 1.0)
    xs.div_(sd_t[:, None])
    torch.mul(xs, xs, out=xs2)
    syx_t = xs[:, :n1].sum(1)

    fit_np = fit_t.cpu().numpy()
    syx = np.where(fit_np, syx_t.cpu().numpy(), 0.0)
    sy = float(n1)

    # Free first step from the intercept-only MLE (a0, 0): there p_i = ybar, so the
    # gradient is (0, sum y xs) and the information is about ybar (1 - ybar) diag(n, n).
    # State per unit: current point (a, b), last accepted point (a0, b0), last step
    # (da, db), the directional derivative phi0 of the log-likelihood along it, and the
    # number of passes.
    db = syx / (lab.ybar * (1.0 - lab.ybar) * n)
    st = {
        "a": np.full(c, lab.logit_ybar),
        "b": db.copy(),
        "a0": np.full(c, lab.logit_ybar),
        "b0": np.zeros(c),
        "da": np.zeros(c),
        "db": db,
        "phi0": syx * db,
        "n_it": np.zeros(c, dtype=np.int64),
    }

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # ---- warm-up: float32 Newton passes ------------------------------------------
        warm = min(F32_PASSES, max_iter - 1)
        if warm > 0:
            basis32 = ws.basis32[:c]
            basis32.copy_(basis)
            _warm_up(basis32, fit_np, syx, sy, st, ws, passes=warm, tol=tol)
        r = _newton64(basis, fit_np, syx, sy, st, ws, max_iter=max_iter, tol=tol)
    r_a, r_b, r_info, r_conv, r_nit = r

    # ---- in-sample accuracy at the final estimates: p_hat > 0.5  <=>  a + b xs > 0 ----
    fin = np.isfinite(r_a) & np.isfinite(r_b)
    r_acc = (_correct(xs, np.where(fin, r_a, 0.0), np.where(fin, r_b, 0.0), ws) + n - n1) / n

    a, b = r_a, r_b
    h00, h01, h11 = r_info[:, 0], r_info[:, 1], r_info[:, 2]
    sd, mu = sd_t.cpu().numpy(), mean.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        se_s = np.sqrt(h00 / (h00 * h11 - h01 * h01))  # inverse information, slope entry
        good = fit_np & np.isfinite(a) & np.isfinite(b) & np.isfinite(se_s)
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


def _newton_step(
    sums: Float[np.ndarray, "rows k"], sy: float, syx: Float[np.ndarray, " rows"]
) -> tuple[Float[np.ndarray, " rows"], ...]:
    """Gradient, information and Newton step from the sums of a pass.

    Returns ``g0, g1, h00, h01, h11, det, s0, s1``: gradient, information, its determinant
    and the Newton step (closed-form inverse of the 2x2 information).
    """
    g0 = sy - sums[:, 0]  # sum (y - p)
    g1 = syx - sums[:, 3]  # sum (y - p) xs
    h00, h01, h11 = sums[:, 1], sums[:, 4], sums[:, 6]  # sum w (1, xs, xs^2)
    det = h00 * h11 - h01 * h01
    s0 = (h11 * g0 - h01 * g1) / det
    s1 = (h00 * g1 - h01 * g0) / det
    return g0, g1, h00, h01, h11, det, s0, s1


def _warm_up(
    basis32: Float[torch.Tensor, "units basis samples"],
    fit: Bool[np.ndarray, " units"],
    syx: Float[np.ndarray, " units"],
    sy: float,
    st: dict[str, np.ndarray],
    ws: _Workspace,
    *,
    passes: int,
    tol: float,
) -> None:
    """Float32 Newton passes, updating the state ``st`` (see ``_newton``) in place.

    A unit leaves the warm-up after a step of at most ``F32_STEP``, or, with its state
    unchanged, when its last step overshot (the safeguard of ``_newton64``), its Newton
    step is not usable or did not shrink: the float64 passes take over from there.
    """
    dev = basis32.device
    keys = ("a", "b", "a0", "b0", "da", "db", "phi0")
    # rows of `work` still warming up; `ids` maps them to units (dropped lazily, as in
    # _newton64; rows not warming up just ride along)
    work, ids, active = basis32, np.arange(fit.size), fit.copy()
    loc = {k: st[k].copy() for k in keys}
    wsyx, last = syx, np.full(fit.size, np.inf)
    for _ in range(passes):
        n_active = int(active.sum())
        if not n_active:
            break
        if n_active <= 0.75 * active.size:
            keep = np.flatnonzero(active)
            work = work.index_select(0, torch.from_numpy(keep).to(dev))
            ids, wsyx, last = ids[keep], wsyx[keep], last[keep]
            loc = {k: v[keep] for k, v in loc.items()}
            active = np.ones(n_active, dtype=bool)
        a, b, a0, b0, da, db, phi0 = (loc[k] for k in keys)
        sums = _pass(work, a, b, ws, third=False)
        g0, g1, *_, det, s0, s1 = _newton_step(sums, sy, wsyx)
        step = np.maximum(np.abs(s0), np.abs(s1))
        bad = (g0 * da + g1 * db < -phi0) & (np.maximum(np.abs(da), np.abs(db)) > tol)
        take = active & ~bad & (det > 0) & np.isfinite(step) & (step < last)
        loc = {
            "a": np.where(take, a + s0, a),
            "b": np.where(take, b + s1, b),
            "a0": np.where(take, a, a0),
            "b0": np.where(take, b, b0),
            "da": np.where(take, s0, da),
            "db": np.where(take, s1, db),
            "phi0": np.where(take, g0 * s0 + g1 * s1, phi0),
        }
        u = ids[take]
        for k in keys:
            st[k][u] = loc[k][take]
        st["n_it"][ids[active]] += 1
        active = take & (step > F32_STEP)
        last = step


def _newton64(
    basis: Float[torch.Tensor, "units basis samples"],
    fit: Bool[np.ndarray, " units"],
    syx: Float[np.ndarray, " units"],
    sy: float,
    st: dict[str, np.ndarray],
    ws: _Workspace,
    *,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, ...]:
    """Safeguarded float64 Newton passes from the state ``st`` to convergence.

    See ``_newton``; ``st`` is not modified.

    Returns per unit the estimate ``(a, b)`` (NaN where the information became singular),
    the information ``(h00, h01, h11)`` there, the convergence flag and the pass count.
    """
    c = fit.shape[0]
    dev = basis.device
    a, b, a0, b0, da, db, phi0, n_it = (
        st[k] for k in ("a", "b", "a0", "b0", "da", "db", "phi0", "n_it")
    )
    halvings = np.zeros(c, dtype=np.int64)

    # results, per unit of the chunk
    r_a, r_b = np.full(c, np.nan), np.full(c, np.nan)
    r_info = np.full((c, 3), np.nan)
    r_conv = np.zeros(c, dtype=bool)
    r_nit = n_it.copy()
    n_it = n_it.copy()

    # Rows of `work` still being computed; `ids` maps them to units. Finished rows are
    # dropped lazily (once a quarter of them are done) to avoid copying at every step.
    work, ids, active = basis, np.arange(c), fit.copy()
    shift = np.zeros(c)  # per unit, xs was re-centred to xs - shift (see below)
    n_active = int(active.sum())
    recentre: tuple[np.ndarray, np.ndarray] | None = None
    while n_active:
        if n_active <= 0.75 * active.shape[0] or recentre is not None:
            keep = np.flatnonzero(active)
            work = work.index_select(0, torch.from_numpy(keep).to(dev))  # a copy
            state = (ids, syx, a, b, a0, b0, da, db, phi0, halvings, n_it)
            ids, syx, a, b, a0, b0, da, db, phi0, halvings, n_it = (t[keep] for t in state)
            active = np.ones(n_active, dtype=bool)
        if recentre is not None:
            # Re-centre xs at the weighted mean m = sum w xs / sum w of the units where
            # it lies far out in the tails (an outlier dominates the mean and sd): their
            # information, sum w * (1, xs, xs^2), would lose the precision of its
            # determinant to cancellation. The point (a, b) and the last step are mapped
            # to the new coordinates (eta = a + b xs is unchanged); the pass is repeated.
            far, mw = recentre
            rows = np.flatnonzero(far[keep])
            m = mw[keep][rows]
            r_t = torch.from_numpy(rows).to(dev)
            xs_r = work[r_t, -2] - torch.from_numpy(m).to(dev)[:, None]
            work[r_t, -2] = xs_r
            work[r_t, -1] = xs_r * xs_r
            u = ids[rows]
            shift[u] += m
            syx[rows] -= m * sy
            a[rows] += b[rows] * m
            a0[rows] += b0[rows] * m
            da[rows] += db[rows] * m
            recentre = None
        sums = _pass(work, a, b, ws, third=True)
        g0, g1, h00, h01, h11, det, s0, s1 = _newton_step(sums, sy, syx)
        mw = h01 / h00
        far = active & (mw * mw > RECENTRE * (h11 / h00 - mw * mw)) & (shift[ids] == 0)
        if far.any():
            recentre = (far, mw)
            continue
        ok = (det > 0) & np.isfinite(s0) & np.isfinite(s1)

        # ---- safeguard: halve the previous step if it overshot the line maximum ----
        # (for a quadratic log-likelihood, slope1 < -phi0 means the log-likelihood
        # fell; steps below the tolerance are left alone, being at the noise level)
        bad = (g0 * da + g1 * db < -phi0) & active
        bad &= np.maximum(np.abs(da), np.abs(db)) > tol
        if bad.any() or not ok[active].all():
            bad &= halvings < MAX_HALVINGS
            not_bad = active & ~bad
            take = not_bad & ok
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
        else:  # the common case: every active unit takes its full Newton step
            take, fail = active, None
            a0, b0, da, db = a, b, s0, s1
            a, b = a + s0, b + s1
            phi0 = g0 * s0 + g1 * s1
            n_it += 1

        # ---- the next Newton step, from the Taylor expansion at the pass's point ----
        # With v = w (1 - 2 p) and V_k = sum v xs^k, the information at (a0, b0) + s is
        # H + s0 V[i+j] + s1 V[i+j+1] and the gradient there -1/2 sum v x_i (s . x)^2.
        step = np.maximum(np.abs(s0), np.abs(s1))
        v0, v1, v2, v3 = sums[:, 2], sums[:, 5], sums[:, 7], sums[:, 8]
        e00 = h00 + s0 * v0 + s1 * v1
        e01 = h01 + s0 * v1 + s1 * v2
        e11 = h11 + s0 * v2 + s1 * v3
        q0 = -0.5 * (s0 * s0 * v0 + 2.0 * s0 * s1 * v1 + s1 * s1 * v2)
        q1 = -0.5 * (s0 * s0 * v1 + 2.0 * s0 * s1 * v2 + s1 * s1 * v3)
        det2 = e00 * e11 - e01 * e01
        t0 = (e11 * q0 - e01 * q1) / det2
        t1 = (e00 * q1 - e01 * q0) / det2
        done = take & (step <= tol)  # converged by an actual pass (the step is tiny)
        predicted = take & ~done & (step <= PREDICT_STEP) & (det2 > 0)
        predicted &= np.maximum(np.abs(t0), np.abs(t1)) <= tol
        if predicted.any():
            a = np.where(predicted, a + t0, a)
            b = np.where(predicted, b + t1, b)
            e00 = np.where(predicted, e00 + t0 * v0 + t1 * v1, e00)
            e01 = np.where(predicted, e01 + t0 * v1 + t1 * v2, e01)
            e11 = np.where(predicted, e11 + t0 * v2 + t1 * v3, e11)
            done |= predicted

        finish = done | (active & (n_it >= max_iter))
        if fail is not None:
            finish |= fail
        if finish.any():
            u = ids[finish]
            r_a[u], r_b[u] = a[finish], b[finish]
            if fail is not None:
                r_a[u[fail[finish]]] = r_b[u[fail[finish]]] = np.nan
            # information at the final point where a step was taken, else at the pass's
            exp = take[finish]
            r_info[u] = np.where(
                exp[:, None],
                np.stack([e00[finish], e01[finish], e11[finish]], axis=1),
                np.stack([h00[finish], h01[finish], h11[finish]], axis=1),
            )
            r_conv[u] = done[finish]
            r_nit[u] = n_it[finish]
            active &= ~finish
            n_active = int(active.sum())
    r_a -= r_b * shift  # back to the common centring of xs
    return r_a, r_b, r_info, r_conv, r_nit


def _pass(
    work: Float[torch.Tensor, "rows basis samples"],
    a: Float[np.ndarray, " rows"],
    b: Float[np.ndarray, " rows"],
    ws: _Workspace,
    *,
    third: bool,
) -> Float[np.ndarray, "rows k"]:
    """One Newton pass over the rows of ``work`` (float64 or float32).

    For every row, ``p = sigmoid(a + b xs)``, ``w = p (1 - p)`` and, with ``third``,
    ``v = w (1 - 2 p)`` (the derivative of ``w`` along ``a + b xs``); returns the sums
    ``(p, w, v) . 1``, ``(p, w, v) . xs``, ``(w, v) . xs^2`` and ``v . xs^3`` as the 9
    columns of a float64 numpy array (those of ``v`` only with ``third``).

    ``work`` holds rows ``(xs, xs^2)`` on CPU and ``(1, xs, xs^2)`` elsewhere. The rows are
    processed in blocks small enough for the per-sample arrays to stay in cache.
    """
    rows = work.shape[0]
    dev, dt = work.device, work.dtype
    f32 = dt == torch.float32
    a_t = torch.from_numpy(a).to(device=dev, dtype=dt)[:, None]
    b_t = torch.from_numpy(b).to(device=dev, dtype=dt)[:, None]
    xs, xs2 = work[:, -2], work[:, -1]
    sums = ws.sums[:rows]
    pwv_t = ws.pw32 if f32 else ws.pwv
    if ws.cpu:
        work_np = work.numpy()
        pwv_all = ws.pw32_np if f32 else ws.pwv_np
        ones = ws.ones32 if f32 else ws.ones
    for lo in range(0, rows, ws.block):
        hi = min(lo + ws.block, rows)
        pwv = pwv_t[: hi - lo]
        p, w = pwv[:, 0], pwv[:, 1]
        torch.mul(xs[lo:hi], b_t[lo:hi], out=p)
        p.add_(a_t[lo:hi]).sigmoid_()
        torch.addcmul(p, p, p, value=-1.0, out=w)  # w = p (1 - p)
        k = 2
        if third:
            k = 3
            v, vx = pwv[:, 2], ws.tmp[: hi - lo]
            torch.addcmul(w, p, w, value=-2.0, out=v)  # v = w (1 - 2 p)
            torch.mul(v, xs[lo:hi], out=vx)
        s = sums[lo:hi]
        if ws.cpu:
            pw_np = pwv_all[: hi - lo, :k]
            np.vecdot(pw_np, ones, out=s[:, 0:k])
            np.vecdot(pw_np, work_np[lo:hi, -2:-1], out=s[:, 3 : 3 + k])
            np.vecdot(pw_np[:, 1:], work_np[lo:hi, -1:], out=s[:, 6 : 5 + k])
            if third:
                np.vecdot(ws.tmp_np[: hi - lo], work_np[lo:hi, -1], out=s[:, 8])
        else:
            # (p, w[, v]) . (1, xs, xs^2) as a batched matrix product
            m = torch.bmm(pwv[:, :k], work[lo:hi].transpose(1, 2)).double().cpu().numpy()
            s[:, 0:k], s[:, 3 : 3 + k], s[:, 6 : 5 + k] = m[:, :, 0], m[:, :, 1], m[:, 1:, 2]
            if third:
                s[:, 8] = torch.linalg.vecdot(vx, xs2[lo:hi]).cpu().numpy()
    return sums


def _correct(
    xs: Float[torch.Tensor, "units samples"],
    a: Float[np.ndarray, " units"],
    b: Float[np.ndarray, " units"],
    ws: _Workspace,
) -> Int[np.ndarray, " units"]:
    """Correct classifications minus the number of negatives, for every row of ``xs``.

    That is ``#(a + b xs > 0 among positives) - #(a + b xs > 0 among negatives)``, counted
    as the dot product of the indicator with +1 (positives) / -1 (negatives).
    """
    dev = xs.device
    rows = xs.shape[0]
    a_t = torch.from_numpy(a).to(dev)[:, None]
    b_t = torch.from_numpy(b).to(dev)[:, None]
    out = np.empty(rows)
    for lo in range(0, rows, ws.block):
        hi = min(lo + ws.block, rows)
        ind = ws.tmp[: hi - lo]
        torch.mul(xs[lo:hi], b_t[lo:hi], out=ind).add_(a_t[lo:hi])
        torch.gt(ind, 0.0, out=ind)  # 1.0 where p_hat > 0.5, else 0.0
        if ws.cpu:
            np.vecdot(ws.tmp_np[: hi - lo], ws.sign_y, out=out[lo:hi])
        else:
            out[lo:hi] = (ind @ ws.sign_y_t).cpu().numpy()
    return np.rint(out).astype(np.int64)
