"""E2: isolating and investigating attention heads (the course's dissection of one layer).

One text (no BOS) runs through the model; at one layer the per-head queries and keys come
straight from TransformerLens's hooks (no manual split of a fused projection):

* **Q/K statistics** per head: mean and standard deviation (``ddof=1``, as ``torch.std``) of
  all values of tokens ``1:`` (first token excluded), pooled over the head's ``d_head`` dims.
  They come from ``hook_q`` / ``hook_k``, the projection outputs. On grouped-query models a
  key head serves several query heads: ``k_mean``/``k_std`` are given per *query* head (each
  query head gets the numbers of the key/value head it attends with, `kv_head_of` in
  `mechprobe.stats.attention`), and ``k_mean_kv``/``k_std_kv`` hold the ``[n_kv_heads]`` originals.
* **Raw scores** (unscaled, unmasked), as the course defines them: the last token's query of
  head ``h`` dotted with the keys of head ``h'`` for tokens ``1 .. last-1``. Same-head pairs are
  ``h' = kv_head_of(h)`` (for GPT-2, ``h' = h``), every other key/value head is different.
* **Softmax weights** per head: ``q k^T / sqrt(d_head)``, causal mask, softmax. Groups: the final
  token's weights on all previous tokens (first included), the self-attention of tokens
  ``1:``, and the first token's self-attention (always exactly 1).

Rotary models (Llama/SmolLM2): attention uses the *rotated* queries and keys, so the raw and
scaled scores use ``hook_rot_q`` / ``hook_rot_k`` when the model has them (this is what the
parity checks against ``hook_attn_scores``, ``hook_pattern`` and HF's ``output_attentions``
need); the mean/std statistics use the pre-rotary projection outputs ``hook_q`` / ``hook_k``.
GPT-2 has no rotary embedding, so both come from ``hook_q`` / ``hook_k``.

Orders of the pooled 1-D arrays: ``raw_same`` is head-major then token (``h``, tokens
``1..n-2``); ``raw_diff`` is query head, then key/value head ascending (skipping the same one),
then token; ``attn_final_to_prev`` is head-major over key tokens ``0..n-2``; ``attn_self`` is
head-major over tokens ``1..n-1``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.experiments.heads_detail import default_text, tokenize
from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import (
    Course,
    Experiment,
    Figure,
    Finding,
    Inputs,
    option,
    verdict_of,
)
from mechprobe.models.registry import ModelShape
from mechprobe.validate import (
    Problems,
    check_bandwidth,
    check_count,
    check_index,
    check_indices,
    check_seed,
    check_tolerance,
    parse_float,
    parse_int,
    parse_layers,
    relative_layer,
)

if TYPE_CHECKING:
    from mechprobe.models.types import Model

NAME = "heads"
#: The course dissects layer 6 of GPT-2 small's 12.
COURSE_LAYER = 6


@dataclass(frozen=True)
class HeadsConfig:
    """Settings of the attention-head dissection.

    Attributes:
        layer: Layer to dissect; None: the course's layer 6 of 12 at the same relative depth.
        text: Text to run (no BOS); None: `default_text`.
        bandwidth: ``gaussian_kde`` bandwidth: None or ``"scott"``, ``"silverman"``, a factor.
        tolerance: Largest max-abs difference the parity checks allow.
        truncate: Cut a text longer than the model's context (else that is an error).
        layers: Layers of the per-layer analysis (None: every layer).
        n_boot: Bootstrap resamples of the per-layer intervals.
        seed: Bootstrap seed.

    Example:
        >>> resolve(HeadsConfig(), model_shape(model)).layer  # tiny-gpt2: 2 layers
        1
    """

    layer: int | None = option(
        None,
        "layer to dissect (default: the course's layer 6 of 12 at the same relative depth)",
        parse=parse_int,
    )
    text: str | None = option(None, "text to run, no BOS (default: the shipped passage)")
    bandwidth: float | str | None = option(
        None, "KDE bandwidth: a positive factor, scott (default) or silverman", parse=str
    )
    tolerance: float = option(1e-5, "largest parity |diff| allowed (1e-5)", parse=parse_float)
    truncate: bool = option(False, "cut a text longer than the model's context to fit it")
    layers: tuple[int, ...] | None = option(
        None, "layers of the per-layer analysis: 'all' (default) or 0,3,5", parse=parse_layers
    )
    n_boot: int = option(1000, "bootstrap resamples of the per-layer intervals (1000)")
    seed: int = option(0, "bootstrap seed (0)")


def resolve(config: HeadsConfig, shape: ModelShape) -> HeadsConfig:
    """Fill the layer and text defaults and validate every setting against the model's shape.

    Example:
        >>> resolve(HeadsConfig(layer=5), model_shape(model))
        Traceback (most recent call last):
        ...
        mechprobe.errors.ConfigError: layer: layer 5 is out of range (0..1)
    """
    p = Problems()
    wanted = relative_layer(COURSE_LAYER, shape.n_layers) if config.layer is None else config.layer
    layer = p.check("layer", check_index, wanted, shape.n_layers, "layer")
    bandwidth = p.check("bandwidth", check_bandwidth, config.bandwidth)
    tolerance = p.check("tolerance", check_tolerance, config.tolerance)
    layers = p.check("layers", check_indices, config.layers, shape.n_layers, "layer")
    p.check("n_boot", check_count, config.n_boot, 100, "bootstrap resamples")
    p.check("seed", check_seed, config.seed)
    text = default_text() if config.text is None else config.text
    if not text.strip():
        p.add("text", "the text is empty")
    p.raise_if_any()
    assert layers is not None and tolerance is not None  # raise_if_any: every check passed
    return replace(
        config,
        layer=layer,
        text=text,
        bandwidth=bandwidth,
        tolerance=tolerance,
        layers=tuple(layers),
    )


def inputs(config: HeadsConfig) -> Inputs:
    """The sha256 of the text (a literal setting: nothing to read)."""
    from mechprobe.corpus.text import text_source

    return Inputs({"text": text_source(config.text or default_text()).sha256})


def run(config: HeadsConfig, model: Model, reference: Any, data: None = None) -> ExperimentResult:
    """E2 on one text: the course's dissection of one layer, and raw scores at every layer.

    Args:
        config: The settings, resolved (`resolve`).
        model: A TransformerLens bridge.
        reference: The independent HF ``(model, tokenizer)`` with eager attention, for the
            ``output_attentions`` parity check.
        data: Unused (its text is a literal setting).

    Returns:
        ``ExperimentResult("heads")``: the detail layer's arrays (`heads_detail.dissect`) and,
        per analysed layer, ``layer_frac_<kind>`` with ``_low``/``_high`` (the pooled share of
        negative raw scores over every query position, with its bootstrap interval over query
        positions) and ``layer_holds``; ``summary["parity"]["passed"]`` says whether every parity
        check is within ``config.tolerance``.

    Example:
        >>> res = run(resolve(HeadsConfig(n_boot=200), model_shape(model)), model, (hf, tok))
        >>> res.arrays["q_mean"].shape, res.arrays["layer_frac_same"].shape
        ((4,), (2,))
    """
    from mechprobe.activations import collect
    from mechprobe.experiments.heads_detail import dissect
    from mechprobe.hooks import hook_name
    from mechprobe.models.registry import model_shape
    from mechprobe.stats.attention import pooled_negative_fraction, query_position_scores

    shape = model_shape(model)
    tokens = tokenize(model.tokenizer, config.text or default_text(), shape.n_ctx, config.truncate)
    arrays, summary = dissect(config, model, reference, tokens)
    t0 = time.perf_counter()
    layers = list(config.layers or ())
    rotary = all(hook_name(0, p) in model.hook_dict for p in ("rot_q", "rot_k"))
    points = ("rot_q", "rot_k") if rotary else ("q", "k")
    names = [hook_name(layer, p) for layer in layers for p in points]
    acts = collect(model, tokens, names, progress=False)
    per_layer: dict[str, list[float]] = {
        f"{k}_{kind}": [] for kind in ("same", "diff") for k in ("frac", "low", "high")
    }
    holds = []
    for layer in layers:
        q, k = (acts[hook_name(layer, p)][0] for p in points)
        pooled = pooled_negative_fraction(
            query_position_scores(q, k), n_boot=config.n_boot, seed=config.seed
        )
        for kind in ("same", "diff"):
            r = pooled[kind]
            per_layer[f"frac_{kind}"].append(r["fraction"])
            per_layer[f"low_{kind}"].append(r["low"])
            per_layer[f"high_{kind}"].append(r["high"])
        kinds = [kind for kind in ("same", "diff") if pooled[kind]["n_pairs"]]
        holds.append(all(pooled[kind]["low"] > 0.5 for kind in kinds))
    for key, values in per_layer.items():
        stat, kind = key.split("_")
        arrays[f"layer_frac_{kind}" + ("" if stat == "frac" else f"_{stat}")] = np.array(values)
    arrays["layers"] = np.array(layers, dtype=np.int64)
    arrays["layer_holds"] = np.array(holds)
    summary.update(
        layers=layers,
        per_layer_scores="every query position q >= 2 against keys 1..q-1 (the course: the last "
        "query only); bootstrap over query positions",
        n_boot=config.n_boot,
        per_layer_s=round(time.perf_counter() - t0, 3),
    )
    return ExperimentResult(NAME, arrays, summary)


def finding(result: ExperimentResult) -> Finding:
    """The course's claim at every layer: most raw scores (same- and different-head) negative.

    At a layer the claim holds when the 95% bootstrap interval (over query positions) of the
    share of negative scores lies above 0.5 for every kind of pair the model has; over the
    model it holds when it holds at more than half of the layers, partly when at some. The
    course's own numbers (the last query at the course's layer) are given beside.
    """
    s, a = result.summary, result.arrays
    layers, holds = s["layers"], a["layer_holds"]
    f, m = s["negative_fraction"], s["median"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    same = a["layer_frac_same"]
    best = int(np.argmax(same))
    n_hold = int(holds.sum())
    verdict = verdict_of(n_hold > len(layers) / 2, partly=n_hold > 0)
    this_run = (
        f"The claim holds at {n_hold} of {len(layers)} layers. Same-head pairs are "
        f"{pct(float(np.min(same)))} to {pct(float(np.max(same)))} negative across layers (most "
        f"at layer {layers[best]}: {pct(float(same[best]))}, 95% CI "
        f"{pct(float(a['layer_frac_same_low'][best]))}-{pct(float(a['layer_frac_same_high'][best]))})"
    )
    if np.isfinite(a["layer_frac_diff"]).any():
        diff = a["layer_frac_diff"]
        this_run += (
            f"; different-head pairs {pct(float(np.nanmin(diff)))} to {pct(float(np.nanmax(diff)))}"
        )
    this_run += (
        f". The course's sample (the last query, layer {s['layer']}): same-head {pct(f['same'])} "
        f"negative (median {m['same']:.3g}), different-head {pct(f['diff'])}."
    )
    return Finding(
        claim="Raw QK scores shift strongly negative (most are below zero), which is what "
        "makes softmax attention sparse.",
        this_run=this_run,
        verdict=verdict,
        key=f"holds at {n_hold}/{len(layers)} layers",
        sample=f"one text of {s['n_tokens']} tokens: every query position at each of "
        f"{len(layers)} layers; 95% percentile bootstrap over query positions ({s['n_boot']} "
        "resamples; positions share keys, so the intervals are optimistic)",
    )


def checks(result: ExperimentResult) -> list[dict[str, Any]]:
    """The parity checks (manual scores and softmax against TL hooks and HF), pass/fail."""
    from mechprobe.experiments.crosscheck import within

    p = result.summary["parity"]
    return [
        {"check": k, "where": f"layer {result.summary['layer']}", "value": v,
         "tolerance": p["tolerance"], "passed": within(v, p["tolerance"])}
        for k, v in p.items()
        if k not in ("tolerance", "passed")
    ]  # fmt: skip


def passed(result: ExperimentResult) -> bool:
    """Whether every parity check is within the tolerance."""
    return bool(result.summary["parity"]["passed"])


def table(result: ExperimentResult) -> str:
    """The text printed after a run: raw-score statistics and the parity checks."""
    s = result.summary
    frac, med, n = s["negative_fraction"], s["median"], s["n_pairs"]

    def fmt(x: float | None, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    lines = [
        f"layer {s['layer']} of {s['n_layers']}, {s['n_tokens']} tokens, {s['n_heads']} heads / "
        f"{s['n_kv_heads']} kv heads (scores from "
        f"{', '.join(h.rsplit('.', 1)[1] for h in s['hooks']['scores'])})",
        f"{'raw scores':<18}{'pairs':>8}{'negative':>10}{'median':>12}",
    ]
    for key, label in (("same", "same head"), ("diff", "different heads")):
        lines.append(f"{label:<18}{n[key]:>8}{fmt(frac[key], '.1%'):>10}{fmt(med[key], '.4g'):>12}")
    a = result.arrays
    lines.append("every query position, per layer: share of negative raw scores [95% CI]")
    for i, layer in enumerate(s["layers"]):
        cells = []
        for kind in ("same", "diff"):
            frac = a[f"layer_frac_{kind}"][i]
            if np.isfinite(frac):
                lo, hi = a[f"layer_frac_{kind}_low"][i], a[f"layer_frac_{kind}_high"][i]
                cells.append(f"{kind} {frac:6.1%} [{lo:.1%}, {hi:.1%}]")
        mark = "holds" if a["layer_holds"][i] else ""
        lines.append(f"  layer {layer:>3}: " + "  ".join(cells) + f"  {mark}")
    p = s["parity"]
    for key in (k for k in p if k not in ("tolerance", "passed")):
        mark = "ok" if p[key] <= p["tolerance"] else "FAIL"
        lines.append(f"parity {key:<32}{p[key]:>11.3e}  {mark}")
    return "\n".join(lines)


def depth_curves(result: ExperimentResult) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer: the share of negative raw scores by pair kind (for ``mechprobe sweep``)."""
    a, layers = result.arrays, result.summary["layers"]
    out = {"negative raw scores, same-head": (layers, a["layer_frac_same"].tolist())}
    if np.isfinite(a["layer_frac_diff"]).any():
        out["negative raw scores, diff-head"] = (layers, a["layer_frac_diff"].tolist())
    return out


SPEC = Experiment(
    name=NAME,
    title="E2: isolating attention heads",
    help="E2: dissect one layer's attention heads: Q/K statistics, raw scores, softmax weights",
    config=HeadsConfig,
    run=run,
    resolve=resolve,
    inputs=inputs,
    figures=(
        Figure(
            "negative_by_layer",
            "Negative raw scores at every layer",
            "Per layer, the share of negative raw query-key scores over every query position "
            "(same-head pairs blue, different-head red) with its 95% bootstrap band over query "
            "positions; the course's claim is the band above the dashed 0.5 line. The ringed "
            "point is the course's layer.",
        ),
        Figure(
            "raw_hist",
            "Raw attention scores: same vs different heads",
            "Distribution of the last token's raw query-key dot products with earlier tokens, "
            "for a query head with its own key head (blue) and with the other key heads (red). "
            "Mass left of the dashed zero line is what the course's claim is about.",
        ),
        Figure(
            "raw_strip",
            "Raw attention scores, every pair",
            "Every raw score as a dot, same-head pairs left and different-head pairs right; "
            "the dashed line is zero.",
        ),
        Figure(
            "softmax_groups",
            "Softmax weights in the course's three groups",
            "Each dot is a softmax weight: the final token's weights on every previous token, "
            "every token's weight on itself (tokens 1:), and the first token's weight on itself "
            "(always 1: it can only attend to itself).",
        ),
        Figure(
            "kde_bandwidths",
            "What a KDE's bandwidth does",
            "The density of the final token's softmax weights estimated with several bandwidth "
            "factors: small ones follow single values (wiggly), large ones smear them out; the "
            "thick line is the rule the run used.",
        ),
        Figure(
            "attn_kde",
            "Softmax attention weights",
            "Density (max = 1) of the final token's softmax weights on the previous tokens and "
            "of each token's weight on itself: mass near 0 with a few weights near 1 is sparse "
            "attention.",
        ),
        Figure(
            "patterns",
            "Attention pattern of every head",
            "One heatmap per query head: rows are query tokens, columns key tokens, colour the "
            "softmax weight (0 to 1). A bright first column is attention to the first token.",
        ),
        Figure(
            "qk_means",
            "Q and K per head",
            "Mean of each head's query and key values over tokens 1: with one standard "
            "deviation as error bars; on grouped-query models each query head shows the key "
            "head it uses.",
        ),
        Figure(
            "qk_scatter",
            "Q against K per head",
            "Each labelled point is a head: query against key mean (left) and standard "
            "deviation (right).",
        ),
    ),
    table=table,
    finding=finding,
    passed=passed,
    checks=checks,
    needs_reference=True,
    course=Course(model="gpt2", overrides={"layer": COURSE_LAYER}),
    depth_curves=depth_curves,
)
