"""Whole-layer and k-sparse L2 logistic probes, nested over grouped folds, fast.

A per-unit probe asks whether one unit separates the classes; these probes ask whether a whole
layer (every unit at once, L2-penalised) or its ``k`` best units do. Everything that is chosen
is chosen inside the training folds only (nested): the penalty ``C`` from a grid by an inner
cross-validation over the other outer folds, and the ``k`` units by a univariate statistic
computed on the training folds; the held-out fold is scored once, with the choice made without
it. The folds are the probe's grouped folds (`mechprobe.stats.heldout.grouped_folds`), so no two
samples whose windows overlap fall on both sides of a split.

Speed: E1 on smollm2-135m asks for 30 layers x 2 families (960 and 1536 units) on ~320 samples,
each with ``K`` outer and ``K (K - 1) / 2`` inner training sets (the inner set "all but folds k
and j" serves outer fold ``k`` validating on ``j`` and outer fold ``j`` validating on ``k``) x a
``C`` grid x three label sets; scikit-learn takes 0.4-0.9 s for one 318 x 1536 fit. Two facts
make it cheap here:

* With ``n`` samples and ``p >> n`` units, the L2 solution ``w`` lies in the row space of the
  training rows (stationarity: ``w = -C X_train^T r``), which is inside the row space of all
  rows. With the thin SVD ``X = U S V^T`` (rank ``r <= n``) the problem in ``w`` is exactly the
  problem in ``z = V^T w`` on the features ``F = U S`` (``X w = F z``, ``|w| = |z|``), an
  ``n x r`` problem for every training set, label set and ``C`` at once. The SVD uses no label.
* In those coordinates ``F^T F = S^2`` is diagonal, so ``diag(1 + C s^2 / 2, C n_train / 2)``
  majorises the penalised log-loss's Hessian in ``(z, intercept)`` (``p (1 - p) <= 1/4`` and
  ``[F 1]^T [F 1] <= 2 diag(S^2, n)``), and `fit_l2_logistic` runs Nesterov-accelerated
  majorise-minimise steps in that metric (with adaptive restart) for every problem at once:
  each step is two matrix products shared by the whole batch, where a Newton step would factor
  one ``r x r`` matrix per problem.

`fit_l2_logistic` minimises scikit-learn's objective ``C * sum(log-loss) + |w|^2 / 2`` with an
unpenalised intercept (``LogisticRegression(C=C)``); tests/test_layer_probes.py checks it equals
scikit-learn's solution.

Example:
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 40)
    >>> x = rng.normal(size=(80, 200)) + 2.0 * y[:, None] * (np.arange(200) < 3)
    >>> res = nested_probes(x, {"real": y}, np.arange(80) % 4, ks=(1,))
    >>> bool(res["whole_layer"]["real"].accuracy > 0.7), sorted(res)
    (True, ['k1', 'whole_layer'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Shaped

from mechprobe.stats.threads import one_thread

__all__ = [
    "C_GRID",
    "KS",
    "ProbeScore",
    "fit_l2_logistic",
    "nested_probes",
    "paired_interval",
    "select_units",
    "split_probe",
    "wilson_interval",
]

#: The penalty grid, in units of ``1 / mean |x_i|^2`` over the training rows (scale-free: the
#: same grid for activations of any size; computed inside the training folds).
C_GRID = (0.03, 0.3, 3.0)
#: The k-sparse probes' sizes (capped at the layer's width).
KS = (1, 8, 64)
Samples = Shaped[np.ndarray, " samples"]


@dataclass(frozen=True)
class ProbeScore:
    """One probe's held-out score over the outer folds (pooled over samples).

    Attributes:
        correct: Whether each sample's held-out prediction is right, shape ``[samples]``.
        decision: Each sample's held-out log-odds, shape ``[samples]``.
        c: The penalty chosen (inner CV) for each outer fold, shape ``[folds]``.
        units: The units chosen for each outer fold (k-sparse), ``[folds, k]``, else None.
    """

    correct: Bool[np.ndarray, " samples"]
    decision: Float[np.ndarray, " samples"]
    c: Float[np.ndarray, " folds"]
    units: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        """Held-out accuracy pooled over the outer folds."""
        return float(self.correct.mean())

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson 95% interval of the accuracy (`wilson_interval`)."""
        return wilson_interval(int(self.correct.sum()), self.correct.size)


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (95% by default).

    Example:
        >>> [round(v, 4) for v in wilson_interval(80, 100)]
        [0.7112, 0.8666]
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (mid - half, mid + half)


def paired_interval(
    a: Bool[np.ndarray, " samples"], b: Bool[np.ndarray, " samples"], z: float = 1.959963984540054
) -> tuple[float, float, float]:
    """Difference of two accuracies on the same samples, with a paired normal 95% interval.

    ``d_i = a_i - b_i`` (each sample right or wrong under two probes); the difference is
    ``mean(d)`` and the interval ``mean(d) +- z * sd(d) / sqrt(n)`` (``sd`` with ``n - 1``):
    the pairing removes what the two share, which an interval from two independent binomials
    would count twice.

    Example:
        >>> a = np.array([1, 1, 1, 1, 0, 1, 1, 1], bool)
        >>> b = np.array([1, 0, 0, 1, 0, 1, 0, 1], bool)
        >>> [round(v, 3) for v in paired_interval(a, b)]
        [0.375, 0.016, 0.734]
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2:
        return (float(d.mean()) if d.size else math.nan, math.nan, math.nan)
    half = z * float(d.std(ddof=1)) / math.sqrt(d.size)
    return (float(d.mean()), float(d.mean()) - half, float(d.mean()) + half)


def fit_l2_logistic(
    f: Float[torch.Tensor, "... samples r"],
    y: Float[torch.Tensor, "batch samples"],
    weight: Float[torch.Tensor, "batch samples"],
    c: Float[torch.Tensor, " batch"],
    *,
    tol: float = 1e-6,
    max_iter: int = 3000,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Minimise ``C_b sum_i m_bi logloss(y_bi, f_i z_b + a_b) + |z_b|^2 / 2`` for every ``b``.

    Hand-written (not scikit-learn) because the probes need thousands of these fits per run
    and they share their features: every problem ``b`` of the batch has its own labels, sample
    weights ``m`` (0 leaves a sample out: how one matrix serves every training set) and penalty,
    and one matrix ``f`` (``[samples, r]``, shared) or one per problem (``[batch, samples, r]``).
    The columns of ``f`` must be orthogonal (``f = U S`` from an SVD): then
    ``diag(1 + C s^2 / 2, C sum(m) / 2)`` majorises the Hessian, and the iteration is
    Nesterov-accelerated majorise-minimise in that metric with O'Donoghue-Candes gradient
    restart; each step costs two (batched) matrix products. It stops when every problem's
    gradient, measured in the majoriser's inverse metric, is below ``tol`` times its
    objective's scale ``C sum(m)`` (and after ``max_iter`` steps at most). The intercept is not
    penalised: scikit-learn's ``LogisticRegression(C=C)`` on the rows with ``m = 1``
    (tests/test_layer_probes.py compares them).

    Returns:
        ``(z [batch, r], intercept [batch], converged)`` in float64.

    Example:
        >>> u, s, _ = torch.linalg.svd(torch.randn(30, 4, dtype=torch.float64), full_matrices=False)
        >>> y = (torch.arange(30) % 2).double()[None]
        >>> z, a, ok = fit_l2_logistic(u * s, y, torch.ones(1, 30, dtype=torch.float64),
        ...                            torch.tensor([1.0], dtype=torch.float64))
        >>> z.shape, ok
        (torch.Size([1, 4]), True)
    """
    dt = torch.float64
    f, y, m, c = f.to(dt), y.to(dt), weight.to(dt), c.to(dt)
    shared = f.ndim == 2
    s2 = (f * f).sum(-2)  # [r] or [batch, r]: the squared singular values
    bsz, r = y.shape[0], f.shape[-1]
    lz = 1.0 + c[:, None] * s2 / 2.0  # [batch, r]
    la = c * m.sum(1) / 2.0 + 1e-12  # [batch]
    scale = c * m.sum(1) + 1e-300

    def logits(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        out = z @ f.T if shared else torch.bmm(f, z[:, :, None])[:, :, 0]
        return out + a[:, None]

    def grad(z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res = m * (torch.sigmoid(logits(z, a)) - y)
        gz = res @ f if shared else torch.bmm(res[:, None, :], f)[:, 0, :]
        return c[:, None] * gz + z, c * res.sum(1)

    z = torch.zeros(bsz, r, dtype=dt)
    a = torch.zeros(bsz, dtype=dt)
    zy, ay = z.clone(), a.clone()  # the extrapolated point
    t = torch.ones(bsz, dtype=dt)
    converged = False
    done = torch.zeros(bsz, dtype=torch.bool)
    for _ in range(max_iter):
        gz, ga = grad(zy, ay)
        z_new, a_new = zy - gz / lz, ay - ga / la
        # the gradient's size in the majoriser's inverse metric, relative to the objective
        size = torch.sqrt((gz * gz / lz).sum(1) + ga * ga / la) / scale
        # a problem that has converged stops where it is, so that its result does not depend
        # on the other problems of the batch
        now = (size < tol) & ~done
        z = torch.where(now[:, None], z_new, z)
        a = torch.where(now, a_new, a)
        done |= now
        if bool(done.all()):
            converged = True
            break
        # restart momentum where the step goes against the momentum (gradient restart)
        restart = ((gz * (z_new - z)).sum(1) + ga * (a_new - a)) > 0
        t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
        mom = torch.where(restart, torch.zeros_like(t), (t - 1.0) / t_new)
        live = ~done
        zy = torch.where(live[:, None], z_new + mom[:, None] * (z_new - z), zy)
        ay = torch.where(live, a_new + mom * (a_new - a), ay)
        t = torch.where(restart, torch.ones_like(t), t_new)
        z = torch.where(live[:, None], z_new, z)
        a = torch.where(live, a_new, a)
    return z, a, converged


def select_units(
    x: Float[np.ndarray, "samples units"], y: Samples, k: int, rule: str = "t"
) -> np.ndarray:
    """The ``k`` units with the largest univariate statistic on the rows given (training rows).

    ``rule="t"``: ``|Welch t|`` of the unit between the classes (scale-free; the default);
    ``rule="mean_diff"``: ``|mean(x | y=1) - mean(x | y=0)|``, TransformerLens's
    ``fit_sparse_probe`` rule (used to compare with it). Ties: the first unit (stable sort).

    Example:
        >>> x = np.array([[0.0, 5, 1], [0, 6, 2], [1, 5, 9], [1, 6, 3]])
        >>> select_units(x, np.array([0, 0, 1, 1]), 2).tolist()
        [0, 2]
    """
    yv = np.asarray(y).astype(bool)
    x1, x0 = x[yv], x[~yv]
    if not len(x1) or not len(x0):  # one class only (a small inner split): no statistic
        return np.arange(min(k, x.shape[1]))
    diff = x1.mean(0) - x0.mean(0)
    if rule == "mean_diff":
        score = np.abs(diff)
    elif rule == "t":
        var1 = x1.var(0, ddof=1 if len(x1) > 1 else 0) / max(len(x1), 1)
        var0 = x0.var(0, ddof=1 if len(x0) > 1 else 0) / max(len(x0), 1)
        se = np.sqrt(var1 + var0)
        # no spread within the classes: a unit that differs between them separates them
        # perfectly (t infinite), one that does not carries nothing (0)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(se > 0, np.abs(diff) / np.where(se > 0, se, 1.0), 0.0)
        score = np.where((se == 0) & (diff != 0), np.inf, np.nan_to_num(score, nan=0.0))
    else:
        raise ValueError(f"unknown selection rule {rule!r} (t or mean_diff)")
    return np.argsort(-score, kind="stable")[:k]


def _orthogonal(x: torch.Tensor) -> torch.Tensor:
    """Features with orthogonal columns spanning the row space of ``x`` (``[..., n, p]``).

    ``F = x V`` with ``V`` the eigenvectors of ``x^T x`` when ``p <= n``, else ``F = U S`` from
    the eigenvectors of ``x x^T`` (the thin SVD's ``U S`` either way, up to signs: ``F F^T =
    x x^T`` and ``F^T F = S^2``); the eigendecomposition of the smaller Gram matrix is several
    times faster than an SVD of ``x``. Shared (2-D) features drop directions with
    ``s^2 <= 1e-12 max s^2``, batched ones zero them.
    """
    n, p = x.shape[-2], x.shape[-1]
    gram = x.transpose(-1, -2) @ x if p <= n else x @ x.transpose(-1, -2)
    # numpy's batched eigh is ~10x faster than torch's on the CPU for many small matrices
    lam_np, vec_np = np.linalg.eigh(gram.numpy())
    lam, vec = torch.from_numpy(lam_np), torch.from_numpy(vec_np)
    f = x @ vec if p <= n else vec * lam.clamp(min=0.0).sqrt()[..., None, :]
    keep = lam > lam.amax(-1, keepdim=True) * 1e-12
    if x.ndim == 2:
        return f[:, keep]
    return f * keep[..., None, :]


def _training_sets(fold: np.ndarray) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """The outer training sets (all but fold k) and the inner ones (all but folds k and j)."""
    ids = list(range(int(fold.max()) + 1))
    sets: list[tuple[int, ...]] = [(k,) for k in ids]
    if len(ids) >= 3:  # with two folds there is no inner split: "all but both" is empty
        sets += [(k, j) for k in ids for j in ids if j > k]
    masks = np.stack([~np.isin(fold, s) for s in sets])
    return sets, masks


def nested_probes(
    x: Float[np.ndarray, "samples units"] | Float[torch.Tensor, "samples units"],
    labels: dict[str, Samples],
    folds: Samples,
    *,
    ks: tuple[int, ...] = KS,
    c_grid: tuple[float, ...] = C_GRID,
    rule: str = "t",
    whole: bool = True,
    tol: float = 1e-4,
) -> dict[str, dict[str, ProbeScore]]:
    """Whole-layer and k-sparse probes on one layer's units, nested, for several label sets.

    The first label set (the real task) chooses ``C`` per outer fold by inner cross-validation
    (accuracy on the validation folds pooled, ties to the smaller ``C``); the others (control
    task, shuffled labels) are probed at the ``C`` the real task chose, as Hewitt and Liang
    compare probes of the same complexity on both tasks. Every label set chooses its own k
    units, on its own labels, on each training set.

    Args:
        x: The layer's activations ``[samples, units]``.
        labels: Binary labels by name; the first is the real task.
        folds: Outer fold of each sample (0 .. K-1, K >= 2; K >= 3 for an inner CV, else the
            middle of the grid is used).
        ks: k-sparse sizes (capped at the width; a size equal to an earlier one is skipped).
        c_grid: Penalties in units of ``1 / mean |x_i|^2`` over each training set's rows.
        rule: Unit selection statistic (`select_units`).
        whole: Also the whole-layer probe.
        tol: `fit_l2_logistic`'s tolerance (1e-4, as scikit-learn's default: a third faster
            than 1e-6, with the same held-out predictions but for samples at log-odds ~0).

    Returns:
        ``{probe: {label set: ProbeScore}}`` with probes ``whole_layer`` and ``k<k>``.
    """
    xv = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)
    fold = np.asarray(folds).astype(np.int64)
    width = xv.shape[1]
    names = list(labels)
    ys = {k: np.asarray(v).astype(np.int64) for k, v in labels.items()}
    sets, masks = _training_sets(fold)
    n_outer = int(fold.max()) + 1
    grid = np.asarray(c_grid, dtype=float)
    inner = n_outer >= 3
    kinds: list[tuple[str, int | None]] = [("whole_layer", None)] if whole else []
    seen: set[int] = set()
    for k in ks:
        kk = min(k, width)
        if kk not in seen:
            seen.add(kk)
            kinds.append((f"k{k}", kk))
    with one_thread():
        return _nested(xv, ys, names, fold, sets, masks, grid, inner, kinds, rule, tol)


def _nested(
    xv: np.ndarray,
    ys: dict[str, np.ndarray],
    names: list[str],
    fold: np.ndarray,
    sets: list[tuple[int, ...]],
    masks: np.ndarray,
    grid: np.ndarray,
    inner: bool,
    kinds: list[tuple[str, int | None]],
    rule: str,
    tol: float,
) -> dict[str, dict[str, ProbeScore]]:
    """`nested_probes` after its checks."""
    out: dict[str, dict[str, ProbeScore]] = {}
    xt = torch.from_numpy(xv)
    top = max((kk for _, kk in kinds if kk is not None), default=0)
    ranked = {
        name: np.stack([select_units(xv[mk], ys[name][mk], top, rule) for mk in masks])
        for name in names
    }
    for kind, kk in kinds:
        units = {} if kk is None else {name: r[:, :kk] for name, r in ranked.items()}
        out[kind] = _probe_kind(xt, ys, names, fold, sets, masks, grid, inner, units, tol)
    return out


def _probe_kind(
    xt: torch.Tensor,
    ys: dict[str, np.ndarray],
    names: list[str],
    fold: np.ndarray,
    sets: list[tuple[int, ...]],
    masks: np.ndarray,
    grid: np.ndarray,
    inner: bool,
    units: dict[str, np.ndarray],
    tol: float,
) -> dict[str, ProbeScore]:
    """One probe kind (whole layer: ``k`` None) for every label set (see `nested_probes`)."""
    n_outer, real = int(fold.max()) + 1, names[0]
    n_sets, n_c = len(sets), len(grid)
    # the real task: every training set (outer and inner) x every C
    set_idx = np.repeat(np.arange(n_sets if inner else n_outer), n_c)
    c_idx = np.tile(np.arange(n_c), n_sets if inner else n_outer)
    k = None if not units else units[real].shape[1]
    f_all = _orthogonal(xt) if k is None else None
    dec, c_abs = _fit_decisions(
        xt, f_all, units.get(real), ys[real], masks, set_idx, grid[c_idx], tol
    )
    chosen = np.full(n_outer, len(grid) // 2)
    if inner:
        for o in range(n_outer):
            score = np.zeros(n_c)
            for j in range(n_outer):
                if j == o:
                    continue
                s = sets.index((min(o, j), max(o, j)))
                rows = fold == j
                for ci in range(n_c):
                    b = s * n_c + ci
                    score[ci] += ((dec[b, rows] > 0) == (ys[real][rows] == 1)).sum()
            chosen[o] = int(np.argmax(score))  # first maximum: the smallest C
    result: dict[str, ProbeScore] = {}
    for name in names:
        if name == real:
            batch = [o * n_c + int(chosen[o]) for o in range(n_outer)]
            d_outer = dec[batch]
        else:
            outer_idx = np.arange(n_outer)
            d_outer, _ = _fit_decisions(
                xt, f_all, units.get(name), ys[name], masks, outer_idx, grid[chosen], tol
            )
        decision = np.empty(fold.size)
        for o in range(n_outer):
            decision[fold == o] = d_outer[o, fold == o]
        result[name] = ProbeScore(
            correct=(decision > 0) == (ys[name] == 1),
            decision=decision,
            c=np.array([c_abs[o * n_c + int(chosen[o])] for o in range(n_outer)]),
            units=None if k is None else units[name][:n_outer],
        )
    return result


def _fit_decisions(
    xt: torch.Tensor,
    f_all: torch.Tensor | None,
    units: np.ndarray | None,
    y: np.ndarray,
    masks: np.ndarray,
    set_idx: np.ndarray,
    c: np.ndarray,
    tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit problem ``b`` on training set ``set_idx[b]`` at grid value ``c[b]``.

    Returns every sample's log-odds ``[batch, samples]`` and the penalties ``C`` used.
    """
    m = torch.from_numpy(masks[set_idx].astype(np.float64))
    yt = torch.from_numpy(np.broadcast_to(y.astype(np.float64), m.shape).copy())
    if f_all is not None:
        f = f_all
    else:
        assert units is not None
        # problems on the same training set share their units: orthogonalise each set once
        uniq, inverse = np.unique(set_idx, return_inverse=True)
        sub = xt[:, torch.from_numpy(units[uniq])].permute(1, 0, 2)  # [sets, n, k]
        f = _orthogonal(sub)[torch.from_numpy(inverse.reshape(-1))]  # [batch, n, k]
    # C in units of 1 / mean |x_i|^2 over the training rows (|f_i| = |x_i|: F F^T = X X^T)
    norm2 = (f * f).sum(-1)  # [n] or [batch, n]
    mean2 = (m * norm2).sum(1) / m.sum(1)
    c_abs = torch.from_numpy(c) / mean2.clamp(min=1e-300)
    z, a, _ = fit_l2_logistic(f, yt, m, c_abs, tol=tol)
    logit = z @ f.T if f.ndim == 2 else torch.bmm(f, z[:, :, None])[:, :, 0]
    return (logit + a[:, None]).numpy(), c_abs.numpy()


def split_probe(
    x: Float[np.ndarray, "samples units"],
    y: Samples,
    train: Bool[np.ndarray, " samples"],
    c: float,
    *,
    k: int | None = None,
    rule: str = "t",
    tol: float = 1e-9,
) -> tuple[float, np.ndarray]:
    """One probe on one train/test split at a fixed absolute ``C``: held-out accuracy, units.

    The building block of `nested_probes` without the nesting: the ``k`` units (None: all) are
    chosen on the training rows by ``rule`` (`select_units`), `fit_l2_logistic` fits
    ``LogisticRegression(C=c)``'s objective on them, and the rows outside ``train`` are
    scored at log-odds 0. Used to compare with TransformerLens's ``sweep_sparse_probe``, whose
    objective ``mean(log-loss) + l2 |w|^2 / 2`` is this one at ``c = 1 / (l2 n_train)``.

    Example:
        >>> y = np.repeat([0, 1], 20)
        >>> x = np.c_[y + 0.1 * np.arange(40) % 0.3, np.zeros(40)]
        >>> split_probe(x, y, np.arange(40) % 4 != 0, c=1.0, k=1)
        (1.0, array([0]))
    """
    xv = np.asarray(x, dtype=np.float64)
    tr = np.asarray(train, dtype=bool)
    yv = np.asarray(y).astype(np.int64)
    units = (
        np.arange(xv.shape[1])
        if k is None
        else select_units(xv[tr], yv[tr], min(k, xv.shape[1]), rule)
    )
    with one_thread():
        f = _orthogonal(torch.from_numpy(np.ascontiguousarray(xv[:, units])))
        z, a, _ = fit_l2_logistic(
            f,
            torch.from_numpy(yv.astype(np.float64))[None],
            torch.from_numpy(tr.astype(np.float64))[None],
            torch.tensor([c], dtype=torch.float64),
            tol=tol,
            max_iter=100000,
        )
        dec = (z @ f.T + a[:, None])[0].numpy()
    te = ~tr
    return float(np.mean((dec[te] > 0) == (yv[te] == 1))), units
