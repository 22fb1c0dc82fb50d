"""E1: negation tuning of Q/K/V and MLP units, every layer (the course's experiment, exactly).

The text (by default *The Variable Man*, Gutenberg #32154) is tokenized whole, without BOS;
negation and affirmation targets are picked by :func:`mechprobe.corpus.select_targets`; each
target's window ``tokens[ti - pre : ti + post + 1]`` is run through the model and the units at
the target (index ``pre``) are kept: ``qkv`` (flat Q|K|V from ``hook_q/k/v``; GPT-2: the
columns of ``attn.c_attn``) and ``mlp`` (``mlp.hook_pre``; GPT-2: ``c_fc`` before GELU, gated
MLPs: the gate projection). Each unit gets a univariate logistic probe
``label ~ 1 + activation`` (:func:`mechprobe.stats.fit_logistic`; affirmation 0, negation 1),
and per layer we report the percentage of significant units (Bonferroni ``p < alpha /
n_units_per_layer`` or Benjamini-Hochberg), the mean accuracy of all units and of the
significant units with ``beta > 0``, for Q|K|V together, Q, K and V separately, and the MLP.

Example:
    >>> result = run_negation(NegationConfig(model="tiny-gpt2", text="story.txt", max_samples=40))
    >>> result.save("out", figures=figures(result))  # doctest: +SKIP
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechprobe.corpus import (
    AFFIRMATION,
    NEGATION,
    Targets,
    TextSource,
    balance_targets,
    decode_pieces,
    first_per_class,
    load_text,
    make_windows,
    select_targets,
    tokenize_text,
)
from mechprobe.errors import MechprobeError, check_index
from mechprobe.experiments.result import ExperimentResult
from mechprobe.units import COMPONENTS, QKVLayout

__all__ = [
    "NAME",
    "NegationConfig",
    "Samples",
    "cv_accuracy",
    "fit_layers",
    "group_slices",
    "layer_figures",
    "p_threshold",
    "prepare_samples",
    "resolve_layers",
    "run_negation",
    "significance_mask",
    "stratified_folds",
]

NAME = "negation"
UNIT_COMPONENTS = ("qkv", "mlp")
CORRECTIONS = ("bonferroni", "fdr")

LayerUnits = Float[np.ndarray, "layer units"]
LayerMask = Bool[np.ndarray, "layer units"]


@dataclass(frozen=True)
class NegationConfig:
    """Settings of the negation experiment (defaults: the course's configuration).

    Attributes:
        model: Model name (see ``mechprobe models``).
        text: Text source: path, ``http(s)`` URL or ``gutenberg:ID``; ``None`` means
            ``$MECHPROBE_TEXT`` if set, else ``gutenberg:32154``.
        layers: Layer indices to probe; ``None`` for all layers.
        components: Unit families: ``"qkv"`` and/or ``"mlp"``.
        context_pre: Tokens of context before each target.
        context_post: Tokens after each target.
        max_samples: Keep only the first N targets of each class (text order).
        balance: Subsample the larger class to the size of the smaller one.
        seed: Seed for ``balance`` and the cross-validation folds.
        batch_size: Windows per forward pass.
        alpha: Significance level (family: the units of one layer and component).
        correction: ``"bonferroni"`` (``p < alpha / n_units``) or ``"fdr"`` (Benjamini-Hochberg).
        cv: Folds of stratified cross-validation (0: off).
        save_activations: Also store ``C_acts`` ``[n, n_layers, n_units]`` float32.
        detail_layer: Layer of the beta/volcano figures (default: the middle selected layer).
        heatmap_windows: Negation windows in the best unit's token heatmap.
        device: Torch device (default: CUDA if available).
    """

    model: str = "smollm2-135m"
    text: str | None = None
    layers: tuple[int, ...] | None = None
    components: tuple[str, ...] = UNIT_COMPONENTS
    context_pre: int = 90
    context_post: int = 10
    max_samples: int | None = None
    balance: bool = False
    seed: int = 0
    batch_size: int = 32
    alpha: float = 0.05
    correction: str = "bonferroni"
    cv: int = 0
    save_activations: bool = False
    detail_layer: int | None = None
    heatmap_windows: int = 20
    device: str | None = None


# --------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    """The tokenized text, its targets and their windows.

    Attributes:
        ids: Token ids of the whole text.
        pieces: Each token decoded on its own.
        targets: The targets used (after ``max_samples`` / ``balance``).
        n_found: Targets found per class before subsampling (``{"affirmation", "negation"}``).
        windows: ``[n, pre + post + 1]`` token ids; the target sits at index ``pre``.
    """

    ids: list[int]
    pieces: list[str]
    targets: Targets
    n_found: dict[str, int]
    windows: Int[Tensor, "batch pos"]


def prepare_samples(tokenizer: Any, text: str, config: NegationConfig) -> Samples:
    """Tokenize ``text``, select targets (course rule) and cut their windows.

    Raises:
        MechprobeError: Text too short for one window, or no target of a class.

    Example:
        >>> s = prepare_samples(model.tokenizer, text, NegationConfig(max_samples=40))
        >>> s.windows.shape
        torch.Size([80, 101])
    """
    pre, post = config.context_pre, config.context_post
    ids = tokenize_text(tokenizer, text)
    if len(ids) <= pre + post:
        raise MechprobeError(
            f"text too short: {len(ids)} tokens, need more than {pre + post} "
            f"(context {pre} before and {post} after a target)"
        )
    pieces = decode_pieces(tokenizer, ids)
    targets = select_targets(pieces, pre, post)
    n_found = {"affirmation": targets.count(AFFIRMATION), "negation": targets.count(NEGATION)}
    missing = [name for name, n in n_found.items() if n == 0]
    if missing:
        raise MechprobeError(
            f"no {' or '.join(missing)} targets in the text ({len(ids)} tokens, "
            f"{n_found['affirmation']} affirmation, {n_found['negation']} negation); "
            "both classes are needed"
        )
    if config.max_samples is not None:
        targets = first_per_class(targets, config.max_samples)
    if config.balance:
        targets = balance_targets(targets, config.seed)
    windows = make_windows(ids, targets.positions, pre, post)
    return Samples(ids, pieces, targets, n_found, windows)


def resolve_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Validate layer indices (negative allowed) and return them sorted, without duplicates.

    Example:
        >>> resolve_layers([0, -1], 30)
        [0, 29]
    """
    if layers is None:
        return list(range(n_layers))
    if len(layers) == 0:
        raise MechprobeError("no layers selected")
    return sorted({check_index("layer", int(L), n_layers, f"{n_layers} layers") for L in layers})


# --------------------------------------------------------------------------------------
# fitting and per-layer figures
# --------------------------------------------------------------------------------------


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
        >>> fits = fit_layers(acts["mlp"], labels)
        >>> fits["pvalue"].shape
        (2, 256)
    """
    from mechprobe.stats import fit_logistic

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
    from mechprobe.stats import bonferroni_mask, fdr_mask

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


def layer_figures(
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
        >>> f = layer_figures(beta, acc, mask, conv, sep)
        >>> f["percent_significant"].shape
        (30,)
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


def group_slices(component: str, layout: QKVLayout, n_units: int) -> dict[str, slice]:
    """Unit groups of a component: ``qkv`` -> qkv, q, k, v (GQA-aware); ``mlp`` -> mlp.

    Example:
        >>> group_slices("qkv", QKVLayout(9, 3, 64), 960)["v"]
        slice(768, 960, None)
    """
    if component == "qkv":
        return {"qkv": slice(0, n_units), **{c: layout.slice(c) for c in COMPONENTS}}
    return {component: slice(0, n_units)}


# --------------------------------------------------------------------------------------
# cross-validation
# --------------------------------------------------------------------------------------


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per sample: each class shuffled (seeded) and dealt round-robin.

    Raises:
        MechprobeError: If ``k < 2`` or a class has fewer than ``k`` samples.

    Example:
        >>> stratified_folds(np.array([0, 0, 1, 1]), 2).tolist()  # doctest: +SKIP
        [1, 0, 0, 1]
    """
    if k < 2:
        raise MechprobeError(f"cv needs at least 2 folds, got {k}")
    folds = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < k:
            raise MechprobeError(f"cv {k}: class {int(label)} has only {len(idx)} samples")
        folds[rng.permutation(idx)] = np.arange(len(idx)) % k
    return folds


def _predict(fit: Any, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """``p_hat > 0.5`` per test sample and unit (float 0/1; NaN where no prediction exists).

    Regular units: ``intercept + beta x > 0``. Constant units: the intercept-only model.
    Separated units: the limit of the diverging fit, a threshold halfway between the classes.
    """
    beta, icpt = fit.beta[None, :], fit.intercept[None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        pred = (icpt + beta * x_test > 0).astype(np.float64)
    regular = np.isfinite(fit.beta) & np.isfinite(fit.intercept)
    constant = np.isnan(fit.beta) & np.isfinite(fit.intercept)
    pred[:, constant] = (fit.intercept[constant] > 0).astype(np.float64)
    sep = fit.separated & np.isinf(fit.beta)
    if sep.any():
        xs, pos = x_train[:, sep], y_train > 0.5
        up = fit.beta[sep] > 0  # class 1 above the boundary
        lo = np.where(up, xs[~pos].max(0), xs[pos].max(0))
        hi = np.where(up, xs[pos].min(0), xs[~pos].min(0))
        thr = (lo + hi) / 2
        above = x_test[:, sep] > thr
        below = x_test[:, sep] < thr
        pred[:, sep] = np.where(up, above, below).astype(np.float64)
    pred[:, ~(regular | constant | sep)] = np.nan
    return pred


def cv_accuracy(
    x: Float[np.ndarray, "batch units"] | Tensor,
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    device: str | torch.device | None = None,
) -> Float[np.ndarray, " units"]:
    """Cross-validated accuracy per unit: fit on the other folds, predict the held-out fold.

    Returns the fraction of all samples predicted correctly when held out (``p_hat > .5``).

    Example:
        >>> acc = cv_accuracy(x, y, stratified_folds(y, 5))
    """
    from mechprobe.stats import fit_logistic

    x = x.double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    correct = np.zeros(x.shape[1])
    for f in np.unique(folds):
        test = folds == f
        fit = fit_logistic(x[~test], y[~test], device=device)
        pred = _predict(fit, x[~test], y[~test], x[test])
        correct += (pred == y[test, None]).sum(0)
        correct[np.isnan(pred).any(0)] = np.nan
    return correct / len(y)


# --------------------------------------------------------------------------------------
# best unit
# --------------------------------------------------------------------------------------


def _best_unit(fits: dict[str, dict[str, np.ndarray]]) -> tuple[str, int, int] | None:
    """(component, layer row, unit) with the highest accuracy among converged units."""
    best: tuple[float, float, str, int, int] | None = None
    for comp, f in fits.items():
        acc = np.where(f["converged"], f["accuracy"], -np.inf)
        if not np.isfinite(acc).any():
            continue
        top = np.nanmax(acc)
        cand = np.argwhere(acc == top)
        p = f["pvalue"][tuple(cand.T)]
        i = int(np.nanargmin(p)) if np.isfinite(p).any() else 0
        key = (float(top), -float(p[i]) if np.isfinite(p[i]) else -1.0)
        if best is None or key > best[:2]:
            best = (*key, comp, int(cand[i][0]), int(cand[i][1]))
    return None if best is None else best[2:]


def _unit_hook(component: str, layer: int, unit: int, layout: QKVLayout) -> tuple[str, int, dict]:
    """Hook name, column within that hook's flat units, and a description of the unit."""
    if component == "mlp":
        return f"blocks.{layer}.mlp.hook_pre", unit, {"group": "mlp", "neuron": unit}
    for c in COMPONENTS:
        s = layout.slice(c)
        if s.start <= unit < s.stop:
            col = unit - s.start
            head, dim = divmod(col, layout.d_head)
            return (
                f"blocks.{layer}.attn.hook_{c}",
                col,
                {"group": c, "head": head, "dim": dim},
            )
    raise ValueError(f"unit {unit} out of range")  # pragma: no cover


def _heatmap(
    model: Any,
    windows: Tensor,
    hook: str,
    col: int,
    batch_size: int,
) -> Float[Tensor, "batch pos"]:
    """Activations of one unit at every position of ``windows`` (one small extra forward)."""
    from mechprobe.activations import collect
    from mechprobe.units import heads_to_units

    def pick(name: str, t: Tensor) -> Tensor:
        flat = heads_to_units(t) if t.ndim == 4 else t
        return flat[..., col]

    return collect(model, windows, [hook], batch_size=batch_size, transform=pick, progress=False)[
        hook
    ]


# --------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _jsonable_figures(figs: dict[str, np.ndarray], i: int) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for k, v in figs.items():
        out[k] = int(v[i]) if k.startswith("n_") else float(v[i])
    return out


def run_negation(
    config: NegationConfig,
    *,
    model: Any = None,
    reference: Any = None,
    source: TextSource | None = None,
) -> ExperimentResult:
    """Run the negation-tuning experiment.

    Args:
        config: The settings.
        model: A loaded bridge (loaded from ``config.model`` if None).
        reference: Unused (accepted so that every experiment has the same signature).
        source: An already loaded text (default: ``load_text(config.text)``).

    Returns:
        An `ExperimentResult` named ``negation``: arrays ``labels``, ``positions``, ``layers``
        and per component ``C_beta``, ``C_pvalue``, ``C_accuracy``, ``C_converged``,
        ``C_separated``, ``C_significant`` (``[n_layers, n_units]``), optionally
        ``C_cv_accuracy`` and ``C_acts``, plus the best unit's ``best_unit_probability``
        and ``best_unit_heatmap``; the summary holds the per-layer figures.

    Raises:
        MechprobeError: Bad settings or text (see `prepare_samples`).

    Example:
        >>> res = run_negation(NegationConfig(model="tiny-gpt2", text="story.txt"))
        >>> res.summary["n_negation"], res.arrays["qkv_beta"].shape  # doctest: +SKIP
        (216, (2, 192))
    """
    del reference
    t_start = time.perf_counter()
    _check_config(config)
    source = source if source is not None else load_text(config.text)

    from mechprobe.activations import collect_units
    from mechprobe.models import load_model
    from mechprobe.models.registry import model_shape
    from mechprobe.units import layout_of

    t0 = time.perf_counter()
    model = model if model is not None else load_model(config.model, device=config.device)
    t_load = time.perf_counter() - t0
    shape = model_shape(model)
    layers = resolve_layers(config.layers, shape.n_layers)
    if config.detail_layer is None:
        detail = layers[len(layers) // 2]
    else:
        detail = check_index("detail-layer", config.detail_layer, shape.n_layers)
        if detail not in layers:
            raise MechprobeError(f"detail-layer {detail} is not among the selected layers")
    layout = layout_of(model)

    t0 = time.perf_counter()
    samples = prepare_samples(model.tokenizer, source.text, config)
    labels = samples.targets.labels
    t_tokenize = time.perf_counter() - t0
    if config.cv:
        folds = stratified_folds(labels, config.cv, config.seed)

    pre = config.context_pre
    t0 = time.perf_counter()
    acts = collect_units(
        model,
        samples.windows,
        positions=pre,
        layers=layers,
        components=config.components,
        batch_size=config.batch_size,
        desc="forward",
    )
    t_forward = time.perf_counter() - t0

    fit_device = next(model.parameters()).device
    fit_device = fit_device if fit_device.type != "cpu" else None
    arrays: dict[str, np.ndarray] = {
        "labels": labels.astype(np.int8),
        "positions": samples.targets.positions.astype(np.int64),
        "layers": np.asarray(layers, dtype=np.int64),
    }
    fits: dict[str, dict[str, np.ndarray]] = {}
    per_layer: list[dict[str, Any]] = [{"layer": L} for L in layers]
    thresholds: dict[str, Any] = {}
    flags: dict[str, dict[str, int]] = {}
    n_units: dict[str, int] = {}
    t_fit = t_cv = 0.0
    for comp in config.components:
        x = acts[comp]
        t0 = time.perf_counter()
        f = fit_layers(x, labels, desc=f"fit {comp}", device=fit_device)
        t_fit += time.perf_counter() - t0
        fits[comp] = f
        mask = significance_mask(f["pvalue"], config.alpha, config.correction)
        arrays[f"{comp}_beta"] = f["beta"]
        arrays[f"{comp}_pvalue"] = f["pvalue"]
        arrays[f"{comp}_accuracy"] = f["accuracy"]
        arrays[f"{comp}_converged"] = f["converged"]
        arrays[f"{comp}_separated"] = f["separated"]
        arrays[f"{comp}_significant"] = mask
        cv = None
        if config.cv:
            t0 = time.perf_counter()
            cv = np.stack(
                [
                    cv_accuracy(x[:, i, :], labels, folds, device=fit_device)
                    for i in tqdm(range(len(layers)), desc=f"cv {comp}", disable=len(layers) < 2)
                ]
            )
            t_cv += time.perf_counter() - t0
            arrays[f"{comp}_cv_accuracy"] = cv
        if config.save_activations:
            arrays[f"{comp}_acts"] = x.float().numpy()
        thr = p_threshold(mask, config.alpha, config.correction)
        thresholds[comp] = {
            "n_units": int(x.shape[2]),
            "rule": "p < alpha / n_units"
            if config.correction == "bonferroni"
            else "Benjamini-Hochberg: p <= k * alpha / n_units",
            "p": [float(t) for t in thr],
        }
        for group, s in group_slices(comp, layout, x.shape[2]).items():
            n_units[group] = s.stop - s.start
            figs = layer_figures(
                f["beta"][:, s], f["accuracy"][:, s], mask[:, s], f["converged"][:, s],
                f["separated"][:, s],
            )  # fmt: skip
            if cv is not None:
                figs["mean_cv_accuracy"] = np.nanmean(cv[:, s], -1)
            if group == comp:
                flags[comp] = {
                    k: int(figs[k].sum()) for k in ("n_separated", "n_constant", "n_not_converged")
                }
            for i, row in enumerate(per_layer):
                row[group] = _jsonable_figures(figs, i)
                if group == comp:
                    row[group]["p_threshold"] = float(thr[i])

    # ---- the best unit: predicted probabilities and a token heatmap -------------------
    t0 = time.perf_counter()
    best_info: dict[str, Any] | None = None
    best = _best_unit(fits)
    if best is not None:
        comp, row, unit = best
        f = fits[comp]
        L = layers[row]
        hook, col, desc = _unit_hook(comp, L, unit, layout)
        xu = acts[comp][:, row, unit].double().numpy()
        with np.errstate(over="ignore"):
            prob = 1.0 / (1.0 + np.exp(-(f["intercept"][row, unit] + f["beta"][row, unit] * xu)))
        arrays["best_unit_probability"] = prob
        neg_rows = np.flatnonzero(labels == NEGATION)[: config.heatmap_windows]
        lo, hi = max(0, pre - 5), min(pre + config.context_post, pre + 10)
        heat = _heatmap(model, samples.windows[neg_rows], hook, col, config.batch_size)
        arrays["best_unit_heatmap"] = heat[:, lo : hi + 1].float().numpy()
        starts = samples.targets.positions[neg_rows] - pre
        best_info = {
            "component": comp,
            "layer": L,
            "unit": unit,
            "hook": hook,
            "hook_column": col,
            **desc,
            "accuracy": float(f["accuracy"][row, unit]),
            "beta": float(f["beta"][row, unit]),
            "intercept": float(f["intercept"][row, unit]),
            "pvalue": float(f["pvalue"][row, unit]),
            "heatmap_offsets": list(range(lo - pre, hi - pre + 1)),
            "heatmap_positions": [int(p) for p in samples.targets.positions[neg_rows]],
            "heatmap_tokens": [
                [samples.pieces[int(s) + j] for j in range(lo, hi + 1)] for s in starts
            ],
        }
    t_best = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "experiment": NAME,
        "model": config.model,
        "model_shape": shape.as_dict(),
        "text": source.describe(),
        "text_source": source.source,
        "text_sha256": source.sha256,
        "text_fallback": source.fallback,
        "n_tokens": len(samples.ids),
        "n_affirmation": samples.targets.count(AFFIRMATION),
        "n_negation": samples.targets.count(NEGATION),
        "n_found": samples.n_found,
        "labels": {"affirmation": AFFIRMATION, "negation": NEGATION},
        "layers": layers,
        "components": list(config.components),
        "n_units": n_units,
        "qkv_layout": {
            "n_heads": layout.n_heads,
            "n_kv_heads": layout.n_kv_heads,
            "d_head": layout.d_head,
            "slices": {c: [layout.slice(c).start, layout.slice(c).stop] for c in COMPONENTS},
        },
        "alpha": config.alpha,
        "correction": config.correction,
        "thresholds": thresholds,
        "fit_flags": flags,
        "detail_layer": detail,
        "per_layer": per_layer,
        "best_unit": best_info,
        "config": asdict(config),
        "timing_s": {
            "load_model": t_load,
            "tokenize_select": t_tokenize,
            "forward": t_forward,
            "fit": t_fit,
            "cv": t_cv,
            "best_unit": t_best,
            "total": time.perf_counter() - t_start,
        },
        "peak_rss_mb": _peak_rss_mb(),
        "versions": _versions(),
    }
    return ExperimentResult(NAME, arrays, summary)


def _check_config(config: NegationConfig) -> None:
    bad = [c for c in config.components if c not in UNIT_COMPONENTS]
    if bad or not config.components:
        raise MechprobeError(f"components must be among qkv, mlp; got {','.join(bad) or 'none'}")
    if len(set(config.components)) != len(config.components):
        raise MechprobeError("components listed twice")
    if config.correction not in CORRECTIONS:
        raise MechprobeError(f"unknown correction {config.correction!r} (bonferroni or fdr)")
    if not 0.0 < config.alpha < 1.0:
        raise MechprobeError(f"alpha must be in (0, 1), got {config.alpha}")
    if config.batch_size < 1:
        raise MechprobeError(f"batch size must be at least 1, got {config.batch_size}")
    if config.cv and config.cv < 2:
        raise MechprobeError(f"cv needs at least 2 folds, got {config.cv}")
    if config.context_pre < 0 or config.context_post < 1:
        raise MechprobeError("context-pre must be >= 0 and context-post >= 1")
    if config.heatmap_windows < 1:
        raise MechprobeError("heatmap windows must be at least 1")


def _versions() -> dict[str, str]:
    import transformers

    import mechprobe

    return {
        "mechprobe": mechprobe.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
