"""TransformerLens vs HuggingFace parity for every layer of a model.

For each layer: ``hook_q/k/v`` against the HF projection outputs (GPT-2: ``attn.c_attn`` split;
Llama: ``q_proj/k_proj/v_proj``), ``mlp.hook_pre`` against ``mlp.c_fc`` / ``gate_proj``,
``hook_resid_post`` against ``output_hidden_states``, ``hook_pattern`` against
``output_attentions`` (eager); then the final norm and the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechprobe.io import write_json
from mechprobe.models.registry import model_shape

DEFAULT_TEXT = (
    "The lighthouse keeper did not expect visitors, but the boat could reach the island "
    "before the storm, and she always kept a spare lamp burning."
)


@dataclass(frozen=True)
class CrosscheckConfig:
    """Settings of a parity check.

    Attributes:
        model: Model name (see ``mechprobe models``).
        text: Text to run (no BOS is added).
        tolerance: Largest allowed max-abs difference.
        device: Torch device, default CUDA if available else CPU.
    """

    model: str = "smollm2-135m"
    text: str = DEFAULT_TEXT
    tolerance: float = 1e-4
    device: str | None = None


@dataclass
class CrosscheckResult:
    """Per-check maximum absolute differences.

    Attributes:
        rows: ``(check, layer, max_abs_diff)``; layer is -1 for model-wide checks.
        tolerance: The threshold used.
        summary: JSON-ready summary.
    """

    rows: list[tuple[str, int, float]]
    tolerance: float
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every difference is within tolerance."""
        return all(d <= self.tolerance for _, _, d in self.rows)

    def table(self) -> str:
        """A text table: one line per check, the worst layer, and the verdict."""
        lines = [f"{'check':<14}{'layers':>8}{'max |diff|':>14}{'worst layer':>13}  ok"]
        for check in dict.fromkeys(r[0] for r in self.rows):
            rows = [r for r in self.rows if r[0] == check]
            worst = max(rows, key=lambda r: r[2])
            ok = "yes" if worst[2] <= self.tolerance else "NO"
            layer = "-" if worst[1] < 0 else str(worst[1])
            lines.append(f"{check:<14}{len(rows):>8}{worst[2]:>14.3e}{layer:>13}  {ok}")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{verdict}: every difference <= {self.tolerance:g}"
            if self.passed
            else f"{verdict}: some difference > {self.tolerance:g}"
        )
        return "\n".join(lines)

    def figures(self) -> dict[str, Any]:
        """The parity heatmap (per check and layer), built from the rows."""
        from mechprobe.plots.crosscheck import parity_heatmap

        checks = [c for c in dict.fromkeys(r[0] for r in self.rows)]
        layers = sorted({r[1] for r in self.rows if r[1] >= 0})
        z = np.full((len(checks), len(layers)), np.nan)
        for check, layer, diff in self.rows:
            if layer >= 0:
                z[checks.index(check), layers.index(layer)] = np.log10(max(diff, 1e-12))
        per_layer = [c for c in checks if not np.isnan(z[checks.index(c)]).all()]
        z = z[[checks.index(c) for c in per_layer]]
        return {"parity": parity_heatmap(per_layer, layers, z, self.tolerance)}

    def save(self, out_dir: str | Path, *, png: bool | None = None) -> Path:
        """Write ``crosscheck.json`` (every row), the figure and ``summary.json`` (maxima).

        Returns:
            The path of ``OUT/crosscheck/crosscheck.json``.
        """
        from mechprobe.plots.export import save_figures

        dest = Path(out_dir) / "crosscheck"
        path = write_json(dest / "crosscheck.json", self.summary)
        save_figures(self.figures(), dest / "figures", png=png)
        write_json(dest / "summary.json", {k: v for k, v in self.summary.items() if k != "rows"})
        return path


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def run_crosscheck(
    config: CrosscheckConfig, *, model: Any = None, reference: Any = None
) -> CrosscheckResult:
    """Compare every TransformerLens hook result with plain HuggingFace hooks.

    Args:
        config: The settings.
        model: A loaded bridge (loaded from ``config.model`` if None).
        reference: A loaded ``(hf_model, tokenizer)`` (loaded if None).

    Returns:
        A `CrosscheckResult`; ``result.passed`` tells whether all checks hold.

    Example:
        >>> res = run_crosscheck(CrosscheckConfig(model="tiny-gpt2"))
        >>> res.passed
        True
    """
    from mechprobe.models import load_model, load_reference
    from mechprobe.reference import capture_reference

    model = model if model is not None else load_model(config.model, device=config.device)
    hf, tok = (
        reference if reference is not None else load_reference(config.model, device=config.device)
    )
    tokens = torch.tensor([tok(config.text, add_special_tokens=False).input_ids])
    shape = model_shape(model)
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens)
    ref = capture_reference(hf, tokens)
    rows: list[tuple[str, int, float]] = []
    for L in range(shape.n_layers):
        for c in "qkv":
            name = f"blocks.{L}.attn.hook_{c}"
            rows.append((f"hook_{c}", L, _maxdiff(cache[name], ref[name])))
        name = f"blocks.{L}.mlp.hook_pre"
        rows.append(("mlp.hook_pre", L, _maxdiff(cache[name], ref[name])))
        resid = cache[f"blocks.{L}.hook_resid_post"]
        hf_resid = (
            ref["hidden_states"][L + 1]
            if L < shape.n_layers - 1
            else ref[f"blocks.{L}.hook_resid_post"]
        )
        rows.append(("resid_post", L, _maxdiff(resid, hf_resid)))
        rows.append(
            ("pattern", L, _maxdiff(cache[f"blocks.{L}.attn.hook_pattern"], ref["attentions"][L]))
        )
    rows.append(("final_norm", -1, _maxdiff(cache["ln_final.hook_out"], ref["hidden_states"][-1])))
    rows.append(("logits", -1, _maxdiff(logits, ref["logits"])))
    result = CrosscheckResult(rows, config.tolerance)
    result.summary = {
        "model": config.model,
        "text": config.text,
        "n_tokens": int(tokens.shape[1]),
        "tolerance": config.tolerance,
        "passed": result.passed,
        "max_abs_diff": {
            check: max(d for c, _, d in rows if c == check)
            for check in dict.fromkeys(r[0] for r in rows)
        },
        "rows": [{"check": c, "layer": L, "max_abs_diff": d} for c, L, d in rows],
    }
    return result
