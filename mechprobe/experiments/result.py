"""The result every experiment returns: arrays and a JSON-ready summary.

Experiments compute; they do not write. The runner (`mechprobe.runner`) writes a result, its
figures and its manifest into ``OUT/<experiment>/`` as a whole.

Example:
    >>> res = ExperimentResult("heads", {"q_mean": np.zeros(4)}, {"layer": 1})
    >>> res.arrays["q_mean"].shape
    (4,)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ExperimentResult:
    """Arrays and a JSON summary from one experiment.

    Attributes:
        name: Experiment name; its output directory is ``OUT/<name>/``.
        arrays: Arrays written to ``arrays.npz`` (no pickles: no object arrays).
        summary: JSON-ready dict written to ``summary.json``.
    """

    name: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
