"""Per-layer probe statistics: one logistic fit per unit and layer, significance, summaries.

Pure functions on arrays (``[layer, units]``): `fit_layers` fits every unit of every layer with
`mechprobe.stats.logistic.fit_logistic`; `significance_mask` applies a per-layer correction;
`layer_summary` reduces a group of units to the course's per-layer curves.

Example:
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 60)
    >>> acts = torch.tensor(rng.normal(size=(60, 2, 5)) + y[:, None, None])
    >>> fits = fit_layers(acts, y)
    >>> significance_mask(fits["pvalue"], 0.05, "bonferroni").shape
    (2, 5)
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from mechprobe.errors import MechprobeError
from mechprobe.stats.logistic import fit_logistic
from mechprobe.stats.multiple import bonferroni_mask, fdr_mask

CORRECTIONS = ("bonferroni", "fdr")
LayerUnits = Float[np.ndarray, "layer units"]
LayerMask = Bool[np.ndarray, "layer units"]


def fit_layers(
    acts: Float[Tensor, "batch layer units"],
    labels: np.ndarray,
    *,
    desc: str = "fit",
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """Fit one logistic probe per unit and layer.

    Units whose fit did not converge (including separated and constant units) get NaN
    p-values, so they are never counted significant.

    Returns:
        ``beta``, ``intercept``, ``pvalue``, ``accuracy`` (float64), ``converged``,
        ``separated`` (bool), each ``[layer, units]``.

    Example:
        >>> y = np.array([0, 1] * 20)
        >>> fits = fit_layers(torch.randn(40, 2, 8) + torch.tensor(y)[:, None, None], y)
        >>> fits["pvalue"].shape
        (2, 8)
    """
    n_layers, n_units = acts.shape[1], acts.shape[2]
    out = {k: np.full((n_layers, n_units), np.nan) for k in ("beta", "intercept", "pvalue")}
    out["accuracy"] = np.full((n_layers, n_units), np.nan)
    out["converged"] = np.zeros((n_layers, n_units), dtype=bool)
    out["separated"] = np.zeros((n_layers, n_units), dtype=bool)
    show = progress if progress is not None else n_layers > 1
    for i in tqdm(range(n_layers), desc=desc, disable=not show, unit="layer"):
        fit = fit_logistic(acts[:, i, :], labels, device=device)
        out["beta"][i] = fit.beta
        out["intercept"][i] = fit.intercept
        out["pvalue"][i] = np.where(fit.converged, fit.pvalue, np.nan)
        out["accuracy"][i] = fit.accuracy
        out["converged"][i] = fit.converged
        out["separated"][i] = fit.separated
    return out


def significance_mask(pvalue: LayerUnits, alpha: float, correction: str) -> LayerMask:
    """Significant units per layer (row); NaN p-values count as tests, never significant.

    ``bonferroni``: ``p < alpha / n_units`` with ``n_units`` all units of the row (the
    course's rule); ``fdr``: Benjamini-Hochberg over all units of the row.

    Example:
        >>> significance_mask(np.array([[1e-4, 0.02, np.nan]]), 0.05, "bonferroni").tolist()
        [[True, False, False]]
    """
    p = np.where(np.isnan(pvalue), 1.0, pvalue)  # untested units stay in the family
    if correction == "bonferroni":
        return bonferroni_mask(p, alpha)
    if correction == "fdr":
        return fdr_mask(p, alpha)
    raise MechprobeError(f"unknown correction {correction!r} (choose bonferroni or fdr)")


def p_threshold(mask: LayerMask, alpha: float, correction: str) -> np.ndarray:
    """Per-row p-value threshold: ``alpha / n`` (Bonferroni) or ``k * alpha / n`` (BH, k>=1).

    Example:
        >>> p_threshold(np.array([[True, True, False, False]]), 0.05, "fdr").tolist()
        [0.025]
    """
    n = mask.shape[-1]
    if correction == "fdr":
        return np.maximum(mask.sum(-1), 1) * alpha / n
    return np.full(mask.shape[:-1], alpha / n)


def layer_summary(
    beta: LayerUnits,
    accuracy: LayerUnits,
    mask: LayerMask,
    converged: LayerMask,
    separated: LayerMask,
) -> dict[str, np.ndarray]:
    """The course's per-layer figures for one group of units (each ``[layer]``).

    ``percent_significant``: 100 x share of significant units (either sign of beta);
    ``mean_accuracy``: mean in-sample accuracy of all units; ``mean_accuracy_sig_pos``: mean
    accuracy of the significant units with ``beta > 0`` (NaN where there is none); counts of
    significant / significant-positive / separated / constant / not-converged units.

    Example:
        >>> beta = np.array([[1.0, -1.0, np.nan]])
        >>> f = layer_summary(beta, np.array([[0.9, 0.7, 0.5]]), np.array([[True, True, False]]),
        ...                   np.array([[True, True, False]]), np.zeros((1, 3), bool))
        >>> f["percent_significant"].round(1).tolist(), f["mean_accuracy_sig_pos"].tolist()
        ([66.7], [0.9])
    """
    pos = mask & (beta > 0)
    n_pos = pos.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_pos = np.where(n_pos > 0, np.where(pos, accuracy, 0.0).sum(-1) / n_pos, np.nan)
    constant = np.isnan(beta) & ~separated
    return {
        "percent_significant": 100.0 * mask.mean(-1),
        "mean_accuracy": np.nanmean(accuracy, -1),
        "mean_accuracy_sig_pos": acc_pos,
        "n_significant": mask.sum(-1),
        "n_significant_pos": n_pos,
        "n_separated": separated.sum(-1),
        "n_constant": constant.sum(-1),
        "n_not_converged": (~converged & ~separated & ~constant).sum(-1),
    }


def best_unit(fits: dict[str, dict[str, np.ndarray]]) -> tuple[str, int, int] | None:
    """``(family, layer row, unit)`` with the highest in-sample accuracy among converged units.

    Ties go to the smallest p-value, then to the first family, row and unit.

    Example:
        >>> f = {"beta": np.ones((1, 2)), "accuracy": np.array([[0.6, 0.9]]),
        ...      "pvalue": np.array([[0.01, 0.02]]), "converged": np.ones((1, 2), bool)}
        >>> best_unit({"mlp": f})
        ('mlp', 0, 1)
    """
    best: tuple[float, float, str, int, int] | None = None
    for family, f in fits.items():
        acc = np.where(f["converged"], f["accuracy"], -np.inf)
        if not np.isfinite(acc).any():
            continue
        top = np.nanmax(acc)
        cand = np.argwhere(acc == top)
        p = f["pvalue"][tuple(cand.T)]
        i = int(np.nanargmin(p)) if np.isfinite(p).any() else 0
        key = (float(top), -float(p[i]) if np.isfinite(p[i]) else -1.0)
        if best is None or key > best[:2]:
            best = (*key, family, int(cand[i][0]), int(cand[i][1]))
    return None if best is None else best[2:]


def course_best_unit(beta: np.ndarray, significant: np.ndarray) -> int | None:
    """The course's best unit of a layer: the largest beta among its significant units.

    Example:
        >>> course_best_unit(np.array([3.0, 5.0, 9.0]), np.array([True, True, False]))
        1
        >>> course_best_unit(np.array([1.0]), np.array([False])) is None
        True
    """
    ok = significant & np.isfinite(beta)
    if not ok.any():
        return None
    return int(np.flatnonzero(ok)[np.argmax(beta[ok])])


def analyse_family(
    x: Float[Tensor, "batch layer units"],
    labels: np.ndarray,
    groups: dict[str, slice],
    *,
    alpha: float,
    correction: str,
    folds: np.ndarray | None = None,
    control: np.ndarray | None = None,
    shuffled: np.ndarray | None = None,
    method: str = "ml",
    firth_separated: bool = True,
    desc: str = "fit",
) -> dict[str, Any]:
    """Fit, test and summarise one family of units (``[batch, layer, units]``) per layer.

    Args:
        x: Activations.
        labels: Binary labels (0/1).
        groups: Groups of units (slices of the units) to summarise separately.
        alpha: Significance level.
        correction: ``bonferroni`` or ``fdr``, per layer.
        folds: Fold of each sample: held-out accuracy and AUC (None: skipped).
        control: Control-task labels (same folds): their held-out accuracy, and selectivity.
        shuffled: Shuffled labels: the percentage of significant units under no effect.
        method: ``ml`` (the course's maximum-likelihood probe) or ``firth`` (every unit with
            Firth's penalised fit; its profile-likelihood p decides significance).
        firth_separated: With ``ml``, also give separated units a Firth fit (finite beta, p).
        desc: Progress-bar label.

    Returns:
        ``fits`` (see `fit_layers`), ``significant`` (mask), ``p_threshold`` ``[layer]``,
        ``firth``, ``heldout``, ``control``, ``shuffled`` (each ``None`` or arrays
        ``[layer, units]``) and ``groups``: for each group, its `layer_summary` arrays plus
        ``mean_heldout_accuracy`` (of all units; ``_sig``: of the significant ones),
        ``mean_heldout_auc``, ``max_heldout_accuracy``,
        ``mean_control_accuracy``, ``selectivity`` and ``percent_significant_shuffled`` where
        computed.

    Example:
        >>> y = np.array([0, 1] * 20)
        >>> x = torch.randn(40, 2, 6) + torch.tensor(y)[:, None, None]
        >>> res = analyse_family(x, y, {"all": slice(0, 6)}, alpha=0.05, correction="fdr",
        ...                      folds=np.arange(40) // 2 % 4)
        >>> res["groups"]["all"]["mean_heldout_accuracy"].shape
        (2,)
    """
    from mechprobe.stats.layerwise import firth_layers, heldout_layers

    fits = fit_layers(x, labels, desc=desc)
    firth = None
    if method == "firth":
        firth = firth_layers(x, labels, desc=f"firth {desc}")
    elif firth_separated and fits["separated"].any():
        firth = firth_layers(x, labels, fits["separated"], desc=f"firth {desc}")
    p = firth["pvalue"] if method == "firth" and firth is not None else fits["pvalue"]
    mask = significance_mask(p, alpha, correction)
    heldout = (
        heldout_layers(x, labels, folds, desc=f"held-out {desc}") if folds is not None else None
    )
    ctrl = None
    if control is not None and folds is not None:
        ctrl = heldout_layers(x, control, folds, desc=f"control {desc}")
    shuffle = None
    if shuffled is not None:
        shuffle = significance_mask(fit_layers(x, shuffled, desc=f"shuffled {desc}")["pvalue"],
                                    alpha, correction)  # fmt: skip
    summaries = {}
    for group, sl in groups.items():
        keys = ("beta", "accuracy", "converged", "separated")
        beta, acc, conv, sep = (fits[k][:, sl] for k in keys)
        g = layer_summary(beta, acc, mask[:, sl], conv, sep)
        # a layer with no significant unit has no mean: NaN, said once here, not warned per layer
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if heldout is not None:
                g["mean_heldout_accuracy"] = np.nanmean(heldout["accuracy"][:, sl], -1)
                sig_acc = np.where(mask[:, sl], heldout["accuracy"][:, sl], np.nan)
                g["mean_heldout_accuracy_sig"] = np.nanmean(sig_acc, -1)
                g["max_heldout_accuracy"] = np.nanmax(heldout["accuracy"][:, sl], -1)
                g["mean_heldout_auc"] = np.nanmean(heldout["auc"][:, sl], -1)
            if ctrl is not None:
                g["mean_control_accuracy"] = np.nanmean(ctrl["accuracy"][:, sl], -1)
                g["selectivity"] = g["mean_heldout_accuracy"] - g["mean_control_accuracy"]
            if shuffle is not None:
                g["percent_significant_shuffled"] = 100.0 * shuffle[:, sl].mean(-1)
        summaries[group] = g
    return {
        "fits": fits,
        "significant": mask,
        "p_threshold": p_threshold(mask, alpha, correction),
        "firth": firth,
        "heldout": heldout,
        "control": ctrl,
        "shuffled": shuffle,
        "groups": summaries,
    }
