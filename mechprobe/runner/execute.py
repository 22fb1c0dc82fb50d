"""One experiment computed on a loaded model: the path the CLI, the runner and the library share.

`execute` runs an experiment's resolved config and measures it; `step_manifest` turns that into
the manifest a step directory carries. The runner (`mechprobe.runner.run`) and the library
functions (`mechprobe.api`) both call these, so a CLI step and a library result are computed by
the same code.

Example:
    >>> from mechprobe.experiments import get
    >>> from mechprobe.models import model_shape
    >>> spec = get("similarity")
    >>> config = spec.resolve(spec.config(n_boot=0), model_shape(model))
    >>> run = execute(spec, config, model)
    >>> run.result.arrays["hist"].shape, run.wall_s > 0
    ((2, 6, 2, 100), True)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Experiment

if TYPE_CHECKING:
    from mechprobe.models.types import Model


@dataclass
class Execution:
    """An experiment's result with what the manifest records of its computation.

    Attributes:
        spec: The experiment.
        config: Its resolved config.
        result: What it returned.
        model_shape: The model's shape (``ModelShape.as_dict()``).
        started: Start time (seconds since the epoch).
        finished: End time.
        wall_s: Wall time of the computation.
        peak_rss_mb: Peak resident memory during it, MiB.
        peak_rss: How the peak was measured.
    """

    spec: Experiment
    config: Any
    result: ExperimentResult
    model_shape: dict[str, Any]
    started: float
    finished: float
    wall_s: float
    peak_rss_mb: float
    peak_rss: str


def execute(
    spec: Experiment, config: Any, model: Model, reference: Any = None, data: Any = None
) -> Execution:
    """Run ``spec`` with its resolved ``config`` on ``model``, leaving torch's threads as found.

    Args:
        spec: The experiment.
        config: Its config, resolved against the model (``spec.resolve``).
        model: A TransformerLens bridge.
        reference: The HF ``(model, tokenizer)`` pair when ``spec.needs_reference``.
        data: `mechprobe.experiments.spec.Inputs.data` (None: ``run`` reads the config's).

    Returns:
        The result and its measurements.
    """
    from mechprobe.models import model_shape
    from mechprobe.runner.memory import peak_rss_mb, reset_peak
    from mechprobe.runner.process import preserved_state

    was_reset = reset_peak()
    started, t0 = time.time(), time.perf_counter()
    with preserved_state():
        result = spec.run(config, model, reference if spec.needs_reference else None, data)
    wall = time.perf_counter() - t0
    peak, how = peak_rss_mb(was_reset)
    return Execution(
        spec, config, result, model_shape(model).as_dict(), started, time.time(), wall, peak, how
    )


def step_manifest(run: Execution, request: dict[str, Any], command: str) -> dict[str, Any]:
    """The manifest of a step computed by `execute` (the files' sha256 are added on writing).

    Args:
        run: The computation.
        request: What was asked for (`mechprobe.runner.manifest.request`).
        command: The command line, or a note that it was a library call.
    """
    from mechprobe.runner.manifest import environment, package_versions

    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))

    return {
        "step": run.spec.name,
        "request": request,
        "model": request["model"],
        "model_shape": run.model_shape,
        "config": dataclasses.asdict(run.config),
        "inputs": request["inputs"],
        **({"solver": request["solver"]} if "solver" in request else {}),
        "versions": package_versions(),
        "environment": environment(),
        "command": command,
        "started": stamp(run.started),
        "finished": stamp(run.finished),
        "wall_s": round(run.wall_s, 3),
        "compute_s": round(run.wall_s, 3),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "peak_rss": run.peak_rss,
    }
