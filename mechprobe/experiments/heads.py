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
from typing import Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Course, Experiment, Figure, Finding, option, verdict_of
from mechprobe.models.registry import ModelShape
from mechprobe.validate import (
    Problems,
    check_bandwidth,
    check_index,
    check_tolerance,
    parse_float,
    parse_int,
    relative_layer,
)

NAME = "heads"
DEFAULT_TEXT_FILE = "heads_default.txt"
KDE_POINTS = 300
MIN_TOKENS = 3
#: The course dissects layer 6 of GPT-2 small's 12.
COURSE_LAYER = 6


def default_text() -> str:
    """The project's default passage (two factual sentences, about 35 tokens).

    Example:
        >>> default_text().startswith("Copper")
        True
    """
    from mechprobe.data import read_data_text

    return read_data_text(DEFAULT_TEXT_FILE).strip()


@dataclass(frozen=True)
class HeadsConfig:
    """Settings of the attention-head dissection.

    Attributes:
        layer: Layer to dissect; None: the course's layer 6 of 12 at the same relative depth.
        text: Text to run (no BOS); None: `default_text`.
        bandwidth: ``gaussian_kde`` bandwidth: None or ``"scott"``, ``"silverman"``, a factor.
        tolerance: Largest max-abs difference the parity checks allow.
        truncate: Cut a text longer than the model's context (else that is an error).

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


def resolve(config: HeadsConfig, shape: ModelShape) -> HeadsConfig:
    """Fill the layer and text defaults and validate every setting against the model's shape.

    Example:
        >>> resolve(HeadsConfig(layer=5), model_shape(model))
        Traceback (most recent call last):
        ...
        mechprobe.errors.ConfigError: layer: layer 5 is out of range (0..1)
    """
    p = Problems()
    layer = relative_layer(COURSE_LAYER, shape.n_layers) if config.layer is None else config.layer
    layer = p.check("layer", check_index, layer, shape.n_layers, "layer")
    bandwidth = p.check("bandwidth", check_bandwidth, config.bandwidth)
    tolerance = p.check("tolerance", check_tolerance, config.tolerance)
    text = default_text() if config.text is None else config.text
    if not text.strip():
        p.add("text", "the text is empty")
    p.raise_if_any()
    return replace(config, layer=layer, text=text, bandwidth=bandwidth, tolerance=tolerance)


def inputs(config: HeadsConfig) -> dict[str, str]:
    """The sha256 of the text."""
    from mechprobe.corpus.text import text_source

    return {"text": text_source(config.text or default_text()).sha256}


def tokenize(tokenizer: Any, text: str, n_ctx: int, truncate: bool = False) -> Any:
    """Token ids of ``text`` without BOS, ``[1, pos]``; 3 tokens at least, the context at most.

    Example:
        >>> tokenize(tok, default_text(), 256).shape
        torch.Size([1, 34])
    """
    import torch

    from mechprobe.validate import fit_context

    ids = tokenizer(text, add_special_tokens=False).input_ids
    p = Problems()
    if len(ids) < MIN_TOKENS:
        p.add(
            "text",
            f"the text has {len(ids)} token(s); the head analysis needs at least {MIN_TOKENS} "
            "(first token, at least one middle token, last token)",
        )
    ids = p.check("text", fit_context, ids, n_ctx, truncate) or ids
    p.raise_if_any()
    return torch.tensor([ids], dtype=torch.long)


def run(config: HeadsConfig, model: Any, reference: Any) -> ExperimentResult:
    """Dissect the attention heads of one layer on one text (see the module docstring).

    Args:
        config: The settings, resolved (`resolve`).
        model: A TransformerLens bridge.
        reference: The independent HF ``(model, tokenizer)`` with eager attention, for the
            ``output_attentions`` parity check.

    Returns:
        ``ExperimentResult("heads")``; ``summary["parity"]["passed"]`` says whether every
        parity check is within ``config.tolerance``.

    Example:
        >>> res = run(resolve(HeadsConfig(), model_shape(model)), model, (hf, tok))
        >>> res.arrays["q_mean"].shape, res.summary["parity"]["passed"]
        ((4,), True)
    """
    import torch

    from mechprobe.activations import collect
    from mechprobe.experiments.crosscheck import max_abs_diff, within
    from mechprobe.hooks import hook_name
    from mechprobe.models.registry import model_shape
    from mechprobe.reference import capture_reference
    from mechprobe.stats import attention as att

    start = time.perf_counter()
    shape = model_shape(model)
    layer = config.layer
    tokens = tokenize(model.tokenizer, config.text, shape.n_ctx, config.truncate)
    rotary = all(hook_name(layer, p) in model.hook_dict for p in ("rot_q", "rot_k"))
    q_point, k_point = ("rot_q", "rot_k") if rotary else ("q", "k")
    points = list(dict.fromkeys(["q", "k", q_point, k_point, "scores", "pattern"]))
    got = collect(model, tokens, [hook_name(layer, p) for p in points], progress=False)
    acts = {p: got[hook_name(layer, p)][0] for p in points}

    # Per-head statistics of the projection outputs (pre-rotary), tokens 1:.
    q_mean, q_std = att.head_stats(acts["q"])
    k_mean_kv, k_std_kv = att.head_stats(acts["k"])
    kv_of = torch.from_numpy(att.kv_head_of(shape.n_heads, shape.n_kv_heads))

    # Raw scores from the queries/keys attention really uses (rotated on rotary models).
    q_att, k_att = acts[q_point], acts[k_point]
    raw = att.raw_scores(q_att, k_att).numpy()
    raw_same, raw_diff = att.split_same_diff(raw)

    # Scaled, masked softmax in the model's dtype, and the parity checks.
    mask = att.causal_mask(tokens.shape[1])
    scores = att.scaled_scores(q_att, att.expand_kv(k_att, shape.n_heads))
    pattern = att.masked_softmax(scores, mask)
    hf_attn = capture_reference(reference[0], tokens, layers=[layer])["attentions"][layer][0]
    parity = {
        "scores_vs_hook_attn_scores": max_abs_diff(scores[:, mask], acts["scores"][:, mask]),
        "softmax_vs_hook_pattern": max_abs_diff(pattern, acts["pattern"]),
        "softmax_vs_hf_attentions": max_abs_diff(pattern, hf_attn),
        "hook_pattern_vs_hf_attentions": max_abs_diff(acts["pattern"], hf_attn),
    }
    ok = all(within(d, config.tolerance) for d in parity.values())

    pattern_np = pattern.double().numpy()
    final_to_prev = pattern_np[:, -1, :-1].reshape(-1)
    self_attn = np.diagonal(pattern_np, axis1=1, axis2=2)[:, 1:].reshape(-1)
    first_self = pattern_np[:, 0, 0]
    grid = np.linspace(0.0, 1.0, KDE_POINTS)
    raw_all = np.concatenate([raw_same, raw_diff])
    raw_grid = np.linspace(raw_all.min(), raw_all.max(), KDE_POINTS)
    kdes = {
        "final_to_prev": att.kde_curve(final_to_prev, grid, config.bandwidth),
        "self": att.kde_curve(self_attn, grid, config.bandwidth),
        "raw_same": att.kde_curve(raw_same, raw_grid, config.bandwidth),
        "raw_diff": att.kde_curve(raw_diff, raw_grid, config.bandwidth),
    }
    arrays = {
        "q_mean": q_mean.numpy(),
        "q_std": q_std.numpy(),
        "k_mean": k_mean_kv[kv_of].numpy(),
        "k_std": k_std_kv[kv_of].numpy(),
        "k_mean_kv": k_mean_kv.numpy(),
        "k_std_kv": k_std_kv.numpy(),
        "raw_scores": raw,
        "raw_same": raw_same,
        "raw_diff": raw_diff,
        "attn_final_to_prev": final_to_prev,
        "attn_self": self_attn,
        "attn_first_self": first_self,
        "pattern": pattern_np,
        "kde_grid": grid,
        "kde_final_to_prev": kdes["final_to_prev"][0],
        "kde_self": kdes["self"][0],
        "raw_kde_grid": raw_grid,
        "kde_raw_same": kdes["raw_same"][0],
        "kde_raw_diff": kdes["raw_diff"][0],
    }
    frac = {"same": _negative(raw_same), "diff": _negative(raw_diff)}
    median = {"same": _median(raw_same), "diff": _median(raw_diff)}
    summary = {
        "layer": layer,
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "n_kv_heads": shape.n_kv_heads,
        "d_head": shape.d_head,
        "n_tokens": int(tokens.shape[1]),
        "tokens": [model.tokenizer.decode([t]) for t in tokens[0].tolist()],
        "hooks": {
            "stats": [hook_name(layer, "q"), hook_name(layer, "k")],
            "scores": [hook_name(layer, q_point), hook_name(layer, k_point)],
            "rotary": rotary,
        },
        "stats_ddof": 1,
        "k_stats_per_query_head": "k_mean/k_std[h] = k_mean_kv/k_std_kv[kv_head_of(h)]",
        "n_pairs": {"same": int(raw_same.size), "diff": int(raw_diff.size)},
        "negative_fraction": frac,
        "median": median,
        "first_token_self_attention_max_dev": float(np.abs(first_self - 1.0).max()),
        "bandwidth": config.bandwidth,
        "bandwidth_factor": {k: _finite(v[1]) for k, v in kdes.items()},
        "parity": {**parity, "tolerance": config.tolerance, "passed": ok},
        "wall_s": round(time.perf_counter() - start, 3),
    }
    return ExperimentResult(NAME, arrays, summary)


def _negative(x: np.ndarray) -> float | None:
    return float((x < 0).mean()) if x.size else None


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if x.size else None


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _claim_holds(frac: float | None, median: float | None) -> bool | None:
    """Most raw scores below zero and a negative median (None: no such pairs)."""
    if frac is None or median is None:
        return None
    return frac > 0.5 and median < 0


def finding(result: ExperimentResult) -> Finding:
    """The course's claim on raw scores against this run's same- and different-head pairs.

    Holds when both pair kinds are mostly negative with negative medians; partly holds when
    only the same-head pairs (a query head with the key head it really uses) are.
    """
    s = result.summary
    f, m = s["negative_fraction"], s["median"]
    same, diff = (_claim_holds(f[k], m[k]) for k in ("same", "diff"))
    verdict = verdict_of(bool(same and (diff is None or diff)), partly=bool(same))

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3g}"

    return Finding(
        claim="Raw QK scores shift strongly negative (most are below zero), which is what "
        "makes softmax attention sparse.",
        this_run=f"Layer {s['layer']}: same-head pairs {pct(f['same'])} negative (median "
        f"{num(m['same'])}); different-head pairs {pct(f['diff'])} negative (median "
        f"{num(m['diff'])}).",
        verdict=verdict,
        key=f"same-head {pct(f['same'])} negative",
        sample=f"{s['n_pairs']['same']} same-head and {s['n_pairs']['diff']} different-head "
        f"pairs from one text of {s['n_tokens']} tokens, layer {s['layer']}",
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
    p = s["parity"]
    for key in (k for k in p if k not in ("tolerance", "passed")):
        mark = "ok" if p[key] <= p["tolerance"] else "FAIL"
        lines.append(f"parity {key:<32}{p[key]:>11.3e}  {mark}")
    return "\n".join(lines)


def depth_curves(result: ExperimentResult) -> dict[str, tuple[list[int], list[float]]]:
    """The negative share of raw scores at the dissected layer (for ``mechprobe sweep``)."""
    s = result.summary
    frac = s["negative_fraction"]
    return {
        f"negative raw scores, {k}-head": ([s["layer"]], [frac[k]])
        for k in ("same", "diff")
        if frac[k] is not None
    }


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
