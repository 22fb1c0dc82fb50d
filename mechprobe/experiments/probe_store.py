"""The probe with an activation store: collect into it, score-test every unit, fit from it.

With ``store`` set, `mechprobe.experiments.probe_analysis.analyse` calls `store_results`
instead of collecting in memory: the windows go into an `mechprobe.store.ActivationStore` block
by block (a killed collection resumes at the first unfinished block), each block's streaming
score-test state is stored beside it, and the per-unit probes are fitted from the store with Dask
(`mechprobe.store.fit_store`), here or on a cluster. The in-sample arrays (``C_beta``,
``C_pvalue``, ``C_accuracy``, ``C_converged``, ``C_separated``, ``C_significant``) are
bit-identical to the in-memory path's; Firth's fits of separated units agree to rounding. Not
computed from a store (listed in the summary as ``store.skipped``): held-out accuracy and AUC,
the control task, the label shuffle and the lexical baseline. Added: ``C_score_statistic`` and
``C_score_pvalue`` (Rao's score test, `mechprobe.stats.score`) and, with ``score_threshold``,
``C_fitted`` (the units fitted: score ``p`` below the threshold, or no score test).

Example:
    >>> from pathlib import Path
    >>> from mechprobe.experiments import probe
    >>> _ = Path("story.txt").write_text("It is not here, but we can go. " * 60, encoding="utf-8")
    >>> config = probe.resolve(probe.ProbeConfig(text="story.txt", context_pre=5,
    ...                        store="acts.zarr"), model_shape(model))
    >>> res = probe.run(config, model)
    >>> res.arrays["mlp_score_pvalue"].shape, res.summary["store"]["blocks_written"]
    ((2, 256), 1)
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mechprobe.models.types import Model

#: What a store run does not compute.
SKIPPED = ("held-out accuracy and AUC", "control task", "label shuffle", "lexical baseline")


@dataclass
class StoreResults:
    """What the store path gives `analyse`.

    Attributes:
        widths: Units per family.
        results: ``{family: [one analyse_family-shaped dict per contrast]}``.
        arrays: The score-test arrays (and ``C_fitted``), ready to save.
        column: ``column(family, layer_row, unit)``: that unit's activation of every window.
        info: The summary's ``store`` entry.
    """

    widths: dict[str, int]
    results: dict[str, list[dict[str, Any]]]
    arrays: dict[str, np.ndarray]
    column: Any
    info: dict[str, Any]


def store_results(
    config: Any, model: Model, samples: Any, n_contrasts: int, groups_of: Any, timing: dict
) -> StoreResults:
    """Collect into ``config.store``, score-test, fit from it (see the module docstring).

    Args:
        config: The resolved probe config (``store`` set).
        model: The model.
        samples: The `mechprobe.experiments.probe_samples.ProbeSamples`.
        n_contrasts: Number of binary problems (1 for two classes, else one per class).
        groups_of: ``groups_of(family, n_units) -> {group: slice}``.
        timing: Gets ``forward`` and ``fit`` (seconds).
    """
    from mechprobe.collect_store import collect_to_store, open_store
    from mechprobe.store import fit_store

    t0 = time.perf_counter()
    classes = [1] if n_contrasts == 1 else list(range(n_contrasts))
    store, resumed = open_store(
        config.store,
        model,
        samples.windows,
        samples.labels,
        samples.positions,
        position=config.context_pre,
        layers=config.layers,
        families=config.components,
        contrasts=classes,
        batch_size=config.batch_size,
        meta={"classes": list(samples.names), "data": samples.source},
    )
    if resumed:
        done = int(store.done().sum())
        print(
            f"[store] {config.store}: {done} of {store.n_blocks} blocks already collected",
            file=sys.stderr,
            flush=True,
        )
    written = collect_to_store(
        model, store, batch_size=config.batch_size, scheduler=config.scheduler
    )
    timing["forward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    select = None
    for fam in config.components:
        per_layer = [store.score(fam, layer) for layer in store.layers]  # [layer][contrast]
        stat = np.stack([[r.statistic for r in row] for row in per_layer], axis=1)
        pvalue = np.stack([[r.pvalue for r in row] for row in per_layer], axis=1)
        arrays[f"{fam}_score_statistic"] = stat[0] if n_contrasts == 1 else stat
        arrays[f"{fam}_score_pvalue"] = pvalue[0] if n_contrasts == 1 else pvalue
        if config.score_threshold is not None:
            select = select or {}
            select[fam] = ~(pvalue >= config.score_threshold)  # NaN (constant): fitted
    fits = fit_store(
        store, select=select, firth_separated=not config.no_firth, scheduler=config.scheduler
    )
    results = {}
    for fam, per_contrast in fits.items():
        groups = groups_of(fam, store.widths[fam])
        results[fam] = [
            family_result(fit, groups, alpha=config.alpha, correction=config.correction)
            for fit in per_contrast
        ]
        if select is not None:
            fitted = np.stack([f["fitted"] for f in per_contrast])
            arrays[f"{fam}_fitted"] = fitted[0] if n_contrasts == 1 else fitted
    timing["fit"] = time.perf_counter() - t0

    def column(fam: str, row: int, unit: int) -> np.ndarray:
        return store.columns(fam, store.layers[row], unit, unit + 1)[:, 0].astype(np.float64)

    info = {
        "path": config.store,
        "scheduler": config.scheduler or "local (Dask threads)",
        "resumed": resumed,
        "blocks": store.n_blocks,
        "blocks_written": len(written),
        "block_windows": store.block,
        "unit_chunk": store.unit_chunk,
        "score_threshold": config.score_threshold,
        "n_fitted": {
            fam: int(sum(f["fitted"].sum() for f in per_contrast))
            for fam, per_contrast in fits.items()
        },
        "skipped": list(SKIPPED),
    }
    return StoreResults(store.widths, results, arrays, column, info)


def family_result(
    fit: dict[str, np.ndarray], groups: dict[str, slice], *, alpha: float, correction: str
) -> dict[str, Any]:
    """`mechprobe.stats.probe.analyse_family`'s result from fits made elsewhere (no held-out).

    Units not fitted (``fitted`` False) count as tests that are not significant; they are left
    out of the group counts of constant units and of the accuracy means.

    Example:
        >>> fit = {"beta": np.array([[2.0, np.nan]]), "intercept": np.zeros((1, 2)),
        ...        "pvalue": np.array([[1e-9, np.nan]]), "accuracy": np.array([[0.9, np.nan]]),
        ...        "converged": np.array([[True, False]]), "separated": np.zeros((1, 2), bool),
        ...        "fitted": np.array([[True, False]])}
        >>> g = family_result(fit, {"all": slice(0, 2)}, alpha=0.05, correction="bonferroni")
        >>> g["groups"]["all"]["n_constant"].tolist(), g["groups"]["all"]["n_fitted"].tolist()
        ([0], [1])
    """
    from mechprobe.stats.probe import layer_summary, p_threshold, significance_mask

    keys = ("beta", "intercept", "pvalue", "accuracy", "converged", "separated")
    fits = {k: fit[k] for k in keys}
    firth = None
    if "firth_beta" in fit and fit["separated"].any():
        firth = {"beta": fit["firth_beta"], "pvalue": fit["firth_pvalue"]}
    mask = significance_mask(fits["pvalue"], alpha, correction)
    summaries = {}
    for group, sl in groups.items():
        beta, acc, conv, sep = (fits[k][:, sl] for k in keys if k not in ("intercept", "pvalue"))
        g = layer_summary(beta, acc, mask[:, sl], conv, sep)
        fitted = fit["fitted"][:, sl]
        g["n_constant"] = g["n_constant"] - (~fitted).sum(-1)
        g["n_fitted"] = fitted.sum(-1)
        summaries[group] = g
    return {
        "fits": fits,
        "significant": mask,
        "p_threshold": p_threshold(mask, alpha, correction),
        "firth": firth,
        "heldout": None,
        "control": None,
        "shuffled": None,
        "groups": summaries,
    }
