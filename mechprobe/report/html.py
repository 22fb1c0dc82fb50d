"""Assemble ``OUT/index.html`` from what is on disk: one self-contained page, no network needed.

The page is built only from the step directories (`mechprobe.runner.steps`): their manifests
(model, settings, inputs, versions, timing), results, findings, checks and figure specs, with
each figure's title and caption as the experiment declared them. It therefore always describes
exactly the results it shows, after ``--resume`` too. Experiment titles come from the registry.

Example:
    >>> build_report("out").name  # an empty directory gives a page that says so
    'index.html'
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechprobe.io import write_text
from mechprobe.report.page import CSS, ERROR_TRAP, RENDER

VERDICT_CLASS = {
    "holds": "ok",
    "partly holds": "partly",
    "decodable, explained by word identity": "lexical",
    "does not hold": "bad",
    "not tested": "muted",
}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    if value is None:
        return "-"
    return html.escape(str(value))


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """An HTML table; cells are escaped, floats shown with 4 significant digits.

    Example:
        >>> table([("a", 0.123456)], ["name", "value"])
        '<table><tr><th>name</th><th>value</th></tr><tr><td>a</td><td>0.1235</td></tr></table>'
    """
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
        elif isinstance(value, int | float | str | bool) and not (
            isinstance(value, str) and len(value) > 160
        ):
            out.append((name, value))
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_manifest(path: Path) -> dict[str, Any]:
    """A manifest's JSON object; ``{}`` when it is unreadable or not an object."""
    data = _read_json(path)
    return data if isinstance(data, dict) else {}


def _verdict(verdict: str) -> str:
    cls = VERDICT_CLASS.get(verdict, "muted")
    return f"<span class='verdict {cls}'>{html.escape(verdict)}</span>"


def _finding(finding: Mapping[str, str]) -> str:
    sample = finding.get("sample")
    return (
        "<div class='finding'>"
        f"<div><b>Course finding</b><p>{html.escape(finding['claim'])}</p></div>"
        f"<div><b>This run</b> {_verdict(finding['verdict'])}"
        f"<p>{html.escape(finding['this_run'])}</p>"
        + (f"<p class='muted'>Sample: {html.escape(sample)}</p>" if sample else "")
        + "</div></div>"
    )


def _checks(rows: Sequence[Mapping[str, Any]]) -> str:
    body = [
        (
            r["check"],
            r.get("where", ""),
            r["value"],
            r["tolerance"],
            "<span class='ok'>pass</span>" if r["passed"] else "<span class='bad'>FAIL</span>",
        )
        for r in rows
    ]
    head = "".join(f"<th>{h}</th>" for h in ("check", "where", "max |diff|", "tolerance", ""))
    cells = "".join(
        "<tr>" + "".join(f"<td>{c if i == 4 else _fmt(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in body
    )
    return f"<table class='checks'><tr>{head}</tr>{cells}</table>"


def _figures(step_dir: Path, name: str, counter: list[int]) -> list[str]:
    parts = []
    for fig in _read_json(step_dir / "figures" / "index.json") or []:
        spec_path = step_dir / "figures" / f"{fig['name']}.json"
        parts.append(f"<h3>{html.escape(fig['title'])}</h3>")
        parts.append(f"<p class='caption'>{html.escape(fig['caption'])}</p>")
        if not fig.get("drawn") or not spec_path.is_file():
            parts.append("<p class='muted'>Nothing to draw in this run.</p>")
            continue
        counter[0] += 1
        sid = f"spec{counter[0]}"
        text = spec_path.read_text(encoding="utf-8").replace("</", "<\\/")
        parts.append(f"<script type='application/json' id='{sid}'>{text}</script>")
        parts.append(
            f"<div class='mp-figure' data-spec='{sid}' id='fig-{name}-{fig['name']}'></div>"
        )
    return parts


def _section(name: str, title: str, step_dir: Path, counter: list[int]) -> str:
    manifest = _read_manifest(step_dir / "manifest.json")
    summary = _read_json(step_dir / "summary.json") or {}
    model = manifest.get("model", {}).get("model", "?")
    parts = [
        f"<h2 id='{name}'>{html.escape(title)}</h2>",
        f"<p class='muted'>Model {html.escape(model)}; finished {manifest.get('finished', '?')} "
        f"in {manifest.get('wall_s', float('nan')):.1f} s.</p>",
    ]
    finding = _read_json(step_dir / "finding.json")
    if finding:
        from mechprobe.report.markdown import with_causal_line

        parts.append(_finding(with_causal_line(name, finding, step_dir.parent)))
    checks = _read_json(step_dir / "checks.json")
    if checks:
        parts.append(_checks(checks))
    parts += _figures(step_dir, name, counter)
    settings = sorted(manifest.get("config", {}).items())
    parts.append("<details><summary>Settings and key numbers</summary>")
    parts.append(table([(k, json.dumps(v)) for k, v in settings], ["setting", "value"]))
    parts.append(table(key_numbers(summary), ["quantity", "value"]) + "</details>")
    return "\n".join(parts)


def _overview(steps: Mapping[str, tuple[str, Path]]) -> str:
    rows = []
    for name, (title, step_dir) in steps.items():
        f = _read_json(step_dir / "finding.json")
        if f:
            rows.append(
                f"<tr><td><a href='#{name}'>{html.escape(title)}</a></td>"
                f"<td>{_verdict(f['verdict'])}"
                f"</td><td>{html.escape(f.get('key', ''))}</td>"
                f"<td>{html.escape(f.get('sample', ''))}</td></tr>"
            )
    if not rows:
        return ""
    head = "<tr><th>experiment</th><th>verdict</th><th>key number</th><th>sample</th></tr>"
    return "<h2 id='findings'>Findings</h2><table>" + head + "".join(rows) + "</table>"


def solver_text(solver: Mapping[str, Any]) -> str:
    """A manifest's probe solver entry in one line, as the report's provenance shows it.

    Example:
        >>> solver_text({"path": "torch", "device": "cpu", "dtype": "float64", "why": "X=0"})
        'torch (X=0); cpu; float64'
    """
    build = solver.get("build") or {}
    how = ", ".join(str(build[k]) for k in ("compiler", "flags", "dispatch") if build.get(k))
    how = how or solver.get("why", "")
    path = f"{solver.get('path')} ({how})" if how else str(solver.get("path"))
    return "; ".join([path, *(str(solver[k]) for k in ("device", "dtype") if solver.get(k))])


def _provenance(manifests: Mapping[str, Mapping[str, Any]]) -> str:
    models = {json.dumps(m["model"], sort_keys=True): m["model"] for m in manifests.values()}
    rows = []
    for m in models.values():
        rows += [(f"model {m['model']}", m.get("source")), ("weights sha256", m.get("sha256"))]
        if m.get("terms"):
            rows.append(("terms of use", m["terms"]))
    for name, m in manifests.items():
        for key, digest in m.get("inputs", {}).items():
            rows.append((f"{name}: {key} sha256", digest))
        if (m.get("request") or {}).get("device"):
            rows.append((f"{name}: device", m["request"]["device"]))
        if m.get("solver"):
            rows.append((f"{name}: probe solver", solver_text(m["solver"])))
    latest = max(manifests.values(), key=lambda m: m.get("finished", ""))
    rows += sorted(latest.get("versions", {}).items())
    rows += sorted(latest.get("environment", {}).items())
    timing = [
        (n, m["model"]["model"], m.get("started"), f"{m.get('wall_s', 0):.1f} s",
         f"{m.get('peak_rss_mb', 0):,.0f} MB")
        for n, m in manifests.items()
    ]  # fmt: skip
    return (
        "<h2 id='provenance'>Provenance and timing</h2>"
        + table(timing, ["step", "model", "started", "wall time", "peak memory"])
        + table(rows, ["item", "value"])
    )


def build_report(out_dir: str | Path) -> Path:
    """Write ``OUT/index.html`` from the step directories on disk; return its path.

    Args:
        out_dir: The run's output directory.

    Example:
        >>> build_report("out")
        PosixPath('out/index.html')
    """
    from plotly.offline import get_plotlyjs

    from mechprobe.experiments import registry

    out = Path(out_dir)
    specs = registry()
    steps = {
        name: (spec.title, out / name)
        for name, spec in specs.items()
        if (out / name / "manifest.json").is_file()
    }
    manifests = {name: _read_manifest(d / "manifest.json") for name, (_, d) in steps.items()}
    models = sorted({m.get("model", {}).get("model", "?") for m in manifests.values()})
    counter = [0]
    sections = [_section(n, title, d, counter) for n, (title, d) in steps.items()]
    missing = [s.title for n, s in specs.items() if n not in steps]
    notes = []
    if len(models) > 1:
        notes.append(
            f"<p class='bad'>This directory holds results of {len(models)} models "
            f"({', '.join(models)}); each section names its model.</p>"
        )
    if missing:
        notes.append(f"<p class='muted'>Not run here: {html.escape('; '.join(missing))}.</p>")
    nav = " | ".join(f"<a href='#{n}'>{html.escape(t)}</a>" for n, (t, _) in steps.items())
    title = f"mechprobe report - {', '.join(models) or 'no results'}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
<script>{ERROR_TRAP}</script>
<script>{get_plotlyjs()}</script>
</head><body>
<h1>mechprobe report: {html.escape(", ".join(models) or "no results yet")}</h1>
<p class="muted">Experiments from a course on LLM mechanisms, reproduced on TransformerLens
hooks and cross-checked against plain HuggingFace hooks. Each section shows the course's claim,
this run's numbers and verdict, the checks, and every figure with a caption on how to read it.</p>
{"".join(notes)}
<p>{nav}</p>
{_overview(steps)}
{_provenance(manifests) if manifests else ""}
{"".join(sections)}
<script>{RENDER}</script>
</body></html>
"""
    return write_text(out / "index.html", page)
