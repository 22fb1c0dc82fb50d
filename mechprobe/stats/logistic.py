"""Exact, vectorised univariate logistic-regression probes.

For every unit ``j`` of an activation matrix ``x`` this module fits the model
``label ~ 1 + x[:, j]`` by maximum likelihood (Newton-Raphson / IRLS), for all units at
once, in float64. The result is the same maximum-likelihood estimate that
``statsmodels.api.Logit(y, sm.add_constant(x[:, j])).fit()`` finds, but about two orders
of magnitude faster, because the 2x2 Newton systems of a whole chunk of units are solved
in closed form with a handful of tensor operations (the solver:
:mod:`mechprobe.stats._newton`; chunking and results: :mod:`mechprobe.stats._chunks`).

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

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int, Shaped
from scipy import stats

from mechprobe.errors import BadInputError
from mechprobe.stats import _chunks

__all__ = ["LogisticFit", "fit_logistic"]

# Type aliases (module level so that linters do not parse the dimension strings).
Acts = Float[np.ndarray, "samples units"] | Float[torch.Tensor, "samples units"]
Labels = Shaped[np.ndarray, " samples"] | Shaped[torch.Tensor, " samples"]
UnitFloats = Float[np.ndarray, " units"]
UnitBools = Bool[np.ndarray, " units"]
UnitInts = Int[np.ndarray, " units"]


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
            a step or a step-halving) after the closed-form start (linear discriminant
            analysis); 0 for constant or separated units. The final step of a
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


def _numeric_labels(y: object) -> np.ndarray:
    """``y`` as a numpy array of numbers or booleans; strings and objects are refused."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf":
        first = arr.reshape(-1)[:1].tolist()
        raise BadInputError(
            f"fit_logistic: y must be 0/1 numbers or booleans, got dtype {arr.dtype} (first "
            f"value {first[0] if first else None!r}); map the labels first, e.g. "
            "y = (labels == 'negation')"
        )
    return arr


def _check_overflow(xt: torch.Tensor, out: dict[str, np.ndarray]) -> None:
    """Refuse units left NaN because their values overflow float64 when standardised."""
    failed = np.flatnonzero(np.isnan(out["beta"]) & np.isnan(out["intercept"]) & ~out["separated"])
    if failed.size == 0:
        return
    cols = torch.from_numpy(failed).to(xt.device)
    peak = xt.detach().index_select(1, cols).abs().amax(0).double().cpu().numpy()
    limit = np.sqrt(np.finfo(np.float64).max / (4.0 * max(1, xt.shape[0])))  # sum of squares
    huge = failed[peak > limit]
    if huge.size:
        raise BadInputError(
            f"fit_logistic: {huge.size} unit(s) overflow float64 when standardised (|x| up to "
            f"{peak.max():.3g}), e.g. units {huge[:5].tolist()}; rescale x first"
        )


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
    only Python loops are over chunks, blocks of rows and Newton iterations (the solver is
    :mod:`mechprobe.stats._newton`, which says why it is hand-written). Each unit's
    activation is centred and scaled internally (an exact reparametrisation), the fit
    starts from linear discriminant analysis (closed form), and every step solves the
    unit's 2x2 system with the closed-form inverse. Up to three cheap float32 passes warm
    the estimate up (to about 1e-3 in the standardised parameters, or the float32 noise
    level); the estimate, its convergence and its standard error then come from float64
    passes only. A unit has converged when its Newton step changes no (standardised)
    parameter by more than ``tol`` (the criterion of ``statsmodels``' Newton solver). That
    last step is usually computed without another pass over the data: each float64 pass
    also gives the third derivatives of the log-likelihood, from which the gradient and
    information after a small step ``s`` follow by Taylor expansion up to a remainder of
    order ``|s|^3`` (below 1e-12 where it is used). Standard errors come from the observed
    information at the estimate, as in ``statsmodels``.

    Separation is detected exactly, before iterating: with an intercept and one regressor
    the MLE fails to exist iff ``max(x | y=0) <= min(x | y=1)`` or
    ``max(x | y=1) <= min(x | y=0)`` (or ``y`` has a single class). Such units are
    flagged ``separated`` and get ``pvalue`` NaN instead of the huge slope and p close to 1
    that an iterative solver returns when it gives up. Constant units get ``beta`` NaN.

    Args:
        x: Activations, shape ``[samples, units]``; numpy array or torch tensor of any
            float dtype (converted to float64 one chunk at a time). Must be finite.
        y: Binary labels (0/1, bool, int or float), shape ``[samples]``.
        chunk_size: Number of units per chunk. Default: about 16 MiB of float64
            activations per chunk on CPU (``2**24 / (8 * samples)`` units, fewer when
            that leaves less than 2 chunks per worker thread), 64 MiB on an accelerator.
        max_iter: Maximum number of Newton iterations per unit (see ``n_iter``).
        tol: Convergence tolerance on the change of the standardised parameters.
        device: Torch device to compute on. Default: the device of ``x`` if it is a
            tensor, else CPU. On CPU, chunks are fitted by ``torch.get_num_threads()``
            worker threads, each running single-threaded torch operations (torch's
            thread setting is set to 1 for the duration of the call and then restored):
            per-operation intra-op parallelism gains little on block-sized operations
            and stalls badly when the machine is busy. Where the C extension was built at
            install time, the passes over the data run in its fused kernels instead
            (:mod:`mechprobe.stats._kernels`; same results to float64 rounding;
            ``MECHPROBE_KERNELS=0`` turns them off).

    Returns:
        A :class:`LogisticFit` of 1-D numpy arrays with one entry per unit.

    Raises:
        ValueError: If shapes do not match or ``y`` is not binary.
        BadInputError: (a ``ValueError`` and a `MechprobeError`) ``y`` is not numeric
            (strings: map them to 0/1 first), ``x`` is not finite, or a unit's values are so
            large (about ``|x| > 1e154 / sqrt(samples)``) that standardising them overflows
            float64: such a unit would otherwise come back all NaN, silently.

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

    yt = y if isinstance(y, torch.Tensor) else torch.as_tensor(_numeric_labels(y))
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
        target = _chunks.CPU_CHUNK_BYTES if dev.type == "cpu" else _chunks.GPU_CHUNK_BYTES
        chunk_size = max(1, target // (8 * n))
        if dev.type == "cpu":  # at least about 2 chunks per worker thread
            chunk_size = min(chunk_size, max(64, -(-m // (2 * torch.get_num_threads()))))
    chunk_size = int(max(1, min(chunk_size, max(m, 1))))

    # Put the positive samples first (the fit does not depend on the order of samples):
    # class-wise reductions then work on views instead of masked copies.
    order = torch.argsort(yt, descending=True, stable=True).to(xt.device)
    try:
        out = _chunks.fit_columns(
            xt.detach(),
            order,
            _chunks.Labels(yt),
            chunk_size=chunk_size,
            device=dev,
            max_iter=max_iter,
            tol=tol,
        )
    except ValueError as exc:
        if "NaN or infinite" not in str(exc):
            raise
        bad = np.flatnonzero(~torch.isfinite(xt.detach()).all(0).cpu().numpy())
        raise BadInputError(
            f"fit_logistic: x holds NaN or infinite values in {len(bad)} unit(s), e.g. units "
            f"{bad[:5].tolist()}; drop or fix them first"
        ) from None
    _check_overflow(xt, out)
    z = out.pop("z")
    with np.errstate(invalid="ignore"):
        pvalue = 2.0 * stats.norm.sf(np.abs(z))
    return LogisticFit(pvalue=pvalue, **out)
