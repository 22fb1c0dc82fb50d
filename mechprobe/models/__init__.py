"""Model loading: the TransformerLens bridge and an independent HuggingFace reference."""

from mechprobe.models.loading import load_model, load_reference
from mechprobe.models.registry import KNOWN_MODELS, ModelShape, model_shape

__all__ = ["KNOWN_MODELS", "ModelShape", "load_model", "load_reference", "model_shape"]
