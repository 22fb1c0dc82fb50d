"""Probe any classes: per-unit logistic probes at labelled tokens, with held-out tests and controls.

Samples come from a class file (`mechprobe.corpus.classes`: word lists, substrings, a regular
expression and next-token conditions per class; the negation preset is the course's rule) applied
to a text, or from a JSONL of labelled positions (`mechprobe.corpus.labels`). Each sample's window
``[pos - pre, pos + post]`` runs through the model and the units at the sample are kept, for each
family of hook points: ``qkv`` (flat Q|K|V from ``hook_q/k/v``), ``mlp`` (``mlp.hook_pre``),
``resid_post``, ``attn_z`` and ``mlp_post``. Each unit gets the course's probe ``label ~ 1 +
activation`` (one-vs-rest for more than two classes), tested per layer (Bonferroni or
Benjamini-Hochberg), and, by default:

* held-out accuracy and ROC AUC from stratified folds grouped so that no two samples whose windows
  overlap fall on different sides of a split (`mechprobe.stats.heldout`);
* a control task in the manner of Hewitt and Liang (2019): each word type gets a random class,
  class sizes kept; selectivity = real minus control held-out accuracy per layer;
* a label-shuffle baseline for the percentage of significant units;
* a lexical baseline: the same probes on the token embedding alone (``hook_embed``);
* whole-layer and k-sparse probes per layer (`mechprobe.stats.layer_probe`: L2 logistic on every
  unit of a layer, and on its top 1, 8, 64 units; penalty and units chosen inside the training
  folds), the nested best unit, on the real and control labels, the embedding and a
  random-weights copy of the model;
* Firth's penalised fit for separated units (finite beta, profile-likelihood p), or for every unit
  with ``method="firth"``.

Example:
    >>> from pathlib import Path
    >>> story = "It is not here, but we can go. The keeper walked along the old harbour wall. "
    >>> _ = Path("story.txt").write_text(story * 60, encoding="utf-8")
    >>> config = ProbeConfig(text="story.txt", context_pre=5, context_post=1, folds=3)
    >>> config = resolve(config, model_shape(model))
    >>> res = run(config, model)
    >>> res.arrays["mlp_heldout_accuracy"].shape  # [layer, units]
    (2, 256)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Experiment, Figure, Finding, Inputs, option
from mechprobe.models.registry import ModelShape
from mechprobe.validate import (
    Problems,
    check_count,
    check_index,
    check_indices,
    check_number,
    check_seed,
    parse_choices,
    parse_float,
    parse_int,
    parse_layers,
    relative_layer,
)

if TYPE_CHECKING:
    from mechprobe.models.types import Model

NAME = "probe"
FAMILIES = ("qkv", "mlp", "resid_post", "attn_z", "mlp_post")
CORRECTIONS = ("bonferroni", "fdr")
#: The course's detail layer: MLP layer 13 of gpt2-large's 36.
COURSE_DETAIL = (13, 36)


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of a probe (defaults: the negation preset with the course's settings).

    Attributes:
        classes: Class file (TOML or JSON); None: the negation preset (the course's rule).
        labels: JSONL of labelled positions, instead of a class file and a text.
        text: Text source of a class file: a path, an ``http(s)`` URL or ``gutenberg:ID``.
        unit: Match classes on single tokens (``token``, the course's) or whole ``word``s.
        word_token: The token of a multi-token word where the sample sits: ``first``/``last``.
        layers: Layer indices; None: every layer.
        components: Hook-point families among `FAMILIES`.
        context_pre: Tokens of context before each sample.
        context_post: Tokens after each sample.
        max_samples: Keep the first N samples of each class (text order).
        balance: Subsample every class to the size of the smallest.
        seed: Seed of balance, folds, the control task and the shuffle.
        batch_size: Windows per forward pass.
        alpha: Significance level (family: one layer's units of one family).
        correction: ``bonferroni`` or ``fdr``.
        folds: Held-out folds (0: no held-out statistics, no control task).
        no_controls: Skip the control task, the label shuffle and the lexical baseline.
        no_random_model: Skip the random-weights model (`mechprobe.models.loading.
            random_weights_model`, seed ``1000 + seed``) whose whole-layer probes are the
            verdict's third baseline.
        method: ``ml`` (the course's) or ``firth`` for every unit.
        no_firth: Do not refit separated units with Firth's method.
        best_unit: ``course`` (largest beta among significant units of the detail MLP layer)
            or ``accuracy`` (the most accurate converged unit of any layer).
        detail_layer: Layer of the beta/volcano figures and the course's best unit.
        heatmap_windows: Windows of the last class in the best unit's token heatmap.
        save_activations: Also store ``C_acts`` ``[n, n_layers, n_units]`` float32.
        max_download_mb: Largest text download accepted, in MB.
        store: A zarr store (path or fsspec URL): activations are written there block by
            block (a killed collection resumes) and fitted from there with Dask; the held-out
            statistics, controls and lexical baseline are skipped (`probe_store`).
        scheduler: A dask.distributed scheduler (``tcp://HOST:PORT``) for ``store``: collection
            and fits run on its workers; None: here, on Dask's local scheduler.
        score_threshold: With ``store``, fit only the units whose streaming score test gives
            ``p`` below this; None: fit every unit.
    """

    classes: str | None = option(None, "class file, TOML or JSON (default: the negation preset)")
    labels: str | None = option(None, "JSONL of labelled positions (instead of classes and text)")
    text: str | None = option(
        None,
        "a path, an http(s) URL or gutenberg:ID (default: $MECHPROBE_TEXT if set, else "
        "gutenberg:32154); downloads are cached",
    )
    unit: str = option(
        "token", "match classes on tokens (the course's) or words", choices=("token", "word")
    )
    word_token: str = option("first", "a word's token for its sample", choices=("first", "last"))
    layers: tuple[int, ...] | None = option(None, "'all' (default) or 0,3,5", parse=parse_layers)
    components: tuple[str, ...] = option(
        ("qkv", "mlp"),
        f"comma list of {', '.join(FAMILIES)} (qkv,mlp)",
        parse=lambda t: parse_choices(t, FAMILIES),
    )
    context_pre: int = option(90, "tokens before a sample (90)")
    context_post: int = option(10, "tokens after a sample (10)")
    max_samples: int | None = option(
        None, "keep the first N samples of each class", parse=parse_int
    )
    balance: bool = option(False, "subsample every class to the smallest (seeded)")
    seed: int = option(0, "seed of balance, folds, control task and shuffle (0)")
    batch_size: int = option(32, "windows per forward pass (32)")
    alpha: float = option(0.05, "significance level (0.05)")
    correction: str = option("bonferroni", "bonferroni (the course's) or fdr", choices=CORRECTIONS)
    folds: int = option(5, "held-out folds, overlapping windows kept together (5; 0: off)")
    no_controls: bool = option(False, "skip the control task, label shuffle and lexical baseline")
    no_random_model: bool = option(
        False, "skip the random-weights control model (same architecture, seeded, no download)"
    )
    method: str = option("ml", "ml (the course's) or firth for every unit", choices=("ml", "firth"))
    no_firth: bool = option(False, "do not refit separated units with Firth's method")
    best_unit: str = option(
        "course",
        "course (largest beta at the detail MLP layer) or accuracy",
        choices=("course", "accuracy"),
    )
    detail_layer: int | None = option(
        None,
        "layer of the detail figures (default: the course's 13 of 36, same depth)",
        parse=parse_int,
    )
    heatmap_windows: int = option(20, "windows in the best unit's heatmap (20)")
    save_activations: bool = option(False, "also store C_acts [n, n_layers, n_units] float32")
    max_download_mb: float = option(32.0, "largest text download accepted, in MB (32)")
    store: str | None = option(
        None,
        "write the activations to this zarr store (a path or an fsspec URL) block by block and "
        "fit from it with Dask; a killed collection resumes (skips held-out, controls)",
        metavar="PATH",
    )
    scheduler: str | None = option(
        None,
        "with --store: a dask.distributed scheduler tcp://HOST:PORT to collect and fit on "
        "(default: this machine, Dask's local scheduler)",
        metavar="ADDRESS",
    )
    score_threshold: float | None = option(
        None,
        "with --store: fit only units whose streaming score-test p is below this (default: all)",
        parse=parse_float,
        metavar="P",
    )


def resolve(config: ProbeConfig, shape: ModelShape) -> ProbeConfig:
    """Resolve layers and the detail layer; validate every setting against the model.

    Example:
        >>> resolve(ProbeConfig(folds=1, seed=-2), model_shape(model))
        Traceback (most recent call last):
        ...
        mechprobe.errors.ConfigError: seed: seed -2 is outside [0, 2**32); folds: folds must ...
    """
    p = Problems()
    layers = p.check("layers", check_indices, config.layers, shape.n_layers, "layer")
    pre = p.check("context_pre", check_count, config.context_pre, 0)
    post = p.check("context_post", check_count, config.context_post, 0 if config.labels else 1)
    if pre is not None and post is not None and pre + post + 1 > shape.n_ctx:
        p.add(
            "context_pre",
            f"a window of {pre} + 1 + {post} tokens is longer than the model's "
            f"context of {shape.n_ctx}",
        )
    if not config.components or any(c not in FAMILIES for c in config.components):
        p.add("components", f"expected some of {', '.join(FAMILIES)}, got {config.components!r}")
    if config.max_samples is not None:
        p.check("max_samples", check_count, config.max_samples)
    p.check("seed", check_seed, config.seed)
    p.check("batch_size", check_count, config.batch_size)
    p.check("alpha", check_number, config.alpha, low=0.0, high=1.0, inclusive=False, what="alpha")
    folds = p.check("folds", check_count, config.folds, 0, "folds")
    if folds == 1:
        p.add("folds", "folds must be 0 (no held-out statistics) or at least 2, got 1")
    p.check("heatmap_windows", check_count, config.heatmap_windows)
    p.check("max_download_mb", check_number, config.max_download_mb, low=0.001, what="limit")
    for name, allowed in (
        ("correction", CORRECTIONS),
        ("unit", ("token", "word")),
        ("word_token", ("first", "last")),
        ("method", ("ml", "firth")),
        ("best_unit", ("course", "accuracy")),
    ):
        if getattr(config, name) not in allowed:
            p.add(name, f"expected one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    if config.labels and (config.classes or config.text):
        p.add("labels", "give labels or classes and a text, not both")
    _check_store(p, config)
    detail = config.detail_layer
    if layers and detail is None:
        course = relative_layer(COURSE_DETAIL[0], shape.n_layers, COURSE_DETAIL[1])
        detail = min(layers, key=lambda layer: abs(layer - course))
    elif (
        layers and p.check("detail_layer", check_index, detail, shape.n_layers, "layer") is not None
    ):
        if detail not in layers:
            p.add("detail_layer", f"layer {detail} is not among the selected layers")
    p.raise_if_any()
    assert layers is not None  # raise_if_any: every check passed
    return replace(config, layers=tuple(layers), detail_layer=detail)


def _check_store(p: Problems, config: ProbeConfig) -> None:
    """The store settings: a scheduler and a threshold need a store; what a store leaves out."""
    if config.store is None:
        for name in ("scheduler", "score_threshold"):
            if getattr(config, name) is not None:
                p.add(name, "is used only with an activation store (store)")
        return
    missing = _missing_scale_packages(distributed=config.scheduler is not None)
    if missing:
        p.add(
            "scheduler" if missing == ["distributed"] else "store",
            f"needs {', '.join(missing)}, which the base install leaves out: "
            "pip install 'mechprobe[scale]'",
        )
    if config.score_threshold is not None:
        p.check("score_threshold", check_number, config.score_threshold, low=0.0, high=1.0)
    if config.save_activations:
        p.add("save_activations", "the activation store already holds the activations")
    if config.method == "firth":
        p.add("method", "firth for every unit is not fitted from an activation store")
    if config.scheduler is not None and "://" not in config.scheduler:
        p.add("scheduler", f"expected an address such as tcp://HOST:8786, got {config.scheduler!r}")


def _missing_scale_packages(distributed: bool) -> list[str]:
    """The packages of the ``scale`` extra that a store (and a scheduler) need and lack.

    Example:
        >>> _missing_scale_packages(distributed=False)
        []
    """
    import importlib.util

    names = ["zarr", "dask"] + (["distributed"] if distributed else [])
    return [n for n in names if importlib.util.find_spec(n) is None]


def inputs(config: ProbeConfig) -> Inputs:
    """The text and the class file (or the labels), read once and checked, with their sha256."""
    from mechprobe.experiments.probe_samples import load_probe_data

    data = load_probe_data(config)
    return Inputs(dict(data.sha256), data)


def run(
    config: ProbeConfig, model: Model, reference: Any = None, data: Any = None
) -> ExperimentResult:
    """Run a probe: samples, collection, analysis (see the module docstring).

    Args:
        config: The settings, resolved (`resolve`).
        model: A TransformerLens bridge.
        reference: Unused.
        data: The documents and classes (`mechprobe.experiments.probe_samples.ProbeData`);
            None: read what ``config`` names.

    Returns:
        ``ExperimentResult("probe")`` with, per family ``C``, ``C_beta``, ``C_pvalue``,
        ``C_accuracy``, ``C_converged``, ``C_separated``, ``C_significant`` and, where
        computed, ``C_heldout_accuracy``, ``C_heldout_auc``, ``C_control_accuracy``,
        ``C_firth_beta``, ``C_firth_pvalue`` (``[layer, units]``; a leading class axis for more
        than two classes), ``labels``, ``positions``, ``documents``, ``layers``, the best
        unit's arrays and the lexical baseline ``embed_*``.
    """
    from mechprobe.experiments.probe_analysis import analyse
    from mechprobe.experiments.probe_samples import take_samples

    t0 = time.perf_counter()
    samples = take_samples(config, model.tokenizer, data)
    result = analyse(config, model, samples)
    result.summary["settings"] = asdict(config)
    result.summary["timing_s"]["total"] = time.perf_counter() - t0
    return ExperimentResult(NAME, result.arrays, result.summary)


def finding(result: ExperimentResult) -> Finding:
    """Where the classes are separable, held out, beyond the control task and the embedding."""
    from mechprobe.experiments.probe_report import probe_finding

    return probe_finding(result, claim=None)


def table(result: ExperimentResult) -> str:
    """Per-layer text table: % significant, held-out accuracy, selectivity per group."""
    from mechprobe.experiments.probe_report import probe_table

    return probe_table(result)


FIGURES = (
    Figure(
        "laminar",
        "Separability per layer, with controls",
        "Per layer and family (Q/K/V left, the others right): the percentage of significant "
        "units (top; dotted: the same with shuffled labels, the false-positive level), the mean "
        "held-out accuracy of all units (middle; dotted: the control task, grey: the token "
        "embedding alone, thin line: chance, the majority class's share) and the selectivity, "
        "held-out minus control accuracy (bottom): separability that the control task matches "
        "is word identity, not the classes.",
    ),
    Figure(
        "layer_probes",
        "Whole-layer and best-unit probes per layer",
        "Per layer and family, held-out accuracy of the whole-layer probe (L2 logistic on every "
        "unit), the nested best unit and the mean unit, with Wilson 95% bands, against the "
        "control task, the token embedding and a random-weights model: decoding that these "
        "baselines match is word identity or architecture, not the classes.",
    ),
    Figure(
        "volcano",
        "Effect size against significance",
        "Each dot is a unit of the detail layer: its probe's beta (x) against -log10 p (y); dots "
        "above the dashed threshold are significant after the correction (separated units: "
        "Firth's beta and p).",
    ),
    Figure(
        "beta_by_unit",
        "Beta per unit",
        "Each unit's beta at the detail layer, in unit order (Q, K, V heads in turn, then the MLP "
        "units); large dots are significant units.",
    ),
    Figure(
        "best_unit_probabilities",
        "The best unit's predictions",
        "P(second class) that the best unit's probe gives each sample, in text order, coloured by "
        "the true class: a good unit separates the colours at 0.5.",
    ),
    Figure(
        "best_unit_heatmap",
        "The best unit over windows",
        "The best unit's activation at each token around the first samples of the last class "
        "(column 0 is the sample), coloured as the course does: min-max scaled over all windows, "
        "then squared; whitespace drawn as · and ↵.",
    ),
)

SPEC = Experiment(
    name=NAME,
    title="Probe: any classes, held out, with controls",
    help="probe every unit at tokens of any classes (class file or labelled positions)",
    config=ProbeConfig,
    run=run,
    resolve=resolve,
    inputs=inputs,
    figures=FIGURES,
    table=table,
    finding=finding,
    text_source=True,
    in_all=False,
)
