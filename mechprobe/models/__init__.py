"""Model loading: the TransformerLens bridge, an independent HuggingFace reference, provenance.

``load_model`` and ``load_reference`` are imported lazily, so that ``describe`` and the registry
are available without importing torch.

Example:
    >>> from mechprobe.models import describe
    >>> describe("tiny-gpt2")["sha256"] is None
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mechprobe.models.describe import describe
from mechprobe.models.registry import KNOWN_MODELS, ModelShape, model_shape, static_shape

if TYPE_CHECKING:
    from mechprobe.models.loading import load_model, load_reference

__all__ = [
    "KNOWN_MODELS",
    "ModelShape",
    "describe",
    "load_model",
    "load_reference",
    "model_shape",
    "static_shape",
]


def __getattr__(name: str) -> Any:
    if name in {"load_model", "load_reference"}:
        from mechprobe.models import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
