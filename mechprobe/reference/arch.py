"""Where things live in HuggingFace models: one declarative map per architecture.

A researcher without TransformerLens hooks the modules below. Each `ArchMap` names, relative to
the HF causal LM, the decoder blocks, the Q/K/V projection(s) inside a block (GPT-2's one fused
``attn.c_attn`` or separate ``q_proj/k_proj/v_proj``), the MLP's input projection, optional
QK-norms and the final norm. Capture (`mechprobe.reference.capture`) and the reference
interventions (`mechprobe.reference.interventions`) read this map and nothing else, and the
helpers here are the only place that splits a fused projection or unpacks a block's output
(a tensor in transformers 5, a tuple ``(hidden, *rest)`` in 4.x).

Example:
    >>> arch = hf_arch(hf)
    >>> arch.family, arch.fused
    ('gpt2', True)
    >>> arch.module(hf, "mlp_in", 0)
    Conv1D(nf=256, nx=64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import einops
from jaxtyping import Float
from torch import Tensor, nn

from mechprobe.errors import MechprobeError
from mechprobe.models.registry import model_shape

if TYPE_CHECKING:
    from transformers import PreTrainedModel

COMPONENTS = ("q", "k", "v")


@dataclass(frozen=True)
class ArchMap:
    """Module paths of one HuggingFace architecture.

    Attributes:
        family: Short name (``gpt2``, ``llama``, ``gemma3``).
        model_types: ``config.model_type`` values of this family.
        blocks: Path of the block list from the causal LM.
        qkv: Path of each Q/K/V projection within a block: one fused path (GPT-2) or three.
        mlp_in: Path of the MLP input projection whose output is ``mlp.hook_pre``.
        final_norm: Path of the final norm from the causal LM.
        q_norm: Path of the per-head query norm within a block (QK-norm models), else None.
        k_norm: Path of the per-head key norm within a block, else None.
        attention: Path of the attention module within a block.
        rotary: Whether attention rotates Q and K (the module's ``position_embeddings``).
    """

    family: str
    model_types: tuple[str, ...]
    blocks: str
    qkv: tuple[str, ...]
    mlp_in: str
    final_norm: str
    q_norm: str | None = None
    k_norm: str | None = None
    attention: str = "self_attn"
    rotary: bool = True

    @property
    def fused(self) -> bool:
        """Whether one projection produces Q, K and V together (``[q | k | v]`` columns)."""
        return len(self.qkv) == 1

    def module(self, hf: Any, part: str, layer: int | None = None) -> nn.Module:
        """The module ``part`` of the model (or of block ``layer``).

        Parts: ``blocks``, ``final_norm`` (model-wide); ``block``, ``mlp_in``, ``q_norm``,
        ``k_norm`` and ``q``/``k``/``v``: the projection producing that component, fused or not.
        """
        if part in ("blocks", "final_norm"):
            return hf.get_submodule(getattr(self, part))
        if part == "attention":
            return hf.get_submodule(self.blocks)[layer].get_submodule(self.attention)
        block = hf.get_submodule(self.blocks)[layer]
        if part == "block":
            return block
        if part in COMPONENTS:
            path = self.qkv[0] if self.fused else self.qkv[COMPONENTS.index(part)]
        else:
            path = getattr(self, part)
        if path is None:
            raise MechprobeError(f"{self.family} models have no {part} module")
        return block.get_submodule(path)

    def qkv_modules(self, hf: Any, layer: int) -> dict[str, nn.Module]:
        """``{"qkv": fused}`` or ``{"q": .., "k": .., "v": ..}`` projections of one block."""
        if self.fused:
            return {"qkv": self.module(hf, "q", layer)}
        return {c: self.module(hf, c, layer) for c in COMPONENTS}

    def column_offset(self, hf: Any, component: str) -> int:
        """Where ``component``'s columns start in the output of the module producing it."""
        if not self.fused:
            return 0
        s = model_shape(hf)
        return COMPONENTS.index(component) * s.n_heads * s.d_head


GPT2 = ArchMap(
    family="gpt2",
    model_types=("gpt2",),
    blocks="transformer.h",
    qkv=("attn.c_attn",),
    mlp_in="mlp.c_fc",
    final_norm="transformer.ln_f",
    attention="attn",
    rotary=False,
)
LLAMA = ArchMap(
    family="llama",
    model_types=("llama", "mistral", "qwen2"),
    blocks="model.layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    mlp_in="mlp.gate_proj",
    final_norm="model.norm",
)
GEMMA3 = ArchMap(
    family="gemma3",
    model_types=("gemma3_text", "gemma3"),
    blocks="model.layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    mlp_in="mlp.gate_proj",
    final_norm="model.norm",
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
)
ARCHS = (GPT2, LLAMA, GEMMA3)


def hf_arch(model: PreTrainedModel) -> ArchMap:
    """The `ArchMap` of a HuggingFace model (by ``config.model_type``), or a one-line error.

    Example:
        >>> hf_arch(hf).blocks
        'transformer.h'
    """
    model_type = getattr(model.config, "model_type", None)
    for arch in ARCHS:
        if model_type in arch.model_types:
            return arch
    names = ", ".join(t for a in ARCHS for t in a.model_types)
    raise MechprobeError(
        f"unsupported HuggingFace architecture {type(model).__name__} (model_type "
        f"{model_type!r}) for reference hooks; supported model types: {names}"
    )


def split_heads(
    arch: ArchMap, hf: Any, name: str, out: Float[Tensor, "batch pos features"]
) -> dict[str, Float[Tensor, "batch pos head d_head"]]:
    """Per-head Q/K/V from a projection output: ``name`` is ``"qkv"`` (fused) or a component.

    Example:
        >>> parts = split_heads(hf_arch(hf), hf, "qkv", torch.zeros(1, 5, 192))
        >>> parts["k"].shape
        torch.Size([1, 5, 4, 16])
    """
    s = model_shape(hf)
    if name == "qkv":
        parts = einops.rearrange(
            out,
            "batch pos (component head d_head) -> component batch pos head d_head",
            component=3,
            head=s.n_heads,
        )
        return dict(zip(COMPONENTS, parts, strict=True))
    n = s.n_heads if name == "q" else s.n_kv_heads
    return {name: einops.rearrange(out, "batch pos (head d_head) -> batch pos head d_head", head=n)}


def block_hidden(output: Any) -> Tensor:
    """The hidden state a decoder block returns: the tensor itself, or ``output[0]`` (4.x tuple).

    Example:
        >>> block_hidden((torch.ones(1), "rest")).tolist()
        [1.0]
    """
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: Any, hidden: Tensor) -> Any:
    """``output`` with its hidden state replaced, keeping a tuple's other members untouched.

    Example:
        >>> with_hidden((torch.ones(1), "rest"), torch.zeros(1))
        (tensor([0.]), 'rest')
    """
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
