"""TransformerLens vs HuggingFace parity for every layer of a model.

For each layer: ``hook_q/k/v`` against the HF projection outputs (GPT-2: ``attn.c_attn`` split;
others: ``q_proj/k_proj/v_proj``), the QK-norm outputs and the rotated Q and K (``hook_rot_q``,
``hook_rot_k``: the family's own ``apply_rotary_pos_emb`` on HF's values) where the model has them,
``mlp.hook_pre`` against ``mlp.c_fc`` / ``gate_proj``, ``hook_resid_post`` against
``output_hidden_states``, ``hook_pattern`` against ``output_attentions`` (eager); then the final
norm and the logits. A difference that is not finite (NaN, inf) is a failure, never a pass.

Example:
    >>> res = run(CrosscheckConfig(), model, (hf, tok))
    >>> passed(res)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Experiment, Figure, Inputs, option
from mechprobe.models.registry import ModelShape
from mechprobe.validate import Problems, check_tolerance, parse_float

if TYPE_CHECKING:
    from mechprobe.models.types import Model

NAME = "crosscheck"
DEFAULT_TEXT = (
    "The lighthouse keeper did not expect visitors, but the boat could reach the island "
    "before the storm, and she always kept a spare lamp burning."
)
#: Per-layer checks: (row name, TransformerLens hook point).
LAYER_CHECKS = (
    ("hook_q", "q"),
    ("hook_k", "k"),
    ("hook_v", "v"),
    ("hook_q_normed", "q_normed"),
    ("hook_k_normed", "k_normed"),
    ("hook_rot_q", "rot_q"),
    ("hook_rot_k", "rot_k"),
    ("mlp.hook_pre", "mlp_pre"),
    ("resid_post", "resid_post"),
    ("pattern", "pattern"),
)


@dataclass(frozen=True)
class CrosscheckConfig:
    """Settings of a parity check.

    Attributes:
        text: Text to run (no BOS is added).
        tolerance: Largest allowed max-abs difference.
        truncate: Cut a text longer than the model's context (else that is an error).
    """

    text: str = option(DEFAULT_TEXT, "text to run, no BOS (default: a shipped sentence)")
    tolerance: float = option(1e-4, "largest max |diff| allowed (1e-4)", parse=parse_float)
    truncate: bool = option(False, "cut a text longer than the model's context to fit it")


def resolve(config: CrosscheckConfig, shape: ModelShape) -> CrosscheckConfig:
    """Validate the settings (the text's length is checked against the model when tokenised).

    Example:
        >>> resolve(CrosscheckConfig(tolerance=float("nan")), None)
        Traceback (most recent call last):
        ...
        mechprobe.errors.ConfigError: tolerance: tolerance must be a finite number, got nan
    """
    p = Problems()
    p.check("tolerance", check_tolerance, config.tolerance)
    if not config.text.strip():
        p.add("text", "the text is empty")
    p.raise_if_any()
    return config


def inputs(config: CrosscheckConfig) -> Inputs:
    """The sha256 of the text (a literal setting: nothing to read)."""
    from mechprobe.corpus.text import text_source

    return Inputs({"text": text_source(config.text).sha256})


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference of two tensors in float64 (NaN if either holds a NaN).

    Example:
        >>> max_abs_diff(torch.ones(3), torch.tensor([1.0, 1.5, 1.0]))
        0.5
        >>> max_abs_diff(torch.ones(1), torch.tensor([float("nan")]))
        nan
    """
    diff = (a.detach().double().cpu() - b.detach().double().cpu()).abs()
    return float("nan") if bool(diff.isnan().any()) else float(diff.max())


def within(diff: float, tolerance: float) -> bool:
    """Whether a difference passes: finite and at most ``tolerance`` (NaN and inf fail).

    Example:
        >>> within(0.0, 1e-4), within(float("nan"), 1e-4), within(float("inf"), float("inf"))
        (True, False, False)
    """
    return math.isfinite(diff) and diff <= tolerance


def run(
    config: CrosscheckConfig, model: Model, reference: Any, data: None = None
) -> ExperimentResult:
    """Compare every TransformerLens hook result with plain HuggingFace hooks.

    Args:
        config: The settings.
        model: A TransformerLens bridge.
        reference: The independent HF ``(model, tokenizer)``.
        data: Unused (its text is a literal setting).

    Returns:
        ``ExperimentResult("crosscheck")``: arrays ``max_abs_diff`` ``[check, layer]`` (NaN where
        a check does not apply) and ``model_wide`` ``[2]`` (final norm, logits); the summary
        lists every row and whether all passed.
    """
    import torch

    from mechprobe.activations import LOGITS, collect
    from mechprobe.hooks import FINAL_NORM, hook_name
    from mechprobe.models.registry import model_shape
    from mechprobe.reference import capture_reference
    from mechprobe.validate import fit_context

    hf, tok = reference
    shape = model_shape(model)
    p = Problems()
    ids = tok(config.text, add_special_tokens=False).input_ids
    ids = p.check("text", fit_context, ids, shape.n_ctx, config.truncate)
    p.raise_if_any()
    assert ids is not None  # raise_if_any: every check passed
    tokens = torch.tensor([ids])
    ref = capture_reference(hf, tokens)
    checks = [
        (row, point)
        for row, point in LAYER_CHECKS
        if hook_name(0, point) in model.hook_dict
        and (point in ("resid_post", "pattern") or hook_name(0, point) in ref)
    ]
    names = [hook_name(L, p) for L in range(shape.n_layers) for _, p in checks]
    acts = collect(model, tokens, [*names, FINAL_NORM], logits=True, progress=False)
    per_layer = np.full((len(checks), shape.n_layers), np.nan)
    for L in range(shape.n_layers):
        for i, (_, point) in enumerate(checks):
            if point == "resid_post":
                last = L == shape.n_layers - 1  # HF's last hidden state is after the final norm
                expected = ref[hook_name(L, point)] if last else ref["hidden_states"][L + 1]
            elif point == "pattern":
                expected = ref["attentions"][L]
            else:
                expected = ref[hook_name(L, point)]
            per_layer[i, L] = max_abs_diff(acts[hook_name(L, point)], expected)
    model_wide = np.array(
        [
            max_abs_diff(acts[FINAL_NORM], ref["hidden_states"][-1]),
            max_abs_diff(acts[LOGITS], ref["logits"]),
        ]
    )
    rows = [
        {"check": row, "layer": L, "max_abs_diff": float(per_layer[i, L])}
        for i, (row, _) in enumerate(checks)
        for L in range(shape.n_layers)
    ]
    rows += [
        {"check": c, "layer": None, "max_abs_diff": float(d)}
        for c, d in zip(("final_norm", "logits"), model_wide, strict=True)
    ]
    ok = all(within(float(r["max_abs_diff"]), config.tolerance) for r in rows)  # type: ignore[arg-type]
    summary = {
        "n_tokens": len(ids),
        "tolerance": config.tolerance,
        "checks": [row for row, _ in checks] + ["final_norm", "logits"],
        "per_check": _per_check(rows, config.tolerance),
        "rows": rows,
        "passed": ok,
    }
    arrays = {"max_abs_diff": per_layer, "model_wide": model_wide}
    return ExperimentResult(NAME, arrays, summary)


def _per_check(rows: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """One line per check: layers, the worst difference and its layer, the pass mark."""
    out = []
    for check in dict.fromkeys(r["check"] for r in rows):
        mine = [r for r in rows if r["check"] == check]
        # NaN sorts as the worst: a non-finite difference is never hidden behind a finite one.
        worst = max(
            mine, key=lambda r: math.inf if math.isnan(r["max_abs_diff"]) else r["max_abs_diff"]
        )
        out.append(
            {
                "check": check,
                "layers": len(mine) if mine[0]["layer"] is not None else 0,
                "max_abs_diff": worst["max_abs_diff"],
                "worst_layer": worst["layer"],
                "passed": all(within(r["max_abs_diff"], tolerance) for r in mine),
            }
        )
    return out


def checks(result: ExperimentResult) -> list[dict[str, Any]]:
    """One pass/fail row per check (its worst layer), for the report's parity table."""
    tol = result.summary["tolerance"]
    return [
        {
            "check": c["check"],
            "where": "model"
            if c["worst_layer"] is None
            else f"worst of {c['layers']} layers: layer {c['worst_layer']}",
            "value": c["max_abs_diff"],
            "tolerance": tol,
            "passed": c["passed"],
        }
        for c in result.summary["per_check"]
    ]


def passed(result: ExperimentResult) -> bool:
    """Whether every difference is finite and within the tolerance."""
    return bool(result.summary["passed"])


def table(result: ExperimentResult) -> str:
    """A text table: one line per check with its worst layer and its pass mark.

    Example:
        >>> print(table(run(CrosscheckConfig(), model, (hf, tok))))  # doctest: +ELLIPSIS
        check ...
        PASS: every difference is finite and <= 0.0001
    """
    s = result.summary
    lines = [f"{'check':<15}{'layers':>7}{'max |diff|':>14}{'worst layer':>13}  ok"]
    for c in s["per_check"]:
        layer = "-" if c["worst_layer"] is None else str(c["worst_layer"])
        layers = "-" if not c["layers"] else str(c["layers"])
        ok = "yes" if c["passed"] else "NO"
        lines.append(f"{c['check']:<15}{layers:>7}{c['max_abs_diff']:>14.3e}{layer:>13}  {ok}")
    tol = f"{s['tolerance']:g}"
    lines.append(
        f"PASS: every difference is finite and <= {tol}"
        if s["passed"]
        else f"FAIL: some difference is above {tol} or not finite"
    )
    return "\n".join(lines)


SPEC = Experiment(
    name=NAME,
    title="HuggingFace parity: TransformerLens hooks against plain HF hooks",
    help="compare TransformerLens hooks with plain HuggingFace hooks, every layer",
    config=CrosscheckConfig,
    run=run,
    resolve=resolve,
    inputs=inputs,
    figures=(
        Figure(
            "parity",
            "Non-zero TL-vs-HF differences",
            "Each point is one check at one layer whose TransformerLens and HuggingFace values "
            "differ; the y axis is logarithmic and the dashed line is the tolerance. Checks that "
            "agree exactly are not drawn (see the table above): points far below the line are "
            "float32 rounding.",
        ),
    ),
    table=table,
    passed=passed,
    checks=checks,
    needs_reference=True,
)
