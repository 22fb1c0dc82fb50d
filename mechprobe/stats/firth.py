"""Firth's penalised logistic regression, vectorised over units.

For every unit ``j`` of an activation matrix ``x`` this module fits ``label ~ 1 + x[:, j]``
by maximising Firth's penalised log-likelihood

    l*(a, b) = l(a, b) + 1/2 log det I(a, b),

where ``l`` is the ordinary logistic log-likelihood and ``I = X' W X`` the Fisher
information (``X = [1, x]``, ``W = diag(p (1 - p))``), i.e. the posterior mode under
Jeffreys' prior (Firth 1993). Unlike the maximum-likelihood estimate, this estimate is
finite for every non-constant unit, including units that (quasi-)separate the classes,
and its p-value comes from the profile penalised likelihood-ratio test of Heinze &
Schemper (2002), as in R's ``logistf``.

Example:
    >>> import numpy as np
    >>> from mechprobe.stats.firth import fit_firth
    >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> x = np.array([[0.1], [0.4], [0.3], [0.2], [0.8], [0.9], [0.7], [0.6]])  # separated
    >>> fit = fit_firth(x, y)
    >>> bool(np.isfinite(fit.beta[0]) and fit.beta[0] > 0 and fit.pvalue[0] < 0.05)
    True
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int, Shaped
from scipy import stats

from mechprobe.stats._chunks import _torch_threads
from mechprobe.stats._firth_newton import _newton

__all__ = ["FirthFit", "fit_firth"]

Acts = Float[np.ndarray, "samples units"] | Float[torch.Tensor, "samples units"]
Labels = Shaped[np.ndarray, " samples"] | Shaped[torch.Tensor, " samples"]
UnitFloats = Float[np.ndarray, " units"]
UnitBools = Bool[np.ndarray, " units"]
UnitInts = Int[np.ndarray, " units"]

#: Target size in bytes of one ``[units, samples]`` float64 array of a chunk on CPU. A
#: pass keeps about a dozen such arrays busy, so a chunk stays in the outer caches.
CPU_CHUNK_BYTES = 1 << 20
#: Target size in bytes of one such array on an accelerator.
GPU_CHUNK_BYTES = 1 << 25


@dataclass(frozen=True)
class FirthFit:
    """Per-unit results of :func:`fit_firth` (1-D numpy arrays, one entry per unit).

    Attributes:
        beta: Slope of ``label ~ 1 + activation`` at the maximum of the penalised
            likelihood; finite for every non-constant unit, separated ones included.
            ``nan`` for a constant unit (the penalty ``log det I`` is then ``-inf``).
        intercept: Intercept (``nan`` for a constant unit).
        se: ``sqrt([I^-1]_bb)``, the standard error of ``beta`` from the (unpenalised)
            Fisher information ``I = X' W X`` at the penalised estimate, as ``logistf``
            reports it.
        pvalue: P-value of the profile penalised likelihood-ratio test of ``beta = 0``:
            ``chi2(1).sf(lr)``. This is the p-value to use.
        lr: The penalised likelihood-ratio statistic
            ``2 * (l*(a_hat, b_hat) - max_a l*(a, 0))``, where the restricted model keeps
            the penalty of the full model (Heinze & Schemper 2002; ``logistf``'s default).
            At ``b = 0`` that maximum is in closed form: ``p = (n1 + 1) / (n + 2)``.
        wald_pvalue: Two-sided Wald p-value ``2 * norm.sf(|beta / se|)`` of the penalised
            fit (known to be unreliable under separation; given for comparison only).
        loglik: The penalised log-likelihood ``l*`` at the estimate (for the activations
            as given; a change of units of ``x`` shifts it by a constant).
        converged: Newton-Raphson met the convergence criterion.
        n_iter: Number of Newton iterations (passes over the unit's data, including those
            followed by a step-halving); 0 for a constant unit.
    """

    beta: UnitFloats
    intercept: UnitFloats
    se: UnitFloats
    pvalue: UnitFloats
    lr: UnitFloats
    wald_pvalue: UnitFloats
    loglik: UnitFloats
    converged: UnitBools
    n_iter: UnitInts

    @property
    def n_units(self) -> int:
        """Number of units fitted."""
        return int(self.beta.shape[0])


def fit_firth(
    x: Acts,
    y: Labels,
    *,
    chunk_size: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-10,
    device: str | torch.device | None = None,
) -> FirthFit:
    """Fit Firth's penalised logistic regression ``label ~ 1 + activation`` per unit.

    The penalised log-likelihood ``l* = l + 1/2 log det I`` (see the module docstring) is
    maximised for all units at once by Newton-Raphson with the exact Hessian of ``l*``,
    processed in chunks of columns, in float64. With the activations standardised (an
    exact reparametrisation) and centred at ``c``, ``d = x - c``, ``W_k = sum w d^k``,
    ``V_k = sum v d^k`` and ``U_k = sum u d^k`` (``w = p (1 - p)``, ``v = w (1 - 2 p)``
    and ``u = w (1 - 6 w)``, the first and second derivatives of ``w`` along
    ``eta = a + b d``), the determinant ``D = W0 W2 - W1^2`` and its first two derivatives
    are closed-form in these sums, so one pass over the data per iteration gives the
    gradient ``sum (y - p) d^r + D_r / (2 D)`` (the hat-matrix-adjusted score of Firth
    1993) and the Hessian ``-W_(r+s) + (D_rs / D - D_r D_s / D^2) / 2``. Where that
    Hessian is not negative definite, the step is the Fisher-scoring step ``I^-1 U*``
    (always an ascent direction) instead. Steps are capped at ``MAX_STEP`` per
    standardised parameter and halved while ``l*`` decreases. A unit has converged when
    its Newton step changes no standardised parameter by more than ``tol``.

    The fit starts at the restricted maximum ``(logit((n1 + 1) / (n + 2)), 0)``, whose
    penalised log-likelihood is needed anyway for the likelihood-ratio test. A constant
    unit has no penalised likelihood (``det I = 0``) and gets NaN everywhere.

    On CPU, 400 samples x 20,000 units take about 1 s with random activations of mixed
    effect sizes (5 passes per unit on average) and 1.8 s when every unit separates the
    classes (11 passes), measured on a shared 2-core machine at a load average of 1.6.

    Args:
        x: Activations, shape ``[samples, units]``; numpy array or torch tensor of any
            float dtype (converted to float64 one chunk at a time). Must be finite.
        y: Binary labels (0/1, bool, int or float), shape ``[samples]``. A single class is
            allowed (the penalised estimate still exists).
        chunk_size: Number of units per chunk. Default: about 1 MiB of float64 per
            ``[units, samples]`` array on CPU, 32 MiB on an accelerator.
        max_iter: Maximum number of Newton iterations per unit.
        tol: Convergence tolerance on the change of the standardised parameters.
        device: Torch device to compute on. Default: the device of ``x`` if it is a
            tensor, else CPU. On CPU, chunks are fitted by ``torch.get_num_threads()``
            worker threads, each running single-threaded torch operations.

    Returns:
        A :class:`FirthFit` of 1-D numpy arrays with one entry per unit.

    Raises:
        ValueError: If shapes do not match, ``y`` is not binary or ``x`` is not finite.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, size=200)
        >>> x = np.stack([rng.normal(size=200), y + 0.0, np.ones(200)], axis=1)
        >>> fit = fit_firth(x, y)  # unit 1 separates the classes, unit 2 is constant
        >>> [bool(v) for v in np.isfinite(fit.beta)]
        [True, True, False]
        >>> bool(fit.pvalue[1] < 1e-10), bool(fit.converged[:2].all())
        (True, True)
    """
    xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    dev = xt.device if device is None else torch.device(device)
    if xt.ndim != 2:
        raise ValueError(f"x must have shape [samples, units], got {tuple(xt.shape)}")
    if not (xt.is_floating_point() or xt.dtype in (torch.int32, torch.int64, torch.bool)):
        raise ValueError(f"x must be a float array, got dtype {xt.dtype}")
    n, m = xt.shape
    yt = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    yt = yt.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
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
        chunk_size = max(16, target // (8 * n))
    chunk_size = int(max(1, min(chunk_size, max(m, 1))))

    keys = ("beta", "intercept", "se", "lr", "loglik")
    out: dict[str, np.ndarray] = {k: np.full(m, np.nan) for k in keys}
    out["converged"] = np.zeros(m, dtype=bool)
    out["n_iter"] = np.zeros(m, dtype=np.int64)
    y_dev = yt.to(dev)
    n1 = int(yt.sum())
    # maximum of l*(a, 0) in the standardised coordinates (sum xs = 0, sum xs^2 = n):
    # l(a, 0) + log p + log(1 - p) + log n, at p = (n1 + 1) / (n + 2)
    p0 = (n1 + 1) / (n + 2)
    l0 = (n1 + 1) * math.log(p0) + (n - n1 + 1) * math.log1p(-p0) + math.log(n)

    def fit_range(start: int) -> None:
        stop = min(start + chunk_size, m)
        with torch.no_grad():
            xc = xt[:, start:stop].detach().to(device=dev, dtype=torch.float64).T
            res = _fit_chunk(xc, y_dev, n1, l0, max_iter=max_iter, tol=tol)
        for key, val in res.items():
            out[key][start:stop] = val

    starts = range(0, m, chunk_size)
    workers = max(1, min(torch.get_num_threads(), len(starts))) if dev.type == "cpu" else 1
    if workers == 1:
        for start in starts:
            fit_range(start)
    else:
        with _torch_threads(1), ThreadPoolExecutor(workers) as ex:
            for fut in [ex.submit(fit_range, start) for start in starts]:
                fut.result()

    with np.errstate(invalid="ignore", divide="ignore"):
        pvalue = stats.chi2.sf(out["lr"], 1)
        wald = 2.0 * stats.norm.sf(np.abs(out["beta"] / out["se"]))
    return FirthFit(pvalue=pvalue, wald_pvalue=wald, **out)


def _fit_chunk(
    xc: Float[torch.Tensor, "units samples"],
    y: Float[torch.Tensor, " samples"],
    n1: int,
    l0: float,
    *,
    max_iter: int,
    tol: float,
) -> dict[str, np.ndarray]:
    """Fit all units (rows) of one float64 chunk; returns numpy arrays per unit."""
    c, _n = xc.shape
    dev = xc.device
    if not bool(torch.isfinite(xc).all()):
        raise ValueError("x contains NaN or infinite values")
    mean = xc.mean(1, keepdim=True)
    xs = (xc - mean).contiguous()
    sd = xs.square().mean(1, keepdim=True).sqrt()
    constant = (xc.amax(1) == xc.amin(1)).cpu().numpy()
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    xs.div_(sd)
    mean_np, sd_np = mean[:, 0].cpu().numpy(), sd[:, 0].cpu().numpy()

    res = {
        "beta": np.full(c, np.nan),
        "intercept": np.full(c, np.nan),
        "se": np.full(c, np.nan),
        "lr": np.full(c, np.nan),
        "loglik": np.full(c, np.nan),
        "converged": np.zeros(c, dtype=bool),
        "n_iter": np.zeros(c, dtype=np.int64),
    }
    fit = ~constant
    if not fit.any():
        return res
    rows = np.flatnonzero(fit)
    if rows.size < c:
        xs = xs.index_select(0, torch.from_numpy(rows).to(dev))
    syx = (xs @ y).cpu().numpy()  # sum over positives of xs
    a, b, cen, info, lstar, conv, n_it = _newton(xs, syx, n1, max_iter=max_iter, tol=tol)

    # back to the raw activations: eta = a + b (xs - cen), xs = (x - mean) / sd
    sdr, meanr = sd_np[rows], mean_np[rows]
    beta = b / sdr
    res["beta"][rows] = beta
    res["intercept"][rows] = a - b * cen - beta * meanr
    w0, w1, w2 = info
    with np.errstate(invalid="ignore", divide="ignore"):
        res["se"][rows] = np.sqrt(w0 / (w0 * w2 - w1 * w1)) / sdr
    # l* in raw units: det I = sd^2 det I_standardised
    res["loglik"][rows] = lstar + np.log(sdr)
    res["lr"][rows] = np.maximum(2.0 * (lstar - l0), 0.0)
    res["converged"][rows] = conv
    res["n_iter"][rows] = n_it
    return res
