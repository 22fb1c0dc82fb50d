"""E4: replace activations -- zero a head, noise MLP units, scale a block -- with HF parity.

Conditions: ``baseline``, ``zero_head`` (one head of Q/K/V zeroed at ``head_layer``),
``mlp_noise`` (MLP units at ``position`` replaced by N(mean, std²) noise at ``mlp_layer``) and
``scale_<f>`` for each factor (``hook_resid_post`` of ``scale_layer`` multiplied by f). Each is
run through TransformerLens hooks and, independently, through plain HuggingFace forward hooks
(`mechprobe.reference.interventions`); every hidden state must agree within ``tolerance``.

Hidden states follow HuggingFace's ``output_hidden_states``: the embeddings first, then each
block's output, the last one after the final norm. On the TransformerLens side these are
``blocks.0.hook_resid_pre``, ``blocks.L.hook_resid_post`` for ``L < n_layers - 1`` and
``ln_final.hook_out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mechprobe.errors import MechprobeError, check_index
from mechprobe.experiments.result import ExperimentResult
from mechprobe.interventions import (
    Intervention,
    MLPNoise,
    ScaleOutput,
    ZeroHead,
    gaussian_noise,
    intervention_hooks,
    parse_units,
    resolve_units,
)
from mechprobe.models.registry import model_shape
from mechprobe.units import layout_of, qkv_units

NAME = "replace"


@dataclass(frozen=True)
class ReplaceConfig:
    """Settings of the replacement experiment (defaults: the course's, for a 30-layer model).

    Attributes:
        model: Model name.
        text: Text to run, no BOS (None: ``mechprobe/data/replace_default.txt``).
        position: Token whose hidden vector is followed (and where the MLP noise goes).
        head_layer: Layer of the zeroed head.
        head: Head index (a key/value head for K/V of a grouped-query model).
        component: ``"q"``, ``"k"`` or ``"v"``.
        mlp_layer: Layer of the MLP noise.
        mlp_units: Units replaced: a slice string (``"::2"``) or a comma list.
        noise_mean: Noise mean.
        noise_std: Noise standard deviation.
        seed: Noise seed.
        scale_layer: Block whose output is scaled.
        scales: Scale factors, one condition each.
        tolerance: Largest allowed TL-vs-HF difference.
        device: Torch device.
    """

    model: str = "smollm2-135m"
    text: str | None = None
    position: int = 4
    head_layer: int = 3
    head: int = 2
    component: str = "k"
    mlp_layer: int = 5
    mlp_units: str = "::2"
    noise_mean: float = 10.0
    noise_std: float = 1.0
    seed: int = 0
    scale_layer: int = 8
    scales: tuple[float, ...] = (0.1, 10.0)
    tolerance: float = 1e-4
    device: str | None = None


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


def _layer(name: str, value: int, n_layers: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise MechprobeError(f"{name} {value} is out of range (valid: 0..{n_layers - 1})")
    return check_index(name, value, n_layers, f"the model's {n_layers} layers")


def _finite(name: str, value: float) -> float:
    if not math.isfinite(float(value)):
        raise MechprobeError(f"{name} must be finite, got {value!r}")
    return float(value)


def build_interventions(
    config: ReplaceConfig, model: Any, n_tokens: int
) -> dict[str, list[Intervention]]:
    """Validate the config against the model and text; return ``{condition: interventions}``.

    Errors name the command-line argument (``--head-layer``, ``--mlp-units``, ...).

    Example:
        >>> build_interventions(ReplaceConfig(head_layer=1, mlp_layer=1, scale_layer=1), m, 11)
        {'baseline': [], 'zero_head': [ZeroHead(layer=1, head=2, component='k')], ...}
    """
    s = model_shape(model)
    position = check_index("--position", config.position, n_tokens, f"the text's {n_tokens} tokens")
    head_layer = _layer("--head-layer", config.head_layer, s.n_layers)
    if config.component not in ("q", "k", "v"):
        raise MechprobeError(f"--component must be q, k or v, got {config.component!r}")
    n_heads = s.n_heads if config.component == "q" else s.n_kv_heads
    if not 0 <= config.head < n_heads:
        raise MechprobeError(
            f"--head {config.head} is out of range for {config.component.upper()} "
            f"(valid: 0..{n_heads - 1})"
        )
    mlp_layer = _layer("--mlp-layer", config.mlp_layer, s.n_layers)
    units = parse_units(config.mlp_units, "--mlp-units")
    resolve_units(units, s.d_mlp, "--mlp-units")
    _finite("--noise-mean", config.noise_mean)
    if _finite("--noise-std", config.noise_std) < 0:
        raise MechprobeError(f"--noise-std must be >= 0, got {config.noise_std}")
    scale_layer = _layer("--scale-layer", config.scale_layer, s.n_layers)
    if not config.scales:
        raise MechprobeError("--scales is empty: give at least one factor, e.g. 0.1,10")
    for f in config.scales:
        _finite("--scales", f)
    names = condition_names(config.scales)
    if len(set(names)) != len(names):
        raise MechprobeError(f"--scales has repeated factors: {config.scales}")
    plan: dict[str, list[Intervention]] = {
        "baseline": [],
        "zero_head": [ZeroHead(head_layer, config.head, config.component)],
        "mlp_noise": [
            MLPNoise(
                mlp_layer,
                units,
                (position,),
                config.noise_mean,
                config.noise_std,
                config.seed,
            )
        ],
    }
    for name, f in zip(names[3:], config.scales, strict=True):
        plan[name] = [ScaleOutput(scale_layer, float(f))]
    return plan


def hidden_state_names(n_layers: int) -> list[str]:
    """TransformerLens hooks giving HF's ``output_hidden_states`` (``n_layers + 1`` names).

    Example:
        >>> hidden_state_names(2)
        ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post', 'ln_final.hook_out']
    """
    return (
        ["blocks.0.hook_resid_pre"]
        + [f"blocks.{L}.hook_resid_post" for L in range(n_layers - 1)]
        + ["ln_final.hook_out"]
    )


def run_tl(
    model: Any, tokens: torch.Tensor, interventions: list[Intervention], record: list[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run the bridge with interventions; record ``record`` hooks *after* the intervention.

    Returns:
        ``({hook_name: activation}, logits)``.

    Example:
        >>> acts, logits = run_tl(model, tokens, [ScaleOutput(0, 0.1)], ["ln_final.hook_out"])
    """
    store: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Any:
        def hook(act: torch.Tensor, hook: Any) -> None:
            store[name] = act.detach().clone()

        return hook

    hooks = intervention_hooks(model, interventions, int(tokens.shape[1]))
    hooks += [(name, recorder(name)) for name in record]
    with torch.inference_mode():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return store, logits


def _top5(logits: torch.Tensor, tokenizer: Any) -> list[dict[str, Any]]:
    probs = torch.softmax(logits.double(), dim=-1)
    p, idx = probs.topk(5)
    return [
        {"token": tokenizer.decode([int(i)]), "id": int(i), "prob": float(q)}
        for q, i in zip(p, idx, strict=True)
    ]


def _kl(base: torch.Tensor, other: torch.Tensor) -> float:
    lp, lq = torch.log_softmax(base.double(), -1), torch.log_softmax(other.double(), -1)
    return float((lp.exp() * (lp - lq)).sum())


def scaling_finding(
    base_resid: np.ndarray,
    cond_resid: np.ndarray,
    base_final: float,
    cond_final: float,
    scale_layer: int,
    factor: float,
) -> dict[str, Any]:
    """Test the course's finding on one scaling condition from norms at the followed position.

    ``*_resid`` are pre-norm residual norms ``[n_layers + 1]``: the embeddings, then every block's
    output (the last block's before the final norm); ``*_final`` the norm after the final norm.
    Factor < 1: the norm collapses at the block (ratio to baseline < 0.5) and later layers
    partly restore it (the last block's ratio is higher than at the block but still < 1).
    Factor > 1: the norm blows up at the block (ratio > 2) and the final layer compresses it
    (after the final norm the ratio is closer to 1 than at the block, in log scale by half).

    Example:
        >>> scaling_finding(np.ones(3), np.array([1, 0.1, 0.5]), 1.0, 0.9, 0, 0.1)["holds"]
        True
    """
    ratio = cond_resid / base_resid
    at = float(ratio[scale_layer + 1])
    last = float(ratio[-1])
    final = float(cond_final / base_final)
    later = [float(r) for r in ratio[scale_layer + 2 :]]
    if factor < 1:
        collapses = at < 0.5
        restores = bool(later) and at < last < 1.0
        holds = collapses and restores
        if restores:
            how = "partly restored"
        elif not later:
            how = "no later block to restore it"
        elif last >= 1.0:
            how = "restored beyond the baseline (overshoot), not partly"
        else:
            how = "not restored"
        nxt = f"; next block's output {later[0]:.3f}" if later else ""
        text = (
            f"x{factor:g}: norm ratio {at:.3f} at block {scale_layer}'s output "
            f"({'collapses' if collapses else 'does not collapse'}){nxt}; last block's output "
            f"{last:.3f} ({how}); after the final norm {final:.3f}"
        )
    else:
        blows = at > 2.0
        compresses = abs(math.log(final)) < 0.5 * abs(math.log(at)) if at > 0 else False
        holds = blows and compresses
        text = (
            f"x{factor:g}: norm ratio {at:.3f} at block {scale_layer}'s output "
            f"({'blows up' if blows else 'does not blow up'}); last block's output "
            f"{last:.3f}; after the final norm {final:.3f} "
            f"({'compressed' if compresses else 'not compressed'})"
        )
    return {
        "factor": factor,
        "ratio_at_block": at,
        "ratio_last_block_output": last,
        "ratio_after_final_norm": final,
        "ratio_per_layer": [float(r) for r in ratio],
        "holds": bool(holds),
        "text": text,
    }


def run_replace(
    config: ReplaceConfig, *, model: Any = None, reference: Any = None
) -> ExperimentResult:
    """Run every condition with TransformerLens and HF hooks and collect norms, values, parity.

    Args:
        config: The settings.
        model: A loaded bridge (loaded from ``config.model`` if None).
        reference: A loaded ``(hf_model, tokenizer)`` (loaded if None).

    Returns:
        An `ExperimentResult` named ``replace``; see the module docstring for the arrays.

    Example:
        >>> cfg = ReplaceConfig(model="tiny-gpt2", head_layer=1, mlp_layer=1, scale_layer=0)
        >>> res = run_replace(cfg)
        >>> res.summary["parity"]["passed"]
        True
    """
    from mechprobe.models import load_model, load_reference
    from mechprobe.reference.interventions import describe_block_output, run_reference

    text = config.text if config.text is not None else default_text()
    model = model if model is not None else load_model(config.model, device=config.device)
    hf, tok = (
        reference if reference is not None else load_reference(config.model, device=config.device)
    )
    ids = tok(text, add_special_tokens=False).input_ids
    if not ids:
        raise MechprobeError("--text is empty after tokenization")
    tokens = torch.tensor([ids])
    n_tokens = len(ids)
    s = model_shape(model)
    plan = build_interventions(config, model, n_tokens)
    pos = config.position % n_tokens
    layout = layout_of(model)
    hl, ml, sl = config.head_layer, config.mlp_layer, config.scale_layer
    hidden = hidden_state_names(s.n_layers)
    resid = ["blocks.0.hook_resid_pre"] + [f"blocks.{L}.hook_resid_post" for L in range(s.n_layers)]
    qkv = [f"blocks.{hl}.attn.hook_{c}" for c in "qkv"]
    record = list(dict.fromkeys([*hidden, *resid, *qkv, f"blocks.{ml}.mlp.hook_pre"]))

    arrays: dict[str, np.ndarray] = {}
    conditions: dict[str, Any] = {}
    logits_at: dict[str, torch.Tensor] = {}
    for name, ivs in tqdm(plan.items(), desc="replace: conditions", leave=False):
        acts, logits = run_tl(model, tokens, ivs, record)
        ref = run_reference(hf, tokens, ivs)
        diffs = [
            float((acts[h].double().cpu() - r.double().cpu()).abs().max())
            for h, r in zip(hidden, ref["hidden_states"], strict=True)
        ]
        vals = torch.stack([acts[h][0, pos] for h in hidden]).double().cpu()
        arrays[f"{name}_values"] = vals.numpy()
        arrays[f"{name}_norm"] = vals.norm(dim=-1).numpy()
        arrays[f"{name}_std"] = vals.std(dim=-1).numpy()
        arrays[f"{name}_resid_norm"] = (
            torch.stack([acts[h][0, pos] for h in resid]).double().norm(dim=-1).cpu().numpy()
        )
        q, k, v = (acts[h][:, pos] for h in qkv)
        if name in ("baseline", "zero_head"):
            arrays[f"{name}_qkv"] = qkv_units(q, k, v)[0].double().cpu().numpy()
        if name in ("baseline", "mlp_noise"):
            arrays[f"{name}_mlp_pre"] = acts[f"blocks.{ml}.mlp.hook_pre"][0, pos].double().numpy()
        last_logits = logits[0, -1].double().cpu()
        logits_at[name] = last_logits
        conditions[name] = {
            "interventions": [repr(iv) for iv in ivs],
            "tl_vs_hf_max_abs_diff": max(diffs),
            "tl_vs_hf_max_abs_diff_per_hidden_state": diffs,
            "tl_vs_hf_logits_max_abs_diff": float(
                (logits.double().cpu() - ref["logits"].double().cpu()).abs().max()
            ),
            "top5_next_tokens": _top5(last_logits, tok),
        }
    for name in conditions:
        conditions[name]["kl_from_baseline"] = _kl(logits_at["baseline"], logits_at[name])

    units = resolve_units(parse_units(config.mlp_units), s.d_mlp)
    arrays["noise_units"] = np.asarray(units)
    arrays["noise_draws"] = (
        gaussian_noise(1, len(units), config.noise_mean, config.noise_std, config.seed)[0]
        .double()
        .numpy()
    )
    umap = layout.unit_map()
    arrays["qkv_component"], arrays["qkv_head"] = umap["component"], umap["head"]
    comp_slice = layout.slice(config.component)
    zeroed = (
        comp_slice.start + config.head * s.d_head,
        comp_slice.start + (config.head + 1) * s.d_head,
    )

    findings = {}
    for name, f in zip(condition_names(config.scales)[3:], config.scales, strict=True):
        findings[name] = scaling_finding(
            arrays["baseline_resid_norm"],
            arrays[f"{name}_resid_norm"],
            float(arrays["baseline_norm"][-1]),
            float(arrays[f"{name}_norm"][-1]),
            sl,
            float(f),
        )
    worst = max(c["tl_vs_hf_max_abs_diff"] for c in conditions.values())
    summary = {
        "model": config.model,
        "text": text,
        "tokens": [tok.decode([i]) for i in ids],
        "position": pos,
        "position_token": tok.decode([ids[pos]]),
        "n_layers": s.n_layers,
        "config": {
            "head_layer": hl,
            "head": config.head,
            "component": config.component,
            "mlp_layer": ml,
            "mlp_units": config.mlp_units,
            "n_mlp_units_replaced": len(units),
            "noise_mean": config.noise_mean,
            "noise_std": config.noise_std,
            "seed": config.seed,
            "scale_layer": sl,
            "scales": list(config.scales),
        },
        "conditions": conditions,
        "zeroed_qkv_units": list(zeroed),
        "parity": {
            "tolerance": config.tolerance,
            "max_abs_diff": worst,
            "passed": worst <= config.tolerance,
        },
        "next_token_position": n_tokens - 1,
        "scaling_finding": findings,
        "std": "unbiased (torch.std) over d_model",
        "block_output_explanation": describe_block_output(hf, tokens, layer=sl),
    }
    return ExperimentResult(NAME, arrays, summary)
