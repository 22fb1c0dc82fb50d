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

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mechprobe.experiments.replace_course import condition_names, default_text
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
    check_count,
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

if TYPE_CHECKING:
    from mechprobe.models.types import Model

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
        sentences: File of sentences for the scaling over many samples (None: the shipped 54).
        n_boot: Bootstrap resamples over sentences for the many-sample verdicts.
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
    sentences: str | None = option(
        None, "sentences (one a line) for the scaling over many samples (default: shipped 54)"
    )
    n_boot: int = option(1000, "bootstrap resamples over sentences (1000)")


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
    wanted = min(COURSE_HEAD, n_heads - 1) if config.head is None else config.head
    head = p.check("head", check_index, wanted, n_heads, f"{config.component.upper()} head")
    p.check("position", check_index, config.position, shape.n_ctx, "position")
    units = p.check("mlp_units", parse_units, config.mlp_units)
    if units is not None:
        p.check("mlp_units", resolve_units, units, shape.d_mlp, "MLP unit")
    p.check("noise_mean", check_number, config.noise_mean, what="noise mean")
    p.check("noise_std", check_number, config.noise_std, low=0.0, what="noise std")
    p.check("seed", check_seed, config.seed)
    p.check("tolerance", check_tolerance, config.tolerance)
    p.check("n_boot", check_count, config.n_boot, 100, "bootstrap resamples")
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
    return replace(config, text=text, head=head, **layers)  # type: ignore[arg-type]  # ints


def inputs(config: ReplaceConfig) -> Inputs:
    """The sentences, read once, and the sha256 of the text and of the sentences."""
    from mechprobe.corpus.text import text_source
    from mechprobe.experiments.replace_many import load_sentences

    sentences = load_sentences(config.sentences)
    sha = {
        "text": text_source(config.text or default_text()).sha256,
        "sentences": text_source("\n".join(sentences)).sha256,
    }
    return Inputs(sha, sentences)


def run(
    config: ReplaceConfig, model: Model, reference: Any, data: list[str] | None = None
) -> ExperimentResult:
    """E4: the course's sample with HF parity, then the scaling over many sentences.

    Args:
        config: The settings, resolved (`resolve`).
        model: A TransformerLens bridge.
        reference: The independent HF ``(model, tokenizer)``.
        data: The many-sample sentences (`inputs`); None: read what ``config.sentences`` names.

    Returns:
        ``ExperimentResult("replace")``: the course sample's arrays (`replace_course`) and, per
        scale factor ``scale_<f>``, ``<c>_many_median``/``_low``/``_high`` (the norm ratio to the
        baseline per hidden state over every sentence and position: median and 95% band) and
        ``<c>_many_holds`` (the claim per sample).

    Example:
        >>> res = run(resolve(ReplaceConfig(n_boot=100), model_shape(model)), model, (hf, tok))
        >>> res.summary["parity"]["passed"], res.arrays["scale_10_many_median"].shape
        (True, (3,))
    """
    from mechprobe.experiments.replace_course import course_sample
    from mechprobe.experiments.replace_many import many_samples

    arrays, summary = course_sample(config, model, reference)
    many_arrays, many_summary = many_samples(config, model, data)
    arrays.update(many_arrays)
    summary["many"] = many_summary
    return ExperimentResult(NAME, arrays, summary)


def finding(result: ExperimentResult) -> Finding:
    """The course's scaling claims over many samples, one test per scale factor.

    Per factor the claim holds when the share of samples (sentence x position) for which it
    holds has a 95% bootstrap interval (over sentences) above 0.5; the verdict holds when every
    factor's does, partly when some. The course's own sample (one sentence, one position) is
    reported beside.
    """
    from mechprobe.stats.logits import scaling_verdict

    a, s = result.arrays, result.summary
    layer, many = s["settings"]["scale_layer"], s["many"]
    course = [
        scaling_verdict(
            a[f"{name}_ratio"], s["conditions"][name]["ratio_after_final_norm"], layer, f
        )
        for name, f in s["scales"].items()
    ]
    parts, holds = [], []
    for name, f in s["scales"].items():
        m = many[name]
        holds.append(m["fraction_low"] > 0.5)
        parts.append(
            f"x{f:g}: holds for {m['fraction']:.0%} of {m['n_samples']} samples (95% CI "
            f"{m['fraction_low']:.0%}-{m['fraction_high']:.0%}); median norm ratio "
            f"{a[name + '_many_median'][layer + 1]:.2f} at block {layer}, "
            f"{a[name + '_many_median'][-1]:.2f} at the last block"
        )
    course_text = "; ".join(t["text"] for t in course)
    return Finding(
        claim="Scaling a block's output by 0.1 collapses the norm at that block and later layers "
        "partly restore it; scaling by 10 blows it up and the final layer compresses it.",
        this_run="; ".join(parts) + f". The course's sample: {course_text}.",
        verdict=verdict_of(all(holds), partly=any(holds)),
        key=", ".join(f"x{s['scales'][n]:g} {many[n]['fraction']:.0%}" for n in s["scales"]),
        sample=f"{many['n_sentences']} sentences x every position (1 .. len-1); 95% percentile "
        "bootstrap over sentences",
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
            "many",
            "Norm ratios over many sentences and positions",
            "Per scale factor, the residual-stream norm after each block divided by the "
            "baseline's, over every sentence and position: the median (line) and the central 95% "
            "(band), log scale; the dotted line marks the scaled block. A collapse that later "
            "blocks partly undo (x0.1) or a blow-up the final layer compresses (x10) is the "
            "course's claim.",
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
