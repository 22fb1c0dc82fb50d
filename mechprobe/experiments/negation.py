"""E1: negation tuning of Q/K/V and MLP units, every layer: the course's experiment, a probe preset.

`mechprobe.experiments.probe` with the course's rule (`mechprobe.corpus.classes.negation_preset`:
negation tokens ``not``, ``cannot``, ``nor``, ``never`` and ``'t`` contractions against modal
and assent words such as ``can``, ``may``, ``should`` not followed by `` not``), the course's text
(*The Variable Man*, Gutenberg #32154) and windows (90 tokens before, 10 after), its units
(flat Q|K|V from ``hook_q/k/v``; GPT-2: the columns of ``attn.c_attn``; and ``mlp.hook_pre``;
GPT-2: ``c_fc`` before GELU, gated MLPs: the gate projection), its probe ``label ~ 1 + activation``
(affirmation 0, negation 1) and its Bonferroni correction per layer. The arrays the course's
analysis gives (``C_beta``, ``C_pvalue``, ``C_accuracy``, ``C_significant`` ...) are exactly those
of the probe; held-out accuracy, the controls and Firth's fits come on top.

Example:
    >>> from pathlib import Path
    >>> _ = Path("story.txt").write_text("It is not here, but we can go. " * 60, encoding="utf-8")
    >>> settings = NegationConfig(text="story.txt", context_pre=5, folds=0)
    >>> config = resolve(settings, model_shape(model))
    >>> result = run(config, model)
    >>> result.arrays["qkv_beta"].shape  # [layer, units]
    (2, 192)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from mechprobe.experiments import probe
from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Course, Experiment, Finding, Inputs, option
from mechprobe.models.registry import ModelShape
from mechprobe.validate import parse_choices

if TYPE_CHECKING:
    from mechprobe.models.types import Model

NAME = "negation"
FAMILIES = ("qkv", "mlp")
CLAIM = (
    "In GPT-2 a sizeable share of Q/K/V and MLP units in most layers separates negation from "
    "affirmation tokens, with high probe accuracy."
)


@dataclass(frozen=True)
class NegationConfig(probe.ProbeConfig):
    """The probe's settings with the course's classes fixed (see `probe.ProbeConfig`).

    Example:
        >>> NegationConfig().components, NegationConfig().context_pre
        (('qkv', 'mlp'), 90)
    """

    classes: str | None = option(None, "the negation preset", cli=False)
    labels: str | None = option(None, "no labelled positions", cli=False)
    unit: str = option("token", "the course's token rule", cli=False)
    word_token: str = option("first", "unused with tokens", cli=False)
    components: tuple[str, ...] = option(
        FAMILIES, "qkv, mlp or qkv,mlp (default)", parse=lambda t: parse_choices(t, FAMILIES)
    )


def resolve(config: NegationConfig, shape: ModelShape) -> NegationConfig:
    """Validate as `probe.resolve` does; the classes are the course's, always.

    Example:
        >>> resolve(NegationConfig(layers=(0, 5)), model_shape(model))
        Traceback (most recent call last):
        ...
        mechprobe.errors.ConfigError: layers: layer 5 is out of range (0..1)
    """
    return cast(NegationConfig, probe.resolve(config, shape))  # replace() keeps the class


def inputs(config: NegationConfig) -> Inputs:
    """The text (loading, or downloading once, the source) and the preset, with their sha256."""
    return probe.inputs(config)


def run(
    config: NegationConfig, model: Model, reference: Any = None, data: Any = None
) -> ExperimentResult:
    """Run the course's negation probe (see `probe.run` for the arrays)."""
    res = probe.run(config, model, reference, data)
    return ExperimentResult(NAME, res.arrays, res.summary)


def finding(result: ExperimentResult) -> Finding:
    """The course's claim against this run (the rule: `probe_report.probe_finding`)."""
    from mechprobe.experiments.probe_report import probe_finding

    return probe_finding(result, claim=CLAIM)


def depth_curves(result: ExperimentResult) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer and family: % significant units, and held-out accuracy (for sweeps)."""
    from mechprobe.experiments.probe_report import LABELS

    rows, out = result.summary["per_layer"], {}
    for fam in result.summary["components"]:
        layers = [r["layer"] for r in rows]
        out[f"% significant, {LABELS[fam]}"] = (
            layers,
            [r[fam]["percent_significant"] for r in rows],
        )
        if "mean_heldout_accuracy" in rows[0][fam]:
            held = [r[fam]["mean_heldout_accuracy"] for r in rows]
            out[f"held-out accuracy, {LABELS[fam]}"] = (layers, held)
    return out


SPEC = Experiment(
    name=NAME,
    title="E1: negation tuning in Q/K/V and MLP units",
    help="E1: probe every Q/K/V and MLP unit at negation vs affirmation tokens, every layer",
    config=NegationConfig,
    run=run,
    resolve=resolve,
    inputs=inputs,
    figures=probe.FIGURES,
    table=probe.table,
    finding=finding,
    course=Course(
        model="gpt2-large",
        overrides={"folds": 0, "no_controls": True, "no_firth": True, "best_unit": "course"},
        needs_text=True,
    ),
    text_source=True,
    depth_curves=depth_curves,
)
