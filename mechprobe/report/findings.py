"""The course's finding next to this run's, per experiment, read from ``OUT/<exp>/summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / name / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _crosscheck(s: dict[str, Any]) -> dict[str, Any]:
    worst = max(s["max_abs_diff"].values())
    return {
        "course": "The course split GPT-2's fused c_attn by hand; mechprobe reads per-head "
        "hook_q/k/v from TransformerLens and must agree with plain HF hooks.",
        "this_run": f"Largest TL-vs-HF difference over every layer and check: {worst:.2e} "
        f"(tolerance {s['tolerance']:g}).",
        "holds": bool(s["passed"]),
    }


def _heads(s: dict[str, Any]) -> dict[str, Any]:
    f, m = s["negative_fraction"], s["median"]
    return {
        "course": "Raw QK scores shift strongly negative (most are below zero), which is what "
        "makes softmax attention sparse.",
        "this_run": f"Layer {s['layer']}: negative fraction same-head {f['same']:.1%}, "
        f"different-head {f['diff']:.1%}; medians {m['same']:.3g} and {m['diff']:.3g}.",
        "holds": bool(s["finding_holds"]),
    }


def _replace(s: dict[str, Any]) -> dict[str, Any]:
    parts, holds = [], []
    for name, f in s.get("scaling_finding", {}).items():
        parts.append(f"{name}: {f.get('text', '')}")
        holds.append(bool(f.get("holds")))
    return {
        "course": "Scaling a block's output by 0.1 collapses the norm at that block and later "
        "layers partly restore it; scaling by 10 blows it up and the final layer compresses it.",
        "this_run": " ".join(parts)
        + f" TL vs HF max difference {s['parity']['max_abs_diff']:.2e}.",
        "holds": all(holds) if holds else None,
    }


def _negation(s: dict[str, Any]) -> dict[str, Any]:
    best = None
    for row in s.get("per_layer", []):
        pct = (row.get("qkv") or {}).get("percent_significant")
        if pct is not None and (best is None or pct > best[1]):
            best = (row.get("layer"), pct)
    where = (
        f" Most negation-tuned Q|K|V layer: {best[0]} ({best[1]:.1f}% significant)." if best else ""
    )
    mlp = [row["mlp"]["percent_significant"] for row in s.get("per_layer", []) if "mlp" in row]
    if mlp:
        half = len(mlp) // 2
        where += (
            f" MLP units significant: {sum(mlp[:half]) / max(half, 1):.0f}% on average in the "
            f"first half of the layers, {sum(mlp[half:]) / max(len(mlp) - half, 1):.0f}% in the "
            "second."
        )
    return {
        "course": "In GPT-2 large a sizeable share of Q/K/V and MLP units in most layers "
        "separates negation from affirmation tokens, with high probe accuracy.",
        "this_run": f"{s.get('n_negation')} negation and {s.get('n_affirmation')} affirmation "
        f"targets.{where}",
        "holds": None,
    }


def _similarity(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "course": "Unit-by-unit cosines of Q/K/V for one token pile up near +-1 in early layers "
        "and flatten toward 0 with depth.",
        "this_run": str(s.get("finding", "see the per-layer histograms")),
        "holds": s.get("finding_holds"),
    }


BUILDERS = {
    "crosscheck": _crosscheck,
    "negation": _negation,
    "heads": _heads,
    "similarity": _similarity,
    "replace": _replace,
}


def all_findings(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Course finding vs this run for every experiment that finished in ``out_dir``.

    Example:
        >>> all_findings("mechprobe-out")["heads"]["holds"]
        False
    """
    out = Path(out_dir)
    result = {}
    for name, build in BUILDERS.items():
        summary = _load(out, name)
        if summary is None:
            continue
        try:
            result[name] = build(summary)
        except (KeyError, TypeError, ValueError) as exc:  # an older summary layout
            result[name] = {
                "course": "",
                "this_run": f"(summary not readable: {exc})",
                "holds": None,
            }
    return result
