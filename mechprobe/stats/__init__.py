"""Statistics on arrays, free of any model: probes, corrections, held-out tests, similarities.

The submodules are imported on first use, so that importing one light module (say
`mechprobe.stats.cosine`) does not import torch.

Example:
    >>> from mechprobe.stats import fit_logistic
    >>> fit_logistic(np.c_[np.arange(8.0)], np.array([0, 1] * 4)).beta.shape
    (1,)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LogisticFit": "mechprobe.stats.logistic",
    "fit_logistic": "mechprobe.stats.logistic",
    "bonferroni_mask": "mechprobe.stats.multiple",
    "fdr_mask": "mechprobe.stats.multiple",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mechprobe.stats' has no attribute {name!r}")
