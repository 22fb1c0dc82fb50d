"""The experiments, each declared once by a spec (`mechprobe.experiments.spec.Experiment`).

`registry` lists them in report order; the CLI, the runner, the report, the README's findings
table and the reproduce script all iterate it. Adding an experiment: one module here defining
``SPEC``, its name added to `EXPERIMENTS`, one plot module ``mechprobe.plots.<name>`` and tests.

Example:
    >>> list(registry())
    ['crosscheck', 'negation', 'heads', 'similarity', 'replace', 'probe', 'ablate', 'patch']
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mechprobe.experiments.spec import Experiment

#: Module names of the experiments, in report order.
EXPERIMENTS = (
    "crosscheck",
    "negation",
    "heads",
    "similarity",
    "replace",
    "probe",
    "ablate",
    "patch",
)


@cache
def registry() -> dict[str, Experiment]:
    """``{name: spec}`` of every experiment, in report order (imports are cheap: no torch).

    Example:
        >>> registry()["heads"].title
        'E2: isolating attention heads'
    """
    return {
        name: importlib.import_module(f"mechprobe.experiments.{name}").SPEC for name in EXPERIMENTS
    }


def default_steps() -> list[str]:
    """The experiments ``mechprobe all`` and ``mechprobe sweep`` run when not told which.

    Example:
        >>> "probe" in default_steps(), "heads" in default_steps()
        (False, True)
    """
    return [name for name, spec in registry().items() if spec.in_all]


def get(name: str) -> Experiment:
    """The spec of experiment ``name``, or a one-line error listing the experiments.

    Example:
        >>> get("nope")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: unknown experiment 'nope' (choose from crosscheck, ...)
    """
    from mechprobe.errors import MechprobeError

    specs = registry()
    if name not in specs:
        raise MechprobeError(f"unknown experiment {name!r} (choose from {', '.join(specs)})")
    return specs[name]
