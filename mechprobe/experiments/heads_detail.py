"""E2's dissection of one layer, as the course does it: Q/K statistics, raw scores, softmax.

`mechprobe.experiments.heads` runs it at the course's layer (the detail figures) beside the
per-layer analysis of every layer.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.validate import Problems

if TYPE_CHECKING:
    from mechprobe.models.types import Model

KDE_POINTS = 300
DEFAULT_TEXT_FILE = "heads_default.txt"
MIN_TOKENS = 3
#: Bandwidth factors of the course's KDE demonstration (beside the chosen rule).
DEMO_BANDWIDTHS = (0.05, 0.2, 1.0)


def default_text() -> str:
    """The project's default passage (two factual sentences, about 35 tokens).

    Example:
        >>> default_text().startswith("Copper")
        True
    """
    from mechprobe.data import read_data_text

    return read_data_text(DEFAULT_TEXT_FILE).strip()


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


def dissect(config: Any, model: Model, reference: Any, tokens: Any) -> tuple[dict, dict]:
    """The course's single-layer analysis at ``config.layer``: ``(arrays, summary)``.

    Example:
        >>> from mechprobe.experiments.heads import HeadsConfig, resolve
        >>> config = resolve(HeadsConfig(), model_shape(model))
        >>> arrays, summary = dissect(config, model, (hf, tok), tokenize(tok, config.text, 256))
        >>> arrays["q_mean"].shape, summary["parity"]["passed"]
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
    demo = {f"kde_demo_{b:g}": att.kde_curve(final_to_prev, grid, b)[0] for b in DEMO_BANDWIDTHS}
    arrays = {
        **demo,
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
        "kde_demo_bandwidths": list(DEMO_BANDWIDTHS),
        "parity": {**parity, "tolerance": config.tolerance, "passed": ok},
        "wall_s": round(time.perf_counter() - start, 3),
    }
    return arrays, summary


def _negative(x: np.ndarray) -> float | None:
    return float((x < 0).mean()) if x.size else None


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if x.size else None


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
