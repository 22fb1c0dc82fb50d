"""Where the Q/K/V projections, MLP input projection and blocks live in HuggingFace models.

Two families are supported, as a researcher would hook them without TransformerLens:
GPT-2 (fused ``attn.c_attn``, ``mlp.c_fc``, blocks in ``transformer.h``) and Llama-style models
(``self_attn.q_proj/k_proj/v_proj``, ``mlp.gate_proj``, blocks in ``model.layers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import einops
from torch import Tensor, nn

from mechprobe.errors import MechprobeError
from mechprobe.models.registry import model_shape


@dataclass(frozen=True)
class HFArch:
    """Accessors for one HuggingFace model family.

    Attributes:
        family: ``"gpt2"`` or ``"llama"``.
        model: The HuggingFace causal LM.
    """

    family: str
    model: Any

    @property
    def blocks(self) -> nn.ModuleList:
        """The decoder blocks, in order."""
        if self.family == "gpt2":
            return self.model.transformer.h
        return self.model.model.layers

    def mlp_in(self, layer: int) -> nn.Module:
        """The module whose output is TransformerLens's ``mlp.hook_pre`` (c_fc / gate_proj)."""
        block = self.blocks[layer]
        return block.mlp.c_fc if self.family == "gpt2" else block.mlp.gate_proj

    def qkv_modules(self, layer: int) -> dict[str, nn.Module]:
        """The module(s) producing Q, K and V: ``{"qkv": c_attn}`` or ``{"q", "k", "v"}`` projs."""
        attn = self.blocks[layer].attn if self.family == "gpt2" else self.blocks[layer].self_attn
        if self.family == "gpt2":
            return {"qkv": attn.c_attn}
        return {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}

    def split_qkv(self, name: str, out: Tensor) -> dict[str, Tensor]:
        """Turn a projection output ``[batch, pos, features]`` into per-head tensors.

        For GPT-2's fused ``c_attn`` (``name == "qkv"``) the features are ``(qkv head d_head)``.
        """
        s = model_shape(self.model)
        if name == "qkv":
            parts = einops.rearrange(
                out,
                "batch pos (qkv head d_head) -> qkv batch pos head d_head",
                qkv=3,
                head=s.n_heads,
            )
            return {"q": parts[0], "k": parts[1], "v": parts[2]}
        n = s.n_heads if name == "q" else s.n_kv_heads
        return {
            name: einops.rearrange(out, "batch pos (head d_head) -> batch pos head d_head", head=n)
        }


def hf_arch(model: Any) -> HFArch:
    """Return the `HFArch` of a HuggingFace model, or raise for an unsupported family.

    Example:
        >>> hf_arch(hf).family
        'gpt2'
    """
    if hasattr(model, "transformer") and hasattr(model.transformer, "h"):
        return HFArch("gpt2", model)
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers") and hasattr(inner.layers[0], "self_attn"):
        proj = inner.layers[0].self_attn
        if all(hasattr(proj, p) for p in ("q_proj", "k_proj", "v_proj")) and hasattr(
            inner.layers[0].mlp, "gate_proj"
        ):
            return HFArch("llama", model)
    raise MechprobeError(
        f"unsupported HuggingFace architecture {type(model).__name__} for reference hooks "
        "(supported: GPT-2 and Llama-style models)"
    )
