"""E4's course sample: one sentence, one followed position, every condition, with HF parity.

Conditions: ``baseline``, ``zero_head`` (one head of Q/K/V zeroed at ``head_layer``),
``mlp_noise`` (MLP units at ``position`` replaced by N(mean, std²) noise at ``mlp_layer``) and
``scale_<f>`` for each factor (``hook_resid_post`` of ``scale_layer`` multiplied by f). Each is
run through TransformerLens hooks and, independently, through plain HuggingFace forward hooks
(`mechprobe.reference.interventions`); every hidden state must agree within ``tolerance``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.validate import Problems, parse_units, resolve_units

if TYPE_CHECKING:
    from mechprobe.models.types import Model


def default_text() -> str:
    """The shipped default sentence (``replace_default.txt``, 11 GPT-2 tokens).

    Example:
        >>> default_text()
        'My sister bought a bicycle at the market on Sunday.'
    """
    from mechprobe.data import read_data_text

    return read_data_text("replace_default.txt").strip()


def condition_names(scales: tuple[float, ...]) -> list[str]:
    """Names of the conditions, in run order.

    Example:
        >>> condition_names((0.1, 10.0))
        ['baseline', 'zero_head', 'mlp_noise', 'scale_0.1', 'scale_10']
    """
    return ["baseline", "zero_head", "mlp_noise", *(f"scale_{f:g}" for f in scales)]


def build_interventions(config: Any) -> dict[str, list[Any]]:
    """``{condition: interventions}`` of a resolved config.

    Example:
        >>> from mechprobe.experiments.replace import ReplaceConfig, resolve
        >>> plan = build_interventions(resolve(ReplaceConfig(), model_shape(model)))
        >>> plan["zero_head"]
        [ZeroHead(layer=0, head=2, component='k')]
    """
    from mechprobe.interventions import MLPNoise, ScaleOutput, ZeroHead

    plan: dict[str, list[Any]] = {
        "baseline": [],
        "zero_head": [ZeroHead(config.head_layer, config.head, config.component)],
        "mlp_noise": [
            MLPNoise(
                config.mlp_layer,
                parse_units(config.mlp_units),
                (config.position,),
                config.noise_mean,
                config.noise_std,
                config.seed,
            )
        ],
    }
    for name, f in zip(condition_names(config.scales)[3:], config.scales, strict=True):
        plan[name] = [ScaleOutput(config.scale_layer, float(f))]
    return plan


def course_sample(config: Any, model: Model, reference: Any) -> tuple[dict, dict]:
    """Run every condition with TransformerLens and HF hooks; collect norms, values, parity.

    Args:
        config: The settings, resolved (`resolve`).
        model: A TransformerLens bridge.
        reference: The independent HF ``(model, tokenizer)``.

    Returns:
        ``ExperimentResult("replace")``: per condition ``<c>_values`` ``[n_layers + 1, d_model]``
        (HF hidden-state convention at the followed position), ``<c>_norm``, ``<c>_std``,
        ``<c>_resid_norm`` (pre-norm residual norms) and ``<c>_ratio`` (to the baseline's), the
        check arrays, and a summary with per-condition parity, KL and top-5 next tokens.

    Example:
        >>> from mechprobe.experiments.replace import ReplaceConfig, resolve
        >>> arrays, summary = course_sample(resolve(ReplaceConfig(), model_shape(model)), model,
        ...                                 (hf, tok))
        >>> summary["parity"]["passed"]
        True
    """
    import torch
    from tqdm.auto import tqdm

    from mechprobe.activations import LOGITS, collect
    from mechprobe.experiments.crosscheck import max_abs_diff, within
    from mechprobe.hooks import hidden_state_names, hook_name, residual_names
    from mechprobe.interventions import gaussian_noise, intervention_hooks
    from mechprobe.models.registry import model_shape
    from mechprobe.reference.interventions import describe_block_output, run_reference
    from mechprobe.stats.logits import kl_divergence, top_tokens
    from mechprobe.units import layout_of, qkv_units
    from mechprobe.validate import fit_context

    hf, tok = reference
    s = model_shape(model)
    p = Problems()
    ids = tok(config.text, add_special_tokens=False).input_ids
    ids = p.check("text", fit_context, ids, s.n_ctx, config.truncate) or ids
    if config.position >= len(ids):
        p.add(
            "position",
            f"position {config.position} is out of range for the text's {len(ids)} tokens "
            f"(0..{len(ids) - 1})",
        )
    p.raise_if_any()
    tokens, pos = torch.tensor([ids]), config.position
    plan = build_interventions(config)
    hidden, resid = hidden_state_names(s.n_layers), residual_names(s.n_layers)
    qkv = [hook_name(config.head_layer, c) for c in "qkv"]
    mlp = hook_name(config.mlp_layer, "mlp_pre")
    record = list(dict.fromkeys([*hidden, *resid, *qkv, mlp]))

    arrays: dict[str, np.ndarray] = {}
    conditions: dict[str, Any] = {}
    last_logits: dict[str, Any] = {}
    for name, ivs in tqdm(plan.items(), desc="replace: conditions", leave=False):
        hooks = intervention_hooks(model, ivs, len(ids))
        acts = collect(model, tokens, record, hooks=hooks, logits=True, progress=False)
        ref = run_reference(hf, tokens, ivs)
        diffs = [
            max_abs_diff(acts[h], r) for h, r in zip(hidden, ref["hidden_states"], strict=True)
        ]
        vals = torch.stack([acts[h][0, pos] for h in hidden]).double()
        arrays[f"{name}_values"] = vals.numpy()
        arrays[f"{name}_norm"] = vals.norm(dim=-1).numpy()
        arrays[f"{name}_std"] = vals.std(dim=-1).numpy()
        res_norm = torch.stack([acts[h][0, pos] for h in resid]).double().norm(dim=-1)
        arrays[f"{name}_resid_norm"] = res_norm.numpy()
        if name in ("baseline", "zero_head"):
            q, k, v = (acts[h][:, pos] for h in qkv)
            arrays[f"{name}_qkv"] = qkv_units(q, k, v)[0].double().numpy()
        if name in ("baseline", "mlp_noise"):
            arrays[f"{name}_mlp_pre"] = acts[mlp][0, pos].double().numpy()
        last_logits[name] = acts[LOGITS][0, -1].double()
        worst = max(diffs, key=lambda d: math.inf if math.isnan(d) else d)
        conditions[name] = {
            "interventions": [repr(iv) for iv in ivs],
            "tl_vs_hf_max_abs_diff": worst,
            "tl_vs_hf_max_abs_diff_per_hidden_state": diffs,
            "tl_vs_hf_logits_max_abs_diff": max_abs_diff(acts[LOGITS], ref["logits"]),
            "top5_next_tokens": top_tokens(last_logits[name], tok),
        }
    for name in conditions:
        conditions[name]["kl_from_baseline"] = kl_divergence(
            last_logits["baseline"], last_logits[name]
        )
    for name in plan:
        with np.errstate(divide="ignore", invalid="ignore"):
            arrays[f"{name}_ratio"] = arrays[f"{name}_resid_norm"] / arrays["baseline_resid_norm"]
            final = arrays[f"{name}_norm"][-1] / arrays["baseline_norm"][-1]
        conditions[name]["ratio_after_final_norm"] = float(final)

    units = resolve_units(parse_units(config.mlp_units), s.d_mlp)
    arrays["noise_units"] = np.asarray(units)
    noise = gaussian_noise(1, len(units), config.noise_mean, config.noise_std, config.seed)
    arrays["noise_draws"] = noise[0].double().numpy()
    layout = layout_of(model)
    umap = layout.unit_map()
    arrays["qkv_component"], arrays["qkv_head"] = umap["component"], umap["head"]
    start = layout.slice(config.component).start + config.head * s.d_head
    values = [c["tl_vs_hf_max_abs_diff"] for c in conditions.values()]
    worst = max(values, key=lambda d: math.inf if math.isnan(d) else d)
    summary = {
        "text": config.text,
        "tokens": [tok.decode([i]) for i in ids],
        "position": pos,
        "position_token": tok.decode([ids[pos]]),
        "n_layers": s.n_layers,
        "n_mlp_units_replaced": len(units),
        "conditions": conditions,
        "scales": {f"scale_{f:g}": float(f) for f in config.scales},
        "zeroed_qkv_units": [start, start + s.d_head],
        "parity": {
            "tolerance": config.tolerance,
            "max_abs_diff": worst,
            "passed": all(within(v, config.tolerance) for v in values),
        },
        "next_token_position": len(ids) - 1,
        "std": "unbiased (torch.std) over d_model",
        "settings": asdict(config),
        "block_output_explanation": describe_block_output(hf, tokens, layer=config.scale_layer),
    }
    return arrays, summary
