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


def replace_block(document: str, table: str) -> str:
    r"""``document`` with the text between the findings markers replaced by ``table``.

    Example:
        >>> replace_block(f"a {START}old{END} b", "new")
        'a <!-- findings:start -->\nnew\n<!-- findings:end --> b'
    """
    head, rest = document.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"
