"""Probe statistics of every layer at once: held-out scores and Firth fits, ``[layer, units]``.

Thin loops over layers around `mechprobe.stats.heldout.heldout_eval` (on a pool of one-thread
workers, `mechprobe.stats.threads.map_one_thread`: a layer's fits are too small to gain from
threads of their own) and `mechprobe.stats.firth.fit_firth`, with a progress bar; the unit-level
work is vectorised there.

Example:
    >>> y = np.array([0, 1] * 30)
    >>> x = torch.randn(60, 2, 4) + 2.0 * torch.tensor(y)[:, None, None]
    >>> folds = np.arange(60) % 3
    >>> heldout_layers(x, y, folds)["accuracy"].shape
    (2, 4)
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from mechprobe.stats.firth import fit_firth
from mechprobe.stats.heldout import heldout_eval
from mechprobe.stats.threads import map_one_thread


def heldout_layers(
    x: Float[Tensor, "batch layer units"],
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    desc: str = "held-out",
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """Held-out accuracy and ROC AUC of every unit of every layer (``[layer, units]`` each).

    Also the nested best unit of each layer (`mechprobe.stats.heldout.HeldoutResult`):
    ``best_unit`` ``[layer, folds]`` (chosen by training accuracy on each training split) and
    ``best_correct`` ``[layer, samples]`` (its held-out predictions right or wrong).

    Example:
        >>> y = np.array([0, 1] * 10)
        >>> res = heldout_layers(torch.randn(20, 1, 2), y, np.arange(20) // 2 % 2)
        >>> sorted(res)
        ['accuracy', 'auc', 'best_correct', 'best_unit']
    """
    n_layers, n_units = x.shape[1], x.shape[2]
    acc, auc = np.full((n_layers, n_units), np.nan), np.full((n_layers, n_units), np.nan)
    n_folds = np.unique(np.asarray(folds)).size
    best_unit = np.zeros((n_layers, n_folds), dtype=np.int64)
    best_correct = np.zeros((n_layers, x.shape[0]), dtype=bool)
    show = progress if progress is not None else n_layers > 1
    # the layers are independent: one-thread workers, the serial loop's numbers exactly
    results = map_one_thread(
        lambda i: heldout_eval(x[:, i, :], labels, folds), range(n_layers), desc=desc,
        progress=show,
    )  # fmt: skip
    for i, res in enumerate(results):
        acc[i], auc[i] = res.accuracy, res.auc
        assert res.best_unit is not None and res.best_correct is not None
        best_unit[i], best_correct[i] = res.best_unit, res.best_correct
    return {"accuracy": acc, "auc": auc, "best_unit": best_unit, "best_correct": best_correct}


def firth_layers(
    x: Float[Tensor, "batch layer units"],
    labels: np.ndarray,
    which: Bool[np.ndarray, "layer units"] | None = None,
    *,
    desc: str = "firth",
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """Firth's penalised fit of the units in ``which`` (default all): beta and profile-LR p.

    Units outside ``which`` get NaN.

    Example:
        >>> y = np.array([0, 1] * 10)
        >>> x = torch.tensor(np.c_[y * 3.0, np.arange(20.0)])[:, None, :]  # unit 0 separates
        >>> res = firth_layers(x, y)
        >>> bool(np.isfinite(res["beta"][0, 0])), bool(res["pvalue"][0, 0] < 0.01)
        (True, True)
    """
    n_layers, n_units = x.shape[1], x.shape[2]
    beta, pvalue = np.full((n_layers, n_units), np.nan), np.full((n_layers, n_units), np.nan)
    which = np.ones((n_layers, n_units), dtype=bool) if which is None else which
    rows = [i for i in range(n_layers) if which[i].any()]
    show = progress if progress is not None else len(rows) > 1
    for i in tqdm(rows, desc=desc, disable=not show, unit="layer"):
        cols = np.flatnonzero(which[i])
        fit = fit_firth(x[:, i, cols], labels)
        beta[i, cols], pvalue[i, cols] = fit.beta, fit.pvalue
    return {"beta": beta, "pvalue": pvalue}
