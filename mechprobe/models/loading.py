"""`load_model` (a TransformerLens bridge) and `load_reference` (a plain HuggingFace model)."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import torch

from mechprobe.errors import MechprobeError
from mechprobe.models.sources import hf_pair


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return ``device``, or CUDA when available and CPU otherwise.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise MechprobeError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MechprobeError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def _prepare(hf: Any, device: torch.device, dtype: torch.dtype) -> Any:
    return hf.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_reference(
    name: str = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """Load an unmodified HuggingFace model and its tokenizer, for cross-checks.

    The model is its own instance (never the one inside a bridge), in eval mode, with eager
    attention so that ``output_attentions`` works.

    Args:
        name: ``smollm2-135m``, ``gemma3-270m``, ``tiny-gpt2``, ``gpt2``..``gpt2-xl``, a hub id
            or a local directory (safetensors only).
        device: Torch device; default CUDA if available, else CPU.
        dtype: Parameter dtype.

    Returns:
        ``(hf_model, tokenizer)``.

    Example:
        >>> hf, tok = load_reference("tiny-gpt2")
        >>> hf(torch.tensor([[464, 3797]])).logits.shape
        torch.Size([1, 2, 50257])
    """
    hf, tok = hf_pair(name)
    return _prepare(hf, resolve_device(device), dtype), tok


def load_model(
    name: str = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load a model as a TransformerLens ``TransformerBridge`` with HuggingFace numerics.

    Hook names follow TransformerLens: ``blocks.L.attn.hook_q/hook_k/hook_v`` (per head,
    ``[batch, pos, head, d_head]``), ``hook_attn_scores``, ``hook_pattern``, ``hook_z``,
    ``blocks.L.mlp.hook_pre/hook_post``, ``blocks.L.hook_resid_pre/mid/post``.

    Args:
        name: ``smollm2-135m`` (default, offline), ``gemma3-270m`` (offline),
            ``tiny-gpt2`` (offline, random weights), ``gpt2``..``gpt2-xl``, a hub id or a local
            directory (safetensors only).
        device: Torch device; default CUDA if available, else CPU.
        dtype: Parameter dtype.

    Returns:
        The bridge; ``bridge.tokenizer`` is its tokenizer.

    Example:
        >>> model = load_model("tiny-gpt2")
        >>> logits, cache = model.run_with_cache(torch.tensor([[464, 3797]]))
        >>> cache["blocks.0.attn.hook_q"].shape
        torch.Size([1, 2, 4, 16])
    """
    from transformer_lens.model_bridge import TransformerBridge

    dev = resolve_device(device)
    hf, tok = hf_pair(name)
    hf = _prepare(hf, dev, dtype)
    if not getattr(hf.config, "architectures", None):  # GGUF configs may leave it empty
        hf.config.architectures = [type(hf).__name__]
    quiet = io.StringIO()
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(quiet):
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf, tokenizer=tok, device=str(dev), dtype=dtype
        )
    bridge.eval()
    bridge.requires_grad_(False)
    bridge.mechprobe_name = name
    return bridge
