"""Step directories: ``OUT/<step>/`` written as a whole, read back and verified.

A step directory holds ``arrays.npz``, ``summary.json``, ``finding.json`` (the course's claim
and the verdict), ``checks.json`` (pass/fail checks such as parity), ``figures/`` (each figure as
a plotly JSON spec, a standalone HTML file and, with a browser, a PNG, plus ``index.json`` with
every declared figure's title and caption) and, written last, ``manifest.json``, which lists the
sha256 of every other file. The directory is built in a temporary sibling and swapped in whole
(`mechprobe.io.atomic_directory`).

Example:
    >>> from mechprobe.experiments.result import ExperimentResult
    >>> from mechprobe.experiments import crosscheck
    >>> summary = {"passed": True, "tolerance": 1e-4, "per_check": []}
    >>> res = ExperimentResult("crosscheck", {"x": np.zeros(2)}, summary)
    >>> path = write_step(Path("out"), crosscheck.SPEC, res, {}, {"step": "crosscheck"}, png=False)
    >>> verify_step(path, read_manifest(path)) is None
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Experiment
from mechprobe.io import atomic_directory, sha256_file, write_json, write_npz
from mechprobe.runner.manifest import FORMAT, read_manifest

__all__ = ["load_result", "read_manifest", "verify_step", "write_step"]


def write_step(
    out: Path,
    spec: Experiment,
    result: ExperimentResult,
    figures: dict[str, Any],
    manifest: dict[str, Any],
    *,
    png: bool | None = None,
    captions: dict[str, str] | None = None,
) -> Path:
    """Write ``OUT/<spec.name>/`` as a whole: results, figures, then the manifest.

    Args:
        out: The output directory.
        spec: The experiment's spec (its figures' titles and captions, finding, checks).
        result: What the experiment returned.
        figures: ``{figure name: plotly Figure or None}`` from the plot module.
        manifest: The manifest (the files' sha256 are added here).
        png: Export PNGs (default: when a browser is available).
        captions: Captions that describe the figures as drawn (`mechprobe.plots.captions_of`),
            replacing the spec's for those figures.

    Returns:
        The step directory.
    """
    from mechprobe.plots.export import save_figures

    with atomic_directory(out / spec.name, name=spec.name) as tmp:
        write_npz(tmp / "arrays.npz", result.arrays)
        write_json(tmp / "summary.json", result.summary)
        if spec.finding is not None:
            write_json(tmp / "finding.json", spec.finding(result).as_dict())
        if spec.checks is not None:
            write_json(tmp / "checks.json", spec.checks(result))
        drawn = {f.name: figures[f.name] for f in spec.figures if figures.get(f.name) is not None}
        save_figures(drawn, tmp / "figures", png=png)
        said = captions or {}
        index = [
            {
                "name": f.name,
                "title": f.title,
                "caption": said.get(f.name, f.caption),
                "drawn": f.name in drawn,
            }
            for f in spec.figures
        ]
        write_json(tmp / "figures" / "index.json", index)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            **manifest,
            "files": {str(p.relative_to(tmp)): sha256_file(p) for p in files},
        }
        write_json(tmp / "manifest.json", manifest)
    return out / spec.name


def verify_step(step_dir: Path, manifest: dict[str, Any] | None) -> str | None:
    """Why a step directory's files do not match its manifest (None: every file matches).

    Example:
        >>> verify_step(Path("no/such/step"), None)
        'no manifest'
    """
    if manifest is None:
        return "no manifest"
    for name, digest in manifest.get("files", {}).items():
        path = step_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} differs from what its manifest recorded"
    return None


def load_result(step_dir: Path) -> ExperimentResult:
    """Read a step's arrays and summary back (``allow_pickle=False``).

    Example:
        >>> load_result(Path("out/crosscheck")).summary  # doctest: +SKIP
        {'passed': True}
    """
    with np.load(step_dir / "arrays.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    summary = json.loads((step_dir / "summary.json").read_text(encoding="utf-8"))
    return ExperimentResult(step_dir.name, arrays, summary)
