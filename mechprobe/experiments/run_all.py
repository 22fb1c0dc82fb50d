"""``mechprobe all``: the four experiments and the crosscheck on one model, then the report.

The model and its HuggingFace reference are loaded once and shared by every step. Each step
writes ``OUT/<step>/`` (``summary.json`` last); ``resume=True`` skips steps whose
``summary.json`` exists. The page ``OUT/index.html`` is rebuilt from what is on disk.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechprobe.experiments.result import is_finished

STEPS = ("crosscheck", "negation", "heads", "similarity", "replace")


@dataclass(frozen=True)
class AllConfig:
    """Settings of ``mechprobe all``.

    Attributes:
        model: Model name (default ``smollm2-135m``, offline).
        out: Output directory.
        text: Text source of the negation experiment (path, URL or ``gutenberg:ID``).
        resume: Skip steps that already finished in ``out``.
        device: Torch device.
        png: Export PNGs (default: when a browser is available).
        steps: The steps to run, in order.
    """

    model: str = "smollm2-135m"
    out: str = "mechprobe-out"
    text: str | None = None
    resume: bool = False
    device: str | None = None
    png: bool | None = None
    steps: tuple[str, ...] = STEPS


@dataclass
class _Context:
    config: AllConfig
    model: Any
    reference: Any


def _crosscheck(ctx: _Context) -> None:
    from mechprobe.experiments.crosscheck import CrosscheckConfig, run_crosscheck

    res = run_crosscheck(
        CrosscheckConfig(model=ctx.config.model), model=ctx.model, reference=ctx.reference
    )
    res.save(ctx.config.out, png=ctx.config.png)
    print(res.table())


def _negation(ctx: _Context) -> None:
    from mechprobe.experiments.negation import NegationConfig, run_negation
    from mechprobe.plots.negation import figures

    cfg = NegationConfig(
        model=ctx.config.model, **({"text": ctx.config.text} if ctx.config.text else {})
    )
    res = run_negation(cfg, model=ctx.model, reference=ctx.reference)
    res.save(ctx.config.out, figures(res), png=ctx.config.png)


def _heads(ctx: _Context) -> None:
    from mechprobe.experiments.heads import HeadsConfig, run_heads
    from mechprobe.plots.heads import figures

    res = run_heads(HeadsConfig(model=ctx.config.model), model=ctx.model, reference=ctx.reference)
    res.save(ctx.config.out, figures(res), png=ctx.config.png)


def _similarity(ctx: _Context) -> None:
    from mechprobe.experiments.similarity import SimilarityConfig, run_similarity
    from mechprobe.plots.similarity import figures

    res = run_similarity(
        SimilarityConfig(model=ctx.config.model), model=ctx.model, reference=ctx.reference
    )
    res.save(ctx.config.out, figures(res), png=ctx.config.png)


def _replace(ctx: _Context) -> None:
    from mechprobe.experiments.replace import ReplaceConfig, run_replace
    from mechprobe.models.registry import model_shape
    from mechprobe.plots.replace import figures

    # The course's layers (3, 5, 8) need a 9-layer model; smaller ones use their last layers.
    last = model_shape(ctx.model).n_layers - 1
    base = ReplaceConfig()
    cfg = ReplaceConfig(
        model=ctx.config.model,
        head_layer=min(base.head_layer, last),
        mlp_layer=min(base.mlp_layer, last),
        scale_layer=min(base.scale_layer, last),
    )
    res = run_replace(cfg, model=ctx.model, reference=ctx.reference)
    res.save(ctx.config.out, figures(res), png=ctx.config.png)


RUNNERS: dict[str, Callable[[_Context], None]] = {
    "crosscheck": _crosscheck,
    "negation": _negation,
    "heads": _heads,
    "similarity": _similarity,
    "replace": _replace,
}


def run_all(config: AllConfig) -> dict[str, Any]:
    """Run every step, write ``OUT/index.html``, and return timings and the report path.

    Args:
        config: The settings.

    Returns:
        ``{"timings": {step: seconds}, "skipped": [...], "report": Path}``.

    Example:
        >>> run_all(AllConfig(model="tiny-gpt2", out="/tmp/x"))["report"]
        PosixPath('/tmp/x/index.html')
    """
    from mechprobe.models import load_model, load_reference
    from mechprobe.report import build_report
    from mechprobe.report.findings import all_findings
    from mechprobe.report.provenance import environment, model_provenance, package_versions

    timings: dict[str, float] = {}
    todo = [s for s in config.steps if not (config.resume and is_finished(config.out, s))]
    skipped = [s for s in config.steps if s not in todo]
    for s in skipped:
        print(f"[skip] {s}: finished in an earlier run (--resume)", file=sys.stderr)
    if todo:
        t0 = time.perf_counter()
        print(f"[load] {config.model}", file=sys.stderr)
        model = load_model(config.model, device=config.device)
        reference = load_reference(config.model, device=config.device)
        timings["load"] = time.perf_counter() - t0
        ctx = _Context(config, model, reference)
        for i, step in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {step}", file=sys.stderr)
            t0 = time.perf_counter()
            RUNNERS[step](ctx)
            timings[step] = time.perf_counter() - t0
            print(f"[{i}/{len(todo)}] {step}: done in {timings[step]:.1f} s", file=sys.stderr)
    provenance = {
        **model_provenance(config.model),
        **environment(),
        "packages": package_versions(),
    }
    neg_summary = Path(config.out) / "negation" / "summary.json"
    if neg_summary.is_file():
        import json

        neg = json.loads(neg_summary.read_text(encoding="utf-8"))
        provenance["text"] = {k: neg.get(k) for k in ("text_source", "text_sha256") if k in neg}
    report = build_report(
        config.out,
        experiments=list(config.steps),
        provenance=provenance,
        findings=all_findings(config.out),
        timings=timings,
    )
    return {"timings": timings, "skipped": skipped, "report": report}
