"""The result every experiment returns, and how it is written to ``OUT/<experiment>/``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mechprobe.io import write_json, write_npz


@dataclass
class ExperimentResult:
    """Arrays and a JSON summary from one experiment.

    Attributes:
        name: Experiment name; its output directory is ``OUT/<name>/``.
        arrays: Arrays written to ``arrays.npz`` (no pickles).
        summary: JSON-ready dict written to ``summary.json``.

    Example:
        >>> res = ExperimentResult("heads", {"q_mean": np.zeros(4)}, {"model": "tiny-gpt2"})
        >>> res.save("out")
        PosixPath('out/heads')
    """

    name: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def save(
        self,
        out_dir: str | os.PathLike[str],
        figures: Mapping[str, object] | None = None,
        *,
        png: bool | None = None,
    ) -> Path:
        """Write ``arrays.npz``, figures (``figures/``), then ``summary.json``.

        ``summary.json`` is written last, so its presence means the experiment finished.

        Args:
            out_dir: The run's output directory (``--out``).
            figures: ``{name: plotly Figure}`` to write as HTML (+PNG).
            png: Force PNG export on/off (default: when a browser is available).

        Returns:
            ``OUT/<name>``.
        """
        from mechprobe.plots.export import save_figures

        dest = Path(out_dir) / self.name
        write_npz(dest / "arrays.npz", self.arrays)
        if figures:
            save_figures(figures, dest / "figures", png=png)
        write_json(dest / "summary.json", self.summary)
        return dest


def is_finished(out_dir: str | os.PathLike[str], name: str) -> bool:
    """Whether ``OUT/<name>/summary.json`` exists (the experiment completed).

    Example:
        >>> is_finished("out", "heads")
        False
    """
    return (Path(out_dir) / name / "summary.json").is_file()
