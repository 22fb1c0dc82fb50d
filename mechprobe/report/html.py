"""Assemble ``OUT/index.html``: one self-contained page (plotly.js embedded, no network needed).

The page is built from what the experiments wrote: ``OUT/<exp>/summary.json`` and the figure specs
``OUT/<exp>/figures/*.json``. It therefore works the same after ``--resume``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechprobe.io import write_text

TITLES = {
    "crosscheck": "HuggingFace parity",
    "negation": "E1 - Negation tuning in Q/K/V and MLP units",
    "heads": "E2 - Isolating attention heads",
    "similarity": "E3 - Q/K/V similarities across layers",
    "replace": "E4 - Replacing activations",
}

_ERROR_TRAP = """
window.addEventListener('error', function (e) {
  var root = document.documentElement;
  root.dataset.jsErrors = (root.dataset.jsErrors || '') + String(e.message) + ';';
});
"""

# Each figure's spec sits in a JSON script tag; the page counts rendered figures in
# <html data-figures-rendered>, which the browser test reads back.
_RENDER = """
var figs = document.querySelectorAll('div.mp-figure');
document.documentElement.dataset.figuresTotal = figs.length;
document.documentElement.dataset.figuresRendered = 0;
figs.forEach(function (div) {
  var spec = JSON.parse(document.getElementById(div.dataset.spec).textContent);
  Plotly.newPlot(div, spec.data, spec.layout, {responsive: true, displaylogo: false})
    .then(function () {
      div.dataset.rendered = '1';
      var root = document.documentElement;
      root.dataset.figuresRendered = Number(root.dataset.figuresRendered) + 1;
    });
});
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: .2rem; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
td, th { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
.ok { color: #0a7a28; font-weight: 600; }
.bad { color: #b00020; font-weight: 600; }
.finding { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.finding div { background: #f8f8fb; border-left: 4px solid #5470c6; padding: .5rem .9rem; }
.mp-figure { width: 100%; min-height: 420px; margin: .8rem 0 1.6rem; }
.muted { color: #666; font-size: .85rem; }
"""


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def key_numbers(
    summary: Mapping[str, Any], prefix: str = "", depth: int = 0
) -> list[tuple[str, Any]]:
    """Flatten the scalar entries of a summary (nested dicts to ``a.b`` keys; lists skipped).

    Example:
        >>> key_numbers({"a": 1, "b": {"c": 2.5}, "d": [1, 2]})
        [('a', 1), ('b.c', 2.5)]
    """
    out: list[tuple[str, Any]] = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth < 2:
            out += key_numbers(value, f"{name}.", depth + 1)
        elif isinstance(value, (int, float, str, bool)) and not (
            isinstance(value, str) and len(value) > 160
        ):
            out.append((name, value))
    return out


def _figure_specs(directory: Path) -> list[Path]:
    """Figure specs in the order the experiment built them (``order.json``), else by name."""
    order_file = directory / "order.json"
    if order_file.is_file():
        names = json.loads(order_file.read_text(encoding="utf-8"))
        return [directory / f"{n}.json" for n in names if (directory / f"{n}.json").is_file()]
    return sorted(p for p in directory.glob("*.json") if p.name != "order.json")


def _section(name: str, exp_dir: Path, findings: Mapping[str, Any] | None, idx: list[int]) -> str:
    summary_path = exp_dir / "summary.json"
    title = TITLES.get(name, name)
    if not summary_path.is_file():
        return f"<h2 id='{name}'>{html.escape(title)}</h2><p class='bad'>not run</p>"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    parts = [f"<h2 id='{name}'>{html.escape(title)}</h2>"]
    if findings:
        verdict = findings.get("holds")
        tag = (
            ""
            if verdict is None
            else (
                "<span class='ok'>holds</span>"
                if verdict
                else "<span class='bad'>does not hold</span>"
            )
        )
        parts.append(
            "<div class='finding'>"
            f"<div><b>Course finding</b><p>{html.escape(findings['course'])}</p></div>"
            f"<div><b>This run</b> {tag}<p>{html.escape(findings['this_run'])}</p></div></div>"
        )
    numbers = key_numbers(summary)
    if numbers:
        parts.append("<details><summary>Key numbers</summary>")
        parts.append(_table(numbers, ["quantity", "value"]) + "</details>")
    for spec in _figure_specs(exp_dir / "figures"):
        idx[0] += 1
        sid = f"spec{idx[0]}"
        text = spec.read_text(encoding="utf-8").replace("</", "<\\/")
        parts.append(f"<h3>{html.escape(spec.stem.replace('_', ' '))}</h3>")
        parts.append(f"<script type='application/json' id='{sid}'>{text}</script>")
        parts.append(f"<div class='mp-figure' data-spec='{sid}' id='fig-{name}-{spec.stem}'></div>")
    return "\n".join(parts)


def build_report(
    out_dir: str | Path,
    *,
    experiments: Sequence[str],
    provenance: Mapping[str, Any],
    findings: Mapping[str, Mapping[str, Any]] | None = None,
    timings: Mapping[str, float] | None = None,
) -> Path:
    """Write ``OUT/index.html`` from the experiments' outputs; return its path.

    Args:
        out_dir: The run's output directory.
        experiments: Experiment names in page order (``crosscheck``, ``negation``...).
        provenance: Model/data/package facts (``mechprobe.report.provenance``).
        findings: Per experiment ``{"course": str, "this_run": str, "holds": bool | None}``.
        timings: Per experiment wall time in seconds.

    Example:
        >>> build_report("out", experiments=["heads"], provenance={"model": "tiny-gpt2"})
        PosixPath('out/index.html')
    """
    from plotly.offline import get_plotlyjs

    out = Path(out_dir)
    findings = findings or {}
    idx = [0]
    prov_rows = key_numbers(provenance)
    nav = " | ".join(f"<a href='#{n}'>{html.escape(TITLES.get(n, n))}</a>" for n in experiments)
    sections = [_section(n, out / n, findings.get(n), idx) for n in experiments]
    timing = _table([(n, f"{t:.1f} s") for n, t in (timings or {}).items()], ["step", "wall time"])
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>mechprobe report - {html.escape(str(provenance.get("model", "")))}</title>
<style>{_CSS}</style>
<script>{_ERROR_TRAP}</script>
<script>{get_plotlyjs()}</script>
</head><body>
<h1>mechprobe report</h1>
<p class="muted">Four experiments from a course on LLM mechanisms, reproduced on TransformerLens
hooks and cross-checked against plain HuggingFace hooks.</p>
<p>{nav}</p>
<h2 id="provenance">Provenance</h2>
{_table(prov_rows, ["item", "value"])}
{timing if timings else ""}
{"".join(sections)}
<script>{_RENDER}</script>
</body></html>
"""
    return write_text(out / "index.html", page)
