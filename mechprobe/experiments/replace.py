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
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Course, Experiment, Figure, Finding, option, verdict_of
from mechprobe.models.registry import ModelShape
from mechprobe.validate import (
    Problems,
    check_index,
    check_number,
    check_seed,
    check_tolerance,
    parse_float,
    parse_int,
    parse_list,
    parse_units,
    relative_layer,
    resolve_units,
)

NAME = "replace"
#: The course's layers on GPT-2 small (12 layers): zero a head at 3, noise at 5, scale at 8.
COURSE_LAYERS = {"head_layer": 3, "mlp_layer": 5, "scale_layer": 8}
COURSE_HEAD = 2


@dataclass(frozen=True)
class ReplaceConfig:
    """Settings of the replacement experiment (the course's, mapped to the model's depth).

    Attributes:
        text: Text to run, no BOS (None: ``mechprobe/data/replace_default.txt``).
        position: Token whose hidden vector is followed (and where the MLP noise goes).
        head_layer: Layer of the zeroed head (None: the course's 3 of 12 at the same depth).
        head: Head index (a key/value head for K/V; None: the course's 2, or the last head).
        component: ``"q"``, ``"k"`` or ``"v"``.
        mlp_layer: Layer of the MLP noise (None: the course's 5 of 12 at the same depth).
        mlp_units: Units replaced: a slice (``"::2"``) or a comma list.
        noise_mean: Noise mean.
        noise_std: Noise standard deviation.
        seed: Noise seed.
        scale_layer: Block whose output is scaled (None: the course's 8 of 12 at that depth).
        scales: Scale factors, one condition each.
        tolerance: Largest allowed TL-vs-HF difference.
        truncate: Cut a text longer than the model's context (else that is an error).
    """

    text: str | None = option(None, "text to run, no BOS (default: a shipped sentence)")
    position: int = option(4, "token position followed (4)")
    head_layer: int | None = option(
        None,
        "layer of the zeroed head (default: the course's 3 of 12, same depth)",
        parse=parse_int,
    )
    head: int | None = option(
        None, "head to zero (default 2, or the last; K/V: a kv head)", parse=parse_int
    )
    component: str = option("k", "q, k or v (k)", choices=("q", "k", "v"))
    mlp_layer: int | None = option(
        None, "layer of the MLP noise (default: the course's 5 of 12, same depth)", parse=parse_int
    )
    mlp_units: str = option("::2", "units to replace: a slice like ::2 or a list 1,5 (::2)")
    noise_mean: float = option(10.0, "noise mean (10)")
    noise_std: float = option(1.0, "noise standard deviation (1)")
    seed: int = option(0, "noise seed (0)")
    scale_layer: int | None = option(
        None, "block whose output is scaled (default: the course's 8 of 12, same depth)",
        parse=parse_int,
    )  # fmt: skip
    scales: tuple[float, ...] = option(
        (0.1, 10.0), "comma-separated factors (0.1,10)", parse=lambda t: parse_list(t, parse_float)
    )
    tolerance: float = option(1e-4, "largest TL-vs-HF |diff| allowed (1e-4)")
    truncate: bool = option(False, "cut a text longer than the model's context to fit it")


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


def resolve(config: ReplaceConfig, shape: ModelShape) -> ReplaceConfig:
    """Map the course's layers to the model's depth and validate every setting.

    Example:
        >>> c = resolve(ReplaceConfig(), model_shape(model))  # tiny-gpt2: 2 layers, 4 heads
        >>> c.head_layer, c.mlp_layer, c.scale_layer, c.head
        (0, 0, 1, 2)
    """
    p = Problems()
    layers = {}
    for name, course in COURSE_LAYERS.items():
        value = getattr(config, name)
        value = relative_layer(course, shape.n_layers) if value is None else value
        layers[name] = p.check(name, check_index, value, shape.n_layers, "layer")
    if config.component not in ("q", "k", "v"):
        p.add("component", f"expected q, k or v, got {config.component!r}")
        n_heads = shape.n_heads
    else:
        n_heads = shape.n_heads if config.component == "q" else shape.n_kv_heads
    head = min(COURSE_HEAD, n_heads - 1) if config.head is None else config.head
    head = p.check("head", check_index, head, n_heads, f"{config.component.upper()} head")
    p.check("position", check_index, config.position, shape.n_ctx, "position")
    units = p.check("mlp_units", parse_units, config.mlp_units)
    if units is not None:
        p.check("mlp_units", resolve_units, units, shape.d_mlp, "MLP unit")
    p.check("noise_mean", check_number, config.noise_mean, what="noise mean")
    p.check("noise_std", check_number, config.noise_std, low=0.0, what="noise std")
    p.check("seed", check_seed, config.seed)
    p.check("tolerance", check_tolerance, config.tolerance)
    if not config.scales:
        p.add("scales", "give at least one factor, e.g. 0.1,10")
    for f in config.scales:
        p.check("scales", check_number, f, what="scale factor")
    names = condition_names(config.scales)
    if len(set(names)) != len(names):
        p.add("scales", f"repeated factors: {', '.join(f'{f:g}' for f in config.scales)}")
    text = default_text() if config.text is None else config.text
    if not text.strip():
        p.add("text", "the text is empty")
    p.raise_if_any()
    return replace(config, text=text, head=head, **layers)


def inputs(config: ReplaceConfig) -> dict[str, str]:
    """The sha256 of the text."""
    from mechprobe.corpus.text import text_source

    return {"text": text_source(config.text or default_text()).sha256}


def build_interventions(config: ReplaceConfig) -> dict[str, list[Any]]:
    """``{condition: interventions}`` of a resolved config.

    Example:
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


def run(config: ReplaceConfig, model: Any, reference: Any) -> ExperimentResult:
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
        >>> res = run(resolve(ReplaceConfig(), model_shape(model)), model, (hf, tok))
        >>> res.summary["parity"]["passed"]
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
    return ExperimentResult(NAME, arrays, summary)


def finding(result: ExperimentResult) -> Finding:
    """The course's scaling claims, one test per scale factor; partly holds when some hold."""
    a, s = result.arrays, result.summary
    layer = s["settings"]["scale_layer"]
    from mechprobe.stats.logits import scaling_verdict

    tests = [
        scaling_verdict(
            a[f"{name}_ratio"], s["conditions"][name]["ratio_after_final_norm"], layer, f
        )
        for name, f in s["scales"].items()
    ]
    holds = [t["holds"] for t in tests]
    return Finding(
        claim="Scaling a block's output by 0.1 collapses the norm at that block and later layers "
        "partly restore it; scaling by 10 blows it up and the final layer compresses it.",
        this_run="; ".join(t["text"] for t in tests) + ".",
        verdict=verdict_of(all(holds), partly=any(holds)),
        key=", ".join(f"x{t['factor']:g} {'holds' if t['holds'] else 'no'}" for t in tests),
        sample=f"one sentence of {len(s['tokens'])} tokens, position {s['position']}",
    )


def checks(result: ExperimentResult) -> list[dict[str, Any]]:
    """Per condition, the TL-vs-HF difference over every hidden state, pass/fail."""
    from mechprobe.experiments.crosscheck import within

    tol = result.summary["parity"]["tolerance"]
    return [
        {"check": f"TL vs HF hidden states: {name}", "where": "every hidden state",
         "value": c["tl_vs_hf_max_abs_diff"], "tolerance": tol,
         "passed": within(c["tl_vs_hf_max_abs_diff"], tol)}
        for name, c in result.summary["conditions"].items()
    ]  # fmt: skip


def passed(result: ExperimentResult) -> bool:
    """Whether TransformerLens and HF agree within the tolerance in every condition."""
    return bool(result.summary["parity"]["passed"])


def table(result: ExperimentResult) -> str:
    """Per condition: TL-vs-HF difference, KL from the baseline, top-5 next tokens, norms."""
    s, a = result.summary, result.arrays
    lines = [
        f"hidden vector at position {s['position']} ({s['position_token']!r})",
        f"{'condition':<12}{'TL-vs-HF max|diff|':>20}{'KL(base||c)':>13}  top-5 next tokens",
    ]
    for name, c in s["conditions"].items():
        top = ", ".join(f"{t['token']!r}" for t in c["top5_next_tokens"])
        lines.append(
            f"{name:<12}{c['tl_vs_hf_max_abs_diff']:>20.3e}{c['kl_from_baseline']:>13.3e}  {top}"
        )
    p = s["parity"]
    verdict = "PASS" if p["passed"] else "FAIL"
    lines.append(
        f"{verdict}: TL vs HF max |diff| {p['max_abs_diff']:.3e} (tolerance {p['tolerance']:g})"
    )
    lines.append(f"norm per hidden state (position {s['position']}):")
    for name in s["conditions"]:
        lines.append(f"  {name:<11} " + " ".join(f"{x:.3g}" for x in a[f"{name}_norm"]))
    lines.append(s["block_output_explanation"])
    return "\n".join(lines)


def depth_curves(result: ExperimentResult) -> dict[str, tuple[list[int], list[float]]]:
    """Per block output: the norm ratio to the baseline under each scale factor (for sweeps)."""
    a, s = result.arrays, result.summary
    blocks = list(range(s["n_layers"]))
    return {
        f"norm ratio, block output x{f:g}": (blocks, a[f"{name}_ratio"][1:].tolist())
        for name, f in s["scales"].items()
    }


SPEC = Experiment(
    name=NAME,
    title="E4: replacing activations",
    help="E4: zero a head, noise MLP units, scale a block; check TL against HF hooks",
    config=ReplaceConfig,
    run=run,
    resolve=resolve,
    inputs=inputs,
    figures=(
        Figure(
            "norms",
            "Norm of the hidden vector under each intervention",
            "L2 norm (log scale) of the followed token's hidden vector after each block, one "
            "line per condition; a scaled block shows as a jump at its output, and what later "
            "blocks do to it is the course's claim.",
        ),
        Figure(
            "check_qkv",
            "Check: one head zeroed",
            "Every Q|K|V unit of the zeroed head's layer at the followed token, baseline (grey) "
            "and intervened (colour): only the shaded head's units drop to 0.",
        ),
        Figure(
            "check_mlp",
            "Check: noise in MLP units",
            "Every MLP input unit at the followed token, baseline (grey) and intervened: the "
            "replaced units sit around the noise mean, the others are unchanged.",
        ),
        Figure(
            "scaling",
            "Scaling a block's output",
            "One row per scale factor: the values of the followed token's hidden vector per "
            "hidden state (left, baseline in grey) and its norm (right, log scale); the dotted "
            "line marks the scaled block's output.",
        ),
    ),
    table=table,
    finding=finding,
    passed=passed,
    checks=checks,
    needs_reference=True,
    course=Course(model="gpt2", overrides={**COURSE_LAYERS, "head": COURSE_HEAD}),
    depth_curves=depth_curves,
)
