"""mechprobe: mechanistic-interpretability pipelines on TransformerLens, checked against HF hooks.

The public API is imported lazily so that ``import mechprobe`` is cheap and has no side effects.

Example:
    >>> import mechprobe
    >>> model = mechprobe.load_model("tiny-gpt2")
    >>> hf, tok = mechprobe.load_reference("tiny-gpt2")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "mechprobe.models",
    "load_reference": "mechprobe.models",
    "model_shape": "mechprobe.models",
    "collect": "mechprobe.activations",
    "collect_units": "mechprobe.activations",
    "heads_to_units": "mechprobe.units",
    "units_to_heads": "mechprobe.units",
    "qkv_units": "mechprobe.units",
    "QKVLayout": "mechprobe.units",
    "temporary_hooks": "mechprobe.hooks",
    "capture_reference": "mechprobe.reference",
    "fit_logistic": "mechprobe.stats",
    "MechprobeError": "mechprobe.errors",
    "probe": "mechprobe.api",
    "negation": "mechprobe.api",
    "heads": "mechprobe.api",
    "similarity": "mechprobe.api",
    "replace": "mechprobe.api",
    "crosscheck": "mechprobe.api",
    "patch": "mechprobe.api",
    "PatchResult": "mechprobe.api",
    "load_result": "mechprobe.api",
    "Result": "mechprobe.api",
    "ProbeResult": "mechprobe.api",
    "ablate": "mechprobe.api",
    "AblateResult": "mechprobe.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mechprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
