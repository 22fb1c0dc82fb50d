"""E1: negation tuning of Q/K/V and MLP units, every layer (the course's experiment, exactly).

The text (by default *The Variable Man*, Gutenberg #32154) is tokenized whole, without BOS;
negation and affirmation targets are picked by :func:`mechprobe.corpus.targets.select_targets`; each
target's window ``tokens[ti - pre : ti + post + 1]`` is run through the model and the units at
the target (index ``pre``) are kept: ``qkv`` (flat Q|K|V from ``hook_q/k/v``; GPT-2: the
columns of ``attn.c_attn``) and ``mlp`` (``mlp.hook_pre``; GPT-2: ``c_fc`` before GELU, gated
MLPs: the gate projection). Each unit gets a univariate logistic probe
``label ~ 1 + activation`` (`mechprobe.stats.logistic.fit_logistic`; affirmation 0, negation 1),
and per layer we report the percentage of significant units (Bonferroni ``p < alpha /
n_units_per_layer`` or Benjamini-Hochberg), the mean accuracy of all units and of the
significant units with ``beta > 0``, for Q|K|V together, Q, K and V separately, and the MLP.

Example:
    >>> from pathlib import Path
    >>> _ = Path("story.txt").write_text("It is not here, but we can go. " * 60, encoding="utf-8")
    >>> config = resolve(NegationConfig(text="story.txt", context_pre=5), model_shape(model))
    >>> result = run(config, model)
    >>> result.arrays["qkv_beta"].shape  # [layer, units]
    (2, 192)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Course, Experiment, Figure, Finding, option, verdict_of
from mechprobe.models.registry import ModelShape
from mechprobe.validate import (
    Problems,
    check_count,
    check_index,
    check_indices,
    check_number,
    check_seed,
    parse_choices,
    parse_int,
    parse_layers,
)

__all__ = ["SPEC", "NegationConfig", "finding", "resolve", "run", "table"]

NAME = "negation"
FAMILIES = ("qkv", "mlp")
CORRECTIONS = ("bonferroni", "fdr")
#: The finding's test: a family "separates" the classes in a layer where at least this share of
#: its units is significant; the claim holds when that is so in most layers, for both families.
SIGNIFICANT_SHARE = 10.0


@dataclass(frozen=True)
class NegationConfig:
    """Settings of the negation experiment (defaults: the course's configuration).

    Attributes:
        text: Text source: path, ``http(s)`` URL or ``gutenberg:ID``; None means
            ``$MECHPROBE_TEXT`` if set, else ``gutenberg:32154``.
        layers: Layer indices to probe; None for all layers.
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
        max_download_mb: Largest text download accepted (a URL source), in MB.
    """

    text: str | None = option(
        None,
        "a path, an http(s) URL or gutenberg:ID (default: $MECHPROBE_TEXT if set, else "
        "gutenberg:32154); downloads are cached",
    )
    layers: tuple[int, ...] | None = option(
        None, "'all' (default) or a comma list, e.g. 0,3,5", parse=parse_layers
    )
    components: tuple[str, ...] = option(
        FAMILIES, "qkv, mlp or qkv,mlp (default)", parse=lambda t: parse_choices(t, FAMILIES)
    )
    context_pre: int = option(90, "tokens before a target (90)")
    context_post: int = option(10, "tokens after a target (10)")
    max_samples: int | None = option(
        None, "keep the first N targets of each class (text order)", parse=parse_int
    )
    balance: bool = option(False, "subsample the larger class to the smaller (seeded)")
    seed: int = option(0, "seed for --balance and --cv (0)")
    batch_size: int = option(32, "windows per forward pass (32)")
    alpha: float = option(0.05, "significance level (0.05)")
    correction: str = option(
        "bonferroni",
        "bonferroni (p < alpha / units per layer, default) or fdr (Benjamini-Hochberg)",
        choices=CORRECTIONS,
    )
    cv: int = option(0, "K-fold stratified cross-validated accuracy (0: off)")
    save_activations: bool = option(False, "also store C_acts [n, n_layers, n_units] float32")
    detail_layer: int | None = option(
        None, "layer of the beta and volcano figures (default: the middle layer)", parse=parse_int
    )
    heatmap_windows: int = option(20, "negation windows in the best unit's heatmap (20)")
    max_download_mb: float = option(32.0, "largest text download accepted, in MB (32)")


def resolve(config: NegationConfig, shape: ModelShape) -> NegationConfig:
    """Resolve the layers and the detail layer; validate every setting against the model.

    Example:
        >>> resolve(NegationConfig(context_pre=300), model_shape(model))
        Traceback (most recent call last):
        ...
        mechprobe.errors.ConfigError: context_pre: a window of 300 + 1 + 10 tokens is longer ...
    """
    p = Problems()
    layers = p.check("layers", check_indices, config.layers, shape.n_layers, "layer")
    pre = p.check("context_pre", check_count, config.context_pre, 0)
    post = p.check("context_post", check_count, config.context_post, 1)
    if pre is not None and post is not None and pre + post + 1 > shape.n_ctx:
        p.add(
            "context_pre",
            f"a window of {pre} + 1 + {post} tokens is longer than the model's context of "
            f"{shape.n_ctx}",
        )
    if not config.components or any(c not in FAMILIES for c in config.components):
        p.add("components", f"expected qkv and/or mlp, got {config.components!r}")
    if config.max_samples is not None:
        p.check("max_samples", check_count, config.max_samples)
    p.check("seed", check_seed, config.seed)
    p.check("batch_size", check_count, config.batch_size)
    p.check("alpha", check_number, config.alpha, low=0.0, high=1.0, inclusive=False, what="alpha")
    if config.correction not in CORRECTIONS:
        p.add("correction", f"expected bonferroni or fdr, got {config.correction!r}")
    if config.cv:
        p.check("cv", check_count, config.cv, 2, "cv folds")
    p.check("heatmap_windows", check_count, config.heatmap_windows)
    p.check("max_download_mb", check_number, config.max_download_mb, low=0.001, what="limit")
    detail = config.detail_layer
    if layers and detail is None:
        detail = layers[len(layers) // 2]
    elif (
        layers and p.check("detail_layer", check_index, detail, shape.n_layers, "layer") is not None
    ):
        if detail not in layers:
            p.add("detail_layer", f"layer {detail} is not among the selected layers")
    p.raise_if_any()
    return replace(config, layers=tuple(layers), detail_layer=detail)


def inputs(config: NegationConfig) -> dict[str, str]:
    """The sha256 of the text (loading, or downloading once, the source)."""
    return {"text": _load(config).sha256}


def _load(config: NegationConfig) -> Any:
    from mechprobe.corpus.text import load_text

    return load_text(config.text, max_bytes=int(config.max_download_mb * 2**20))


def run(config: NegationConfig, model: Any, reference: Any = None) -> ExperimentResult:
    """Run the negation-tuning experiment: load, collect, analyse.

    Args:
        config: The settings, resolved (`resolve`).
        model: A TransformerLens bridge.
        reference: Unused (the probes need no HF reference).

    Returns:
        ``ExperimentResult("negation")``: arrays ``labels``, ``positions``, ``layers`` and per
        family ``C_beta``, ``C_pvalue``, ``C_accuracy``, ``C_converged``, ``C_separated``,
        ``C_significant`` (``[n_layers, n_units]``), optionally ``C_cv_accuracy`` and
        ``C_acts``, plus the best unit's ``best_unit_probability`` and ``best_unit_heatmap``;
        the summary holds the per-layer figures.

    Raises:
        MechprobeError: A text too short, or without a target of a class.
    """
    from mechprobe.activations import collect_units
    from mechprobe.corpus.targets import AFFIRMATION, NEGATION, prepare_samples
    from mechprobe.models.registry import model_shape
    from mechprobe.stats import probe
    from mechprobe.stats.folds import stratified_folds
    from mechprobe.units import layout_of

    t_start = time.perf_counter()
    source = _load(config)
    shape, layout, layers = model_shape(model), layout_of(model), list(config.layers)
    pre = config.context_pre
    t0 = time.perf_counter()
    samples = prepare_samples(
        model.tokenizer,
        source.text,
        pre=pre,
        post=config.context_post,
        max_samples=config.max_samples,
        balance=config.balance,
        seed=config.seed,
    )
    labels = samples.targets.labels
    folds = stratified_folds(labels, config.cv, config.seed) if config.cv else None
    timing = {"tokenize_select": time.perf_counter() - t0}

    t0 = time.perf_counter()
    acts = collect_units(
        model, samples.windows, pre, layers, config.components, batch_size=config.batch_size
    )
    timing["forward"] = time.perf_counter() - t0

    arrays: dict[str, np.ndarray] = {
        "labels": labels.astype(np.int8),
        "positions": samples.targets.positions.astype(np.int64),
        "layers": np.asarray(layers, dtype=np.int64),
    }
    fits, per_layer = {}, [{"layer": L} for L in layers]
    thresholds, flags, n_units = {}, {}, {}
    t0 = time.perf_counter()
    for fam in config.components:
        x, groups = acts[fam], layout.groups(fam, acts[fam].shape[2])
        res = probe.analyse_family(
            x, labels, groups, alpha=config.alpha, correction=config.correction, folds=folds,
            desc=f"fit {fam}",
        )  # fmt: skip
        fits[fam] = res["fits"]
        for key in ("beta", "pvalue", "accuracy", "converged", "separated"):
            arrays[f"{fam}_{key}"] = res["fits"][key]
        arrays[f"{fam}_significant"] = res["significant"]
        if res["cv_accuracy"] is not None:
            arrays[f"{fam}_cv_accuracy"] = res["cv_accuracy"]
        if config.save_activations:
            arrays[f"{fam}_acts"] = x.float().numpy()
        thresholds[fam] = {"n_units": int(x.shape[2]), "p": res["p_threshold"].tolist()}
        flags[fam] = {
            k: int(res["groups"][fam][k].sum())
            for k in ("n_separated", "n_constant", "n_not_converged")
        }
        for group, figs in res["groups"].items():
            n_units[group] = groups[group].stop - groups[group].start
            for i, row in enumerate(per_layer):
                row[group] = {k: v[i].item() for k, v in figs.items()}
        for i, row in enumerate(per_layer):
            row[fam]["p_threshold"] = float(res["p_threshold"][i])
    timing["fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    best = _best_unit_details(model, samples, acts, fits, layers, config, arrays)
    timing["best_unit"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "text": source.describe(),
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
            "slices": {c: [sl.start, sl.stop] for c, sl in layout.slices().items()},
        },
        "alpha": config.alpha,
        "correction": config.correction,
        "threshold_rule": "p < alpha / n_units"
        if config.correction == "bonferroni"
        else "Benjamini-Hochberg: p <= k * alpha / n_units",
        "thresholds": thresholds,
        "fit_flags": flags,
        "detail_layer": config.detail_layer,
        "per_layer": per_layer,
        "best_unit": best,
        "model_shape": shape.as_dict(),
        "settings": asdict(config),
        "timing_s": timing,
    }
    return ExperimentResult(NAME, arrays, summary)


def _best_unit_details(
    model: Any,
    samples: Any,
    acts: dict[str, Any],
    fits: dict[str, dict[str, np.ndarray]],
    layers: list[int],
    config: NegationConfig,
    arrays: dict[str, np.ndarray],
) -> dict[str, Any] | None:
    """The best unit's details: its probabilities and its activation over negation windows.

    One small extra forward pass; adds ``best_unit_probability`` and ``best_unit_heatmap`` to
    ``arrays``.
    """
    from mechprobe.activations import collect
    from mechprobe.corpus.targets import NEGATION
    from mechprobe.hooks import hook_name
    from mechprobe.stats.probe import best_unit
    from mechprobe.units import heads_to_units, layout_of

    best = best_unit(fits)
    if best is None:
        return None
    fam, row, unit = best
    f, L, pre = fits[fam], layers[row], config.context_pre
    if fam == "mlp":
        hook, col, where = hook_name(L, "mlp_pre"), unit, {"group": "mlp", "neuron": unit}
    else:
        comp, head, dim = layout_of(model).locate(unit)
        col = unit - layout_of(model).slice(comp).start
        hook, where = hook_name(L, comp), {"group": comp, "head": head, "dim": dim}
    xu = acts[fam][:, row, unit].double().numpy()
    with np.errstate(over="ignore"):
        arrays["best_unit_probability"] = 1.0 / (
            1.0 + np.exp(-(f["intercept"][row, unit] + f["beta"][row, unit] * xu))
        )
    labels = samples.targets.labels
    rows = np.flatnonzero(labels == NEGATION)[: config.heatmap_windows]
    lo, hi = max(0, pre - 5), min(pre + config.context_post, pre + 10)

    def pick(name: str, t: Any) -> Any:
        return (heads_to_units(t) if t.ndim == 4 else t)[..., col]

    heat = collect(
        model, samples.windows[rows], [hook], batch_size=config.batch_size, transform=pick,
        progress=False,
    )[hook]  # fmt: skip
    arrays["best_unit_heatmap"] = heat[:, lo : hi + 1].float().numpy()
    starts = samples.targets.positions[rows] - pre
    return {
        "component": fam,
        "layer": L,
        "unit": unit,
        "hook": hook,
        "hook_column": col,
        **where,
        "accuracy": float(f["accuracy"][row, unit]),
        "beta": float(f["beta"][row, unit]),
        "intercept": float(f["intercept"][row, unit]),
        "pvalue": float(f["pvalue"][row, unit]),
        "heatmap_offsets": list(range(lo - pre, hi - pre + 1)),
        "heatmap_positions": [int(p) for p in samples.targets.positions[rows]],
        "heatmap_tokens": [[samples.pieces[int(s) + j] for j in range(lo, hi + 1)] for s in starts],
    }


def finding(result: ExperimentResult) -> Finding:
    """The course's claim: many Q/K/V and MLP units in most layers separate the two classes.

    Operationalised as: for each family, at least `SIGNIFICANT_SHARE` % of its units are
    significant in more than half of the layers; the claim holds when that is so for every
    family probed, partly when for some.
    """
    s = result.summary
    rows, parts, holds = s["per_layer"], [], []
    for fam in s["components"]:
        pct = np.array([r[fam]["percent_significant"] for r in rows])
        n_ok = int((pct >= SIGNIFICANT_SHARE).sum())
        holds.append(n_ok > len(rows) / 2)
        peak = int(np.argmax(pct))
        parts.append(
            f"{'Q|K|V' if fam == 'qkv' else 'MLP'}: {pct[0]:.0f}% significant at layer "
            f"{rows[0]['layer']}, peak {pct[peak]:.0f}% at layer {rows[peak]['layer']}, "
            f"{pct[-1]:.0f}% at layer {rows[-1]['layer']}; >= {SIGNIFICANT_SHARE:g}% in {n_ok} "
            f"of {len(rows)} layers"
        )
    return Finding(
        claim="In GPT-2 a sizeable share of Q/K/V and MLP units in most layers separates "
        "negation from affirmation tokens, with high probe accuracy.",
        this_run=f"{s['n_negation']} negation / {s['n_affirmation']} affirmation targets. "
        + "; ".join(parts)
        + f" ({s['correction']}, alpha {s['alpha']:g}).",
        verdict=verdict_of(all(holds), partly=any(holds)),
        key="; ".join(
            p.split(":")[0] + ": peak " + p.split("peak ")[1].split(" at")[0] for p in parts
        ),
        sample=f"{s['n_negation'] + s['n_affirmation']} targets in one text; in-sample tests "
        f"per unit, {s['correction']} per layer",
    )


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "   -  "
    return f"{x:6.1f}" if pct else f"{x:6.3f}"


def table(result: ExperimentResult) -> str:
    """Per-layer text table: % significant / mean accuracy / accuracy of sig. beta>0 units."""
    s = result.summary
    t = s["text"]
    head = [
        f"text {t['source']} (sha256 {t['sha256'][:12]}"
        f"{', FALLBACK sample text' if t['fallback'] else ''}), "
        f"{s['n_tokens']} tokens; n = {s['n_affirmation']} affirmation / {s['n_negation']} "
        f"negation (found {s['n_found']['affirmation']} / {s['n_found']['negation']})",
        f"significance: {s['correction']}, alpha {s['alpha']:g}; columns: % significant, mean "
        "accuracy (all units), mean accuracy (significant, beta > 0)",
    ]
    groups = [g for g in ("qkv", "q", "k", "v", "mlp") if g in s["per_layer"][0]]
    lines = [
        *head,
        "layer " + "".join(f"| {g.upper():^22}" for g in groups),
        "      " + "| %sig   acc    acc+  " * len(groups),
    ]
    for row in s["per_layer"]:
        cells = "".join(
            f"|{_fmt(row[g]['percent_significant'], True)} {_fmt(row[g]['mean_accuracy'])} "
            f"{_fmt(row[g]['mean_accuracy_sig_pos'])} "
            for g in groups
        )
        lines.append(f"{row['layer']:>5} {cells}")
    for fam, fl in s["fit_flags"].items():
        lines.append(
            f"{fam}: {fl['n_separated']} separated, {fl['n_constant']} constant, "
            f"{fl['n_not_converged']} not converged unit fits (p = NaN)"
        )
    b = s["best_unit"]
    if b:
        lines.append(
            f"best unit: {b['component']} layer {b['layer']} unit {b['unit']} ({b['group']}), "
            f"accuracy {b['accuracy']:.3f}, beta {b['beta']:.3g}, p {b['pvalue']:.3g}"
        )
    tm = s["timing_s"]
    lines.append(
        f"time: forward {tm['forward']:.1f} s, fit {tm['fit']:.1f} s, total {tm['total']:.1f} s"
    )
    return "\n".join(lines)


def depth_curves(result: ExperimentResult) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer: the share of significant units of each family (for ``mechprobe sweep``)."""
    s = result.summary
    rows = s["per_layer"]
    return {
        f"% significant, {'Q|K|V' if fam == 'qkv' else 'MLP'}": (
            [r["layer"] for r in rows],
            [r[fam]["percent_significant"] for r in rows],
        )
        for fam in s["components"]
    }


SPEC = Experiment(
    name=NAME,
    title="E1: negation tuning in Q/K/V and MLP units",
    help="E1: probe every Q/K/V and MLP unit at negation vs affirmation tokens, every layer",
    config=NegationConfig,
    run=run,
    resolve=resolve,
    inputs=inputs,
    figures=(
        Figure(
            "laminar",
            "Negation tuning per layer",
            "Per layer: the percentage of units whose probe is significant (top), the mean "
            "in-sample accuracy of all units (middle) and of the significant units with beta > "
            "0 (bottom); Q/K/V on the left (dashed: Q|K|V together), MLP on the right.",
        ),
        Figure(
            "volcano",
            "Effect size against significance",
            "Each dot is a unit of the detail layer: its probe's beta (x) against -log10 p (y); "
            "dots above the dashed threshold are significant after the correction.",
        ),
        Figure(
            "beta_by_unit",
            "Beta per unit",
            "Each unit's beta at the detail layer, in unit order (Q, K, V heads in turn, then the "
            "MLP); large dots are significant units.",
        ),
        Figure(
            "best_unit_probabilities",
            "The best unit's predictions",
            "P(negation) that the most accurate unit's probe gives each sample, in text order, "
            "coloured by the true class: a good unit separates red from blue at 0.5.",
        ),
        Figure(
            "best_unit_heatmap",
            "The best unit over negation windows",
            "The best unit's activation (colour) at each token around the first negation "
            "targets (column 0 is the target; whitespace drawn as · and ↵).",
        ),
    ),
    table=table,
    finding=finding,
    course=Course(model="gpt2-large", needs_text=True),
    text_source=True,
    depth_curves=depth_curves,
)
