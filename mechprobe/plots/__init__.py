"""Plot functions: build and return plotly figures from arrays; they compute nothing, show nothing.

One module per experiment (``mechprobe.plots.<experiment>``), each with ``figures(result)`` that
returns ``{figure name: plotly Figure or None}`` for the figures its experiment's spec declares;
`mechprobe.plots.theme` gives every figure the same look; `mechprobe.plots.export` writes them.
"""

from __future__ import annotations

import importlib
from typing import Any


def figures_of(result: Any) -> dict[str, Any]:
    """The figures of an experiment's result: ``mechprobe.plots.<result.name>.figures(result)``.

    Example:
        >>> from mechprobe.experiments.result import ExperimentResult
        >>> figures_of(ExperimentResult("nope"))
        Traceback (most recent call last):
        ...
        ModuleNotFoundError: No module named 'mechprobe.plots.nope'
    """
    return dict(importlib.import_module(f"mechprobe.plots.{result.name}").figures(result))


def captions_of(result: Any) -> dict[str, str]:
    """Captions that describe the figures as drawn, where a plot module says more than its spec.

    A plot module may define ``captions(result) -> {figure name: caption}``; the spec's captions
    stand for every figure it leaves out.

    Example:
        >>> from mechprobe.experiments.result import ExperimentResult
        >>> captions_of(ExperimentResult("crosscheck"))
        {}
    """
    module = importlib.import_module(f"mechprobe.plots.{result.name}")
    return dict(module.captions(result)) if hasattr(module, "captions") else {}
