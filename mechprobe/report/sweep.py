"""The comparative page of a sweep, ``OUT/index.html``, built from each model's step directories.

Per experiment the models' per-layer curves overlaid on relative depth (each spec's
``depth_curves``), a findings table (models x experiments: the verdict and its key number),
parity per model, provenance and cost per model, and a link to each model's own report.

Example:
    >>> build_sweep_page(Path("out"), ["tiny-gpt2"], {}).name
    'index.html'
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechprobe.io import write_text
from mechprobe.report.html import VERDICT_CLASS
from mechprobe.report.page import CSS, ERROR_TRAP, RENDER


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_object(path: Path) -> dict[str, Any] | None:
    """A JSON object (a manifest, a finding); None when unreadable or not an object."""
    data = _read(path)
    return data if isinstance(data, dict) else None


def _figure(fig: Any, fid: str) -> str:
    spec = fig.to_json().replace("</", "<\\/")
    return (
        f"<script type='application/json' id='{fid}'>{spec}</script>"
        f"<div class='mp-figure' data-spec='{fid}' id='fig-{fid}'></div>"
    )


def _findings(specs: Mapping[str, Any], dirs: Mapping[str, Path]) -> str:
    head = "<tr><th>experiment</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in dirs) + "</tr>"
    rows = []
    for name, spec in specs.items():
        if spec.finding is None:
            continue
        cells = []
        for d in dirs.values():
            f = _read_object(d / name / "finding.json")
            if f is None:
                cells.append("<td class='muted'>not run</td>")
                continue
            cls = VERDICT_CLASS.get(f["verdict"], "muted")
            cells.append(
                f"<td><span class='verdict {cls}'>{html.escape(f['verdict'])}</span><br>"
                f"{html.escape(f.get('key', ''))}<br><span class='muted'>"
                f"{html.escape(f.get('sample', ''))}</span></td>"
            )
        rows.append(f"<tr><td>{html.escape(spec.title)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _row(cells: Sequence[str]) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _per_model(dirs: Mapping[str, Path]) -> str:
    """Parity and provenance/cost per model, from the manifests and crosscheck checks."""
    prov, parity = [], []
    for model, d in dirs.items():
        manifests = [m for p in sorted(d.glob("*/manifest.json")) if (m := _read_object(p))]
        if not manifests:
            continue
        info = manifests[0]["model"]
        wall = sum(m.get("wall_s", 0.0) for m in manifests)
        peak = max(m.get("peak_rss_mb", 0.0) for m in manifests)
        link = f"<a href='{html.escape(d.name)}/index.html'>{html.escape(model)}</a>"
        cells = [info.get("source"), info.get("sha256"), info.get("terms")]
        prov.append(_row([link, *(html.escape(str(c or "-")) for c in cells),
                          f"{wall:.1f} s", f"{peak:,.0f} MB"]))  # fmt: skip
        checks = _read(d / "crosscheck" / "checks.json")
        if checks:
            worst = max(checks, key=lambda c: c["value"] if c["value"] == c["value"] else 1e300)
            ok = all(c["passed"] for c in checks)
            mark = "<span class='ok'>pass</span>" if ok else "<span class='bad'>FAIL</span>"
            cells = [html.escape(model), str(len(checks)), html.escape(worst["check"])]
            parity.append(_row([*cells, f"{worst['value']:.3g}", mark]))
    heads: tuple[str, ...] = ("model", "checks", "largest difference", "max |diff|", "")
    parity_table = (
        f"<table><tr>{''.join(f'<th>{h}</th>' for h in heads)}</tr>{''.join(parity)}</table>"
        if parity
        else "<p class='muted'>No crosscheck in this sweep.</p>"
    )
    heads = ("model (its report)", "weights", "sha256", "terms", "steps' wall time", "peak memory")
    prov_table = f"<table><tr>{''.join(f'<th>{h}</th>' for h in heads)}</tr>{''.join(prov)}</table>"
    return (
        "<h2 id='parity'>Parity with HuggingFace, per model</h2>" + parity_table
        + "<h2 id='provenance'>Models, provenance and cost</h2>" + prov_table
    )  # fmt: skip


def build_sweep_page(out: Path, models: Sequence[str], skipped: Mapping[str, str]) -> Path:
    """Write ``OUT/index.html`` for a sweep over ``models`` (skipped ones with their reason).

    Args:
        out: The sweep's output directory (each model's run in `mechprobe.runner.sweep.model_dir`).
        models: The models, in page order.
        skipped: ``{model: reason}`` of models that could not run here.
    """
    from plotly.offline import get_plotlyjs

    from mechprobe.experiments import registry
    from mechprobe.plots.sweep import MIN_LAYERS_JOINED, depth_overlay
    from mechprobe.runner.steps import load_result
    from mechprobe.runner.sweep import model_dir

    specs = registry()
    dirs = {m: model_dir(out, m) for m in models if m not in skipped}
    sections, n = [], 0
    for name, spec in specs.items():
        if spec.depth_curves is None:
            continue
        curves, n_layers = {}, {}
        for model, d in dirs.items():
            manifest = _read_object(d / name / "manifest.json")
            if manifest is None:
                continue
            curves[model] = spec.depth_curves(load_result(d / name))
            n_layers[model] = manifest["model_shape"]["n_layers"]
        if not curves:
            continue
        n += 1
        fig = depth_overlay(curves, n_layers, f"{spec.title}: every model on relative depth")
        sections.append(
            f"<h2 id='{name}'>{html.escape(spec.title)}</h2><p class='caption'>Each model's "
            "per-layer curves on relative depth (0 = first layer, 1 = last): colour is the "
            "model, the dash the curve, one panel per quantity. Curves that line up show the "
            "same finding at the same relative depth. A model of fewer than "
            f"{MIN_LAYERS_JOINED} layers is drawn as crosses, not joined: a line between two "
            f"layers would invent a trend.</p>{_figure(fig, f'spec{n}')}"
        )
    skipped_html = "".join(
        f"<li><b>{html.escape(m)}</b>: skipped ({html.escape(r)})</li>" for m, r in skipped.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>mechprobe sweep - {html.escape(", ".join(models))}</title>
<style>{CSS}</style>
<script>{ERROR_TRAP}</script>
<script>{get_plotlyjs()}</script>
</head><body>
<h1>mechprobe sweep: {html.escape(", ".join(models))}</h1>
<p class="muted">The same experiments on several models. Each model's full report is linked
below; this page puts their findings and per-layer curves side by side.</p>
{f"<ul>{skipped_html}</ul>" if skipped_html else ""}
<h2 id="findings">Findings, models x experiments</h2>
{_findings(specs, dirs)}
{"".join(sections)}
{_per_model(dirs)}
<script>{RENDER}</script>
</body></html>
"""
    return write_text(out / "index.html", page)
