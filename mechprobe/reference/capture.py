"""Record Q/K/V, MLP input and block outputs with plain ``register_forward_hook`` calls."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechprobe.hooks import hook_name
from mechprobe.reference.arch import block_hidden, hf_arch, split_heads

ForwardHook = Callable[[Any, Any, Any], Any]  # (module, args, output) -> output | None


@contextlib.contextmanager
def forward_hooks(
    pairs: Sequence[tuple[Any, ForwardHook]], *, prepend: bool = False
) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks for a ``with`` block; always remove them.

    Example:
        >>> with forward_hooks([(hf_arch(hf).module(hf, "block", 0), lambda m, a, o: None)]):
        ...     out = hf(tokens)
    """
    handles = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook, prepend=prepend))
        yield
    finally:
        for h in handles:
            h.remove()


def capture_reference(
    hf_model: Any,
    tokens: Int[Tensor, "batch pos"],
    layers: Sequence[int] | None = None,
    *,
    attentions: bool = True,
) -> dict[str, Any]:
    """Run the HF reference once and return activations under TransformerLens's hook names.

    Q/K/V come from forward hooks on the projection(s) of `mechprobe.reference.arch` (GPT-2's
    fused ``attn.c_attn`` split into heads, or ``q_proj/k_proj/v_proj``), the QK-norm outputs
    (``hook_q_normed``/``hook_k_normed``) where the architecture has them, and the MLP input from
    ``mlp.c_fc`` / ``mlp.gate_proj``.

    Args:
        hf_model: An unmodified HuggingFace causal LM (eager attention for ``attentions``).
        tokens: ``[batch, pos]`` token ids.
        layers: Layers to hook (default: all).
        attentions: Also return ``output_attentions``.

    Returns:
        A dict with ``blocks.L.attn.hook_q/k/v`` (``[batch, pos, head, d_head]``),
        ``blocks.L.mlp.hook_pre``, ``blocks.L.hook_resid_post`` (the block's output),
        ``hidden_states`` (tuple, HF convention: embeddings first, last after the final norm),
        ``attentions`` (tuple of ``[batch, head, q_pos, k_pos]``), and ``logits``.

    Example:
        >>> ref = capture_reference(hf, tokens)
        >>> ref["blocks.0.attn.hook_k"].shape
        torch.Size([2, 9, 4, 16])
    """
    arch = hf_arch(hf_model)
    n_layers = len(arch.module(hf_model, "blocks"))
    layers = range(n_layers) if layers is None else layers
    out: dict[str, Any] = {}

    def keep(name: str, fn: Callable[[Any], dict[str, Tensor] | Tensor]) -> ForwardHook:
        def hook(module: Any, args: Any, output: Any) -> None:
            got = fn(output)
            items = got.items() if isinstance(got, dict) else [(name, got)]
            for key, t in items:
                out[key] = t.detach().clone()

        return hook

    def heads(layer: int, proj: str) -> Callable[[Tensor], dict[str, Tensor]]:
        def split(output: Tensor) -> dict[str, Tensor]:
            parts = split_heads(arch, hf_model, proj, output)
            return {hook_name(layer, c): t for c, t in parts.items()}

        return split

    pairs: list[tuple[Any, ForwardHook]] = []
    for L in layers:
        for proj, module in arch.qkv_modules(hf_model, L).items():
            pairs.append((module, keep("", heads(L, proj))))
        for norm in ("q_norm", "k_norm"):
            if getattr(arch, norm) is not None:
                name = hook_name(L, f"{norm[0]}_normed")
                pairs.append((arch.module(hf_model, norm, L), keep(name, lambda o: o)))
        pairs.append(
            (arch.module(hf_model, "mlp_in", L), keep(hook_name(L, "mlp_pre"), lambda o: o))
        )
        resid = hook_name(L, "resid_post")
        pairs.append((arch.module(hf_model, "block", L), keep(resid, block_hidden)))
    with forward_hooks(pairs), torch.inference_mode():
        res = hf_model(
            tokens.to(next(hf_model.parameters()).device),
            output_hidden_states=True,
            output_attentions=attentions,
        )
    out["hidden_states"] = res.hidden_states
    out["attentions"] = res.attentions if attentions else None
    out["logits"] = res.logits
    return out
