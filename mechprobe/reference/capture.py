"""Record Q/K/V and MLP-input activations with plain ``register_forward_hook`` calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechprobe.reference.arch import hf_arch


def capture_reference(
    hf_model: Any,
    tokens: Int[Tensor, "batch pos"],
    layers: Sequence[int] | None = None,
    *,
    attentions: bool = True,
) -> dict[str, Any]:
    """Run the HF reference once and return activations under TransformerLens's hook names.

    Q/K/V come from forward hooks on ``attn.c_attn`` (GPT-2, split into heads) or
    ``q_proj/k_proj/v_proj`` (Llama), MLP input from ``mlp.c_fc`` / ``mlp.gate_proj``.

    Args:
        hf_model: An unmodified HuggingFace causal LM (eager attention for ``attentions``).
        tokens: ``[batch, pos]`` token ids.
        layers: Layers to hook (default: all).
        attentions: Also return ``output_attentions``.

    Returns:
        A dict with ``blocks.L.attn.hook_q/k/v`` (``[batch, pos, head, d_head]``),
        ``blocks.L.mlp.hook_pre``, ``blocks.L.hook_resid_post`` (the block's output),
        ``hidden_states`` (tuple, HF convention: embeddings first,
        last after the final norm), ``attentions`` (tuple of ``[batch, head, q_pos, k_pos]``),
        and ``logits``.

    Example:
        >>> ref = capture_reference(hf, tokens)
        >>> ref["blocks.0.attn.hook_k"].shape
        torch.Size([1, 9, 4, 16])
    """
    arch = hf_arch(hf_model)
    layers = range(len(arch.blocks)) if layers is None else layers
    out: dict[str, Any] = {}
    handles = []

    def qkv_hook(layer: int, name: str) -> Any:
        def hook(module: Any, args: Any, output: Tensor) -> None:
            for comp, t in arch.split_qkv(name, output.detach()).items():
                out[f"blocks.{layer}.attn.hook_{comp}"] = t.clone()

        return hook

    def block_hook(layer: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            # transformers 5 returns a tensor; 4.x a tuple (hidden, *rest).
            hidden = output[0] if isinstance(output, tuple) else output
            out[f"blocks.{layer}.hook_resid_post"] = hidden.detach().clone()

        return hook

    def mlp_hook(layer: int) -> Any:
        def hook(module: Any, args: Any, output: Tensor) -> None:
            out[f"blocks.{layer}.mlp.hook_pre"] = output.detach().clone()

        return hook

    try:
        for layer in layers:
            for name, module in arch.qkv_modules(layer).items():
                handles.append(module.register_forward_hook(qkv_hook(layer, name)))
            handles.append(arch.mlp_in(layer).register_forward_hook(mlp_hook(layer)))
            handles.append(arch.blocks[layer].register_forward_hook(block_hook(layer)))
        with torch.inference_mode():
            res = hf_model(
                tokens.to(next(hf_model.parameters()).device),
                output_hidden_states=True,
                output_attentions=attentions,
            )
    finally:
        for h in handles:
            h.remove()
    out["hidden_states"] = res.hidden_states
    out["attentions"] = res.attentions if attentions else None
    out["logits"] = res.logits
    return out
