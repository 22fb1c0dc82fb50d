"""Record Q/K/V, MLP input and block outputs with plain ``register_forward_hook`` calls."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from jaxtyping import Int
from torch import Tensor, nn

from mechprobe.hooks import hook_name
from mechprobe.reference.arch import block_hidden, hf_arch, split_heads

if TYPE_CHECKING:
    from transformers import PreTrainedModel

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
    hf_model: PreTrainedModel,
    tokens: Int[Tensor, "batch pos"],
    layers: Sequence[int] | None = None,
    *,
    attentions: bool = True,
) -> dict[str, Any]:
    """Run the HF reference once and return activations under TransformerLens's hook names.

    Q/K/V come from forward hooks on the projection(s) of `mechprobe.reference.arch` (GPT-2's
    fused ``attn.c_attn`` split into heads, or ``q_proj/k_proj/v_proj``), the QK-norm outputs
    (``hook_q_normed``/``hook_k_normed``, ``[batch, head, pos, d_head]`` as HF computes them)
    where the architecture has them, and the MLP input from ``mlp.c_fc`` / ``mlp.gate_proj``.
    On rotary models the rotated Q and K (``hook_rot_q``/``hook_rot_k``) are the model family's
    own ``apply_rotary_pos_emb`` applied to those Q and K (after the QK-norm where there is one)
    with the ``position_embeddings`` the attention module receives.

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
    n_layers = len(cast(nn.ModuleList, arch.module(hf_model, "blocks")))
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

    rotary: dict[int, tuple[Tensor, Tensor]] = {}

    def keep_rotary(layer: int) -> Callable[..., None]:
        def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            cos, sin = kwargs["position_embeddings"]
            rotary[layer] = (cos.detach().clone(), sin.detach().clone())

        return hook

    pre_hooks = []
    if arch.rotary:
        for L in layers:
            attn = arch.module(hf_model, "attention", L)
            pre_hooks.append(attn.register_forward_pre_hook(keep_rotary(L), with_kwargs=True))
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
    try:
        with forward_hooks(pairs), torch.inference_mode():
            res = hf_model(
                tokens.to(next(hf_model.parameters()).device),
                output_hidden_states=True,
                output_attentions=attentions,
            )
    finally:
        for h in pre_hooks:
            h.remove()
    for L, (cos, sin) in rotary.items():
        out.update(_rotated(arch, hf_model, L, out, cos, sin))
    out["hidden_states"] = res.hidden_states
    out["attentions"] = res.attentions if attentions else None
    out["logits"] = res.logits
    return out


def _rotated(
    arch: Any, hf: Any, layer: int, out: dict[str, Tensor], cos: Tensor, sin: Tensor
) -> dict[str, Tensor]:
    """``hook_rot_q/k`` of one layer, ``[batch, pos, head, d_head]``, by the family's own code."""
    import sys

    attn = arch.module(hf, "attention", layer)
    apply = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    if arch.q_norm is not None:  # already [batch, head, pos, d_head]
        q, k = out[hook_name(layer, "q_normed")], out[hook_name(layer, "k_normed")]
    else:
        q, k = (out[hook_name(layer, c)].transpose(1, 2) for c in "qk")
    with torch.inference_mode():
        rq, rk = apply(q, k, cos, sin)
    return {
        hook_name(layer, "rot_q"): rq.transpose(1, 2).contiguous(),
        hook_name(layer, "rot_k"): rk.transpose(1, 2).contiguous(),
    }
