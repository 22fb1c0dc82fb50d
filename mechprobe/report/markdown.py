"""The findings table in Markdown (README and docs), read from step directories on disk.

One row per experiment with a finding, one column per output directory (a model's run), each
cell the verdict in bold, this run's numbers and the sample behind them: the same
``finding.json`` files the HTML report shows.

Example:
    >>> print(findings_markdown({}))
    | experiment | course finding (GPT-2) |
    | --- | --- |
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

START, END = "<!-- findings:start -->", "<!-- findings:end -->"
#: Markers of the activation-patching table (`patch_markdown`).
PATCH_START, PATCH_END = "<!-- patching:start -->", "<!-- patching:end -->"
#: The built-in pair sets, in the patching table's row order, with their row titles.
PAIR_SETS = {"ioi": "indirect-object identification", "negation": "negation flips the answer"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def read_findings(out: Path) -> dict[str, dict[str, str]]:
    """``{experiment: finding}`` of every step in ``out`` that has a ``finding.json``.

    Example:
        >>> read_findings(Path("no/such/dir"))
        {}
    """
    from mechprobe.experiments import registry

    found = {}
    for name in registry():
        path = out / name / "finding.json"
        if path.is_file():
            found[name] = with_causal_line(name, json.loads(path.read_text(encoding="utf-8")), out)
    return found


def with_causal_line(name: str, finding: dict[str, str], out: Path) -> dict[str, str]:
    """E1's finding with the ablation's causal line appended, where ``out/ablate`` ablated E1.

    Example:
        >>> with_causal_line("negation", {"this_run": "x"}, Path("no/such/dir"))
        {'this_run': 'x'}
    """
    path = out / "ablate" / "summary.json"
    if name != "negation" or not path.is_file():
        return finding
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return finding
    line = summary.get("causal_line")
    if summary.get("probe") != "negation" or not line:
        return finding
    return {**finding, "this_run": f"{finding.get('this_run', '')} {line}".strip()}


def findings_markdown(outs: Mapping[str, Path], *, short: bool = False) -> str:
    """The Markdown table: experiments x (the course's claim, then one column per run).

    Args:
        outs: ``{column title (the model): output directory}``.
        short: Each cell the verdict and its key number only (the README's form); the long form
            (the documentation's Findings page) adds this run's numbers and the sample.

    Example:
        >>> import json, pathlib
        >>> step = pathlib.Path("runs/m/heads")
        >>> step.mkdir(parents=True)
        >>> _ = (step / "finding.json").write_text(json.dumps({"claim": "QK < 0.",
        ...     "this_run": "5 of 30 layers.", "verdict": "partly holds",
        ...     "key": "holds at 5/30 layers", "sample": "one text"}))
        >>> print(findings_markdown({"m": pathlib.Path("runs/m")}, short=True).splitlines()[-1])
        | E2: isolating attention heads | QK < 0. | **partly holds**: holds at 5/30 layers |
    """
    from mechprobe.experiments import registry

    columns = {title: read_findings(Path(path)) for title, path in outs.items()}
    lines = [
        "| experiment | course finding (GPT-2) |" + "".join(f" {t} |" for t in columns),
        "| --- | --- |" + " --- |" * len(columns),
    ]
    for name, spec in registry().items():
        if not spec.in_all:  # a probe of the user's classes tests no course claim
            continue
        cells = [columns[t].get(name) for t in columns]
        if not any(cells):
            continue
        claim = next(c["claim"] for c in cells if c)
        row = f"| {_cell(spec.title)} | {_cell(claim)} |"
        for c in cells:
            if c is None:
                row += " - |"
            elif short:
                row += f" **{c['verdict']}**: {_cell(c.get('key') or c['this_run'])} |"
            else:
                row += (
                    f" **{c['verdict']}**: {_cell(c['this_run'])}"
                    + (f" *({_cell(c['sample'])})*" if c.get("sample") else "")
                    + " |"
                )
        lines.append(row)
    return "\n".join(lines)


def verdicts_in_markdown(text: str) -> dict[str, list[str]]:
    """``{experiment title: [verdict per column]}`` parsed back from the README's table.

    Example:
        >>> verdicts_in_markdown("| E9: x | claim | **holds**: 1 | **does not hold**: 2 |")
        {'E9: x': ['holds', 'does not hold']}
    """
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) >= 3:
            verdicts = [re.match(r"\*\*(.+?)\*\*", c) for c in cells[2:]]
            if all(verdicts):
                out[cells[0]] = [v.group(1) for v in verdicts if v is not None]
    return out


def replace_block(document: str, table: str, start: str = START, end: str = END) -> str:
    r"""``document`` with the text between the markers (the findings ones) replaced by ``table``.

    Example:
        >>> replace_block(f"a {START}old{END} b", "new")
        'a <!-- findings:start -->\nnew\n<!-- findings:end --> b'
    """
    head, rest = document.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def _patch_cell(step: Path) -> str:
    """One model's patching result on one pair set, from ``step`` (a ``patch`` step directory)."""
    import numpy as np

    try:
        s = json.loads((step / "summary.json").read_text(encoding="utf-8"))
        f = json.loads((step / "finding.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "-"
    base = (
        f"clean logit diff {s['clean_mean']:.2f} (corrupt {s['corrupt_mean']:.2f}), "
        f"right on {s['clean_accuracy']:.0%} of {s['n_pairs']} pairs"
    )
    if s.get("failed"):
        return f"**fails the set**: {base}; not patched"
    bits = [base, f"{s['n_significant']} of {s['n_cells']} cells survive FDR {s['alpha']:g}"]
    with np.load(step / "arrays.npz") as a:
        if "resid_pre_mean" in a:
            last = a["resid_pre_mean"][:, -1]  # the last token (positions aligned at the end)
            at = np.flatnonzero(np.nan_to_num(last, nan=-np.inf) >= 0.5)
            if at.size:
                bits.append(f"the last position carries the answer from layer {int(at[0])}")
        if "z_mean" in a:
            m, q = a["z_mean"], a["z_qvalue"]
            L, h = np.unravel_index(int(np.nanargmax(m)), m.shape)
            bits.append(
                f"strongest head L{L}H{h} {m[L, h]:.2f} "
                f"[{a['z_ci_low'][L, h]:.2f}, {a['z_ci_high'][L, h]:.2f}], q {q[L, h]:.2g}"
            )
    return f"**{f['verdict']}**: " + _cell("; ".join(bits))


def patch_markdown(runs: Mapping[str, Mapping[str, Path]]) -> str:
    """The activation-patching table: built-in pair sets x models, read from ``patch`` steps.

    Each cell: the verdict (``holds``: some cell survives the FDR with an interval above 0),
    the clean and corrupt logit differences, how many cells survive, the first layer from which
    patching the last position restores at least half of the clean logit difference, and the
    strongest head; a model that fails a set says so (it was not patched).

    Args:
        runs: ``{model: {pair set: step directory}}``.

    Example:
        >>> print(patch_markdown({"m": {"ioi": Path("no/such/patch")}}))
        | pair set | m |
        | --- | --- |
        | indirect-object identification (`ioi`) | - |
    """
    lines = ["| pair set |" + "".join(f" {m} |" for m in runs), "| --- |" + " --- |" * len(runs)]
    sets = [k for k in PAIR_SETS if any(k in r for r in runs.values())]
    for key in sets:
        cells = [_patch_cell(r[key]) if key in r else "-" for r in runs.values()]
        lines.append(f"| {PAIR_SETS[key]} (`{key}`) |" + "".join(f" {c} |" for c in cells))
    return "\n".join(lines)


#: The patching figures shown under the table, with their row titles.
PATCH_FIGURES = {
    "positions": "layer x position (residual stream)",
    "heads": "layer x head (head outputs)",
}


def patch_figures_markdown(figures: Path, models: list[str]) -> str:
    """Under the patching table: a pair set x figure by model grid of the PNGs that exist.

    ``figures/patch_<set>_<model>_<figure>.png`` as `scripts/make_figures.py` names them; a set
    a model failed has no figure and shows "-".

    Example:
        >>> patch_figures_markdown(Path("no/such/dir"), ["m"])
        ''
    """
    rows = []
    for key in PAIR_SETS:
        for fig, title in PATCH_FIGURES.items():
            names = [f"patch_{key}_{m}_{fig}.png" for m in models]
            if not any((figures / n).is_file() for n in names):
                continue
            cells = [
                f"![{m}: {key}, {fig}](figures/{n})" if (figures / n).is_file() else "-"
                for m, n in zip(models, names, strict=True)
            ]
            rows.append(f"| `{key}`, {title} |" + "".join(f" {c} |" for c in cells))
    if not rows:
        return ""
    head = [
        "",
        "Heatmaps: colour is the share of the clean logit difference restored by patching one "
        "cell (0 nothing, 1 all of it); a dot marks a cell that survives the FDR.",
        "",
        "| pair set, figure |" + "".join(f" {m} |" for m in models),
        "| --- |" + " --- |" * len(models),
    ]
    return "\n".join(head + rows)
