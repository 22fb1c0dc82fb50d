"""The three interventions of `mechprobe.interventions`, done with plain HuggingFace forward hooks.

This is how a researcher would do it without TransformerLens, and it is the independent
reference the TransformerLens hooks are checked against:

- zero a head: GPT-2: hook ``attn.c_attn``, split its output into q|k|v, clone the part, zero
  the head's columns ``head*d_head:(head+1)*d_head``, concatenate; Llama: hook
  ``self_attn.{q,k,v}_proj`` and zero the same columns of its output.
- MLP noise: hook ``mlp.c_fc`` (GPT-2) / ``mlp.gate_proj`` (Llama) and overwrite the chosen
  units at the chosen positions with noise drawn from a seeded generator.
- scale: hook the decoder block and multiply its hidden-state output, which is a plain tensor
  in transformers 5 and a tuple ``(hidden, *rest)`` in transformers 4.x (`scale_block_hook`
  handles both).

Hooks are registered with ``prepend=True``: transformers 5 records ``output_hidden_states``
with its own forward hooks on the blocks, installed once, the first time hidden states are
requested. A hook registered after those runs after them, so the recorded hidden state would
be the block's output *before* our change, while the next block sees the changed one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from mechprobe.errors import MechprobeError
from mechprobe.interventions import (
    Intervention,
    MLPNoise,
    ScaleOutput,
    ZeroHead,
    resolve_positions,
    resolve_units,
)
from mechprobe.models.registry import model_shape
from mechprobe.reference.arch import HFArch, hf_arch

ForwardHook = Any  # (module, args, output) -> output | None


def zero_head_hook(arch: HFArch, component: str, head: int) -> ForwardHook:
    """Forward hook zeroing one head of Q, K or V in a projection output.

    For GPT-2 it goes on ``attn.c_attn`` (fused ``[q | k | v]`` output); for Llama on
    ``self_attn.<component>_proj``.

    Example:
        >>> arch = hf_arch(hf)
        >>> h = arch.qkv_modules(3)["qkv"].register_forward_hook(zero_head_hook(arch, "k", 2))
    """
    s = model_shape(arch.model)
    cols = slice(head * s.d_head, (head + 1) * s.d_head)

    def hook(module: Any, args: Any, output: Tensor) -> Tensor:
        if arch.family == "gpt2":
            q, k, v = output.split(s.d_model, dim=-1)
            parts = {"q": q, "k": k, "v": v}
            part = parts[component].clone()
            part[..., cols] = 0
            parts[component] = part
            return torch.cat([parts["q"], parts["k"], parts["v"]], dim=-1)
        out = output.clone()
        out[..., cols] = 0
        return out

    return hook


def mlp_noise_hook(
    units: Sequence[int] | slice,
    positions: int | Sequence[int] | None,
    mean: float,
    std: float,
    seed: int,
) -> ForwardHook:
    """Forward hook on ``mlp.c_fc`` / ``mlp.gate_proj`` writing seeded noise into chosen units.

    The noise is ``[n_positions, n_units]``, drawn in float32 on the CPU from
    ``torch.Generator().manual_seed(seed)`` as ``randn * std + mean`` and cast to the output's
    dtype; the same for every batch row and every call.

    Example:
        >>> hook = mlp_noise_hook(slice(None, None, 2), [4], 10.0, 1.0, 0)
        >>> h = hf_arch(hf).mlp_in(1).register_forward_hook(hook)
    """

    def hook(module: Any, args: Any, output: Tensor) -> Tensor:
        cols = resolve_units(units, output.shape[-1], "units")
        rows = resolve_positions(positions, output.shape[1], "positions")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(len(rows), len(cols), generator=gen, dtype=torch.float32)
        noise = (noise * float(std) + float(mean)).to(output.dtype).to(output.device)
        out = output.clone()
        for i, pos in enumerate(rows):
            out[:, pos, cols] = noise[i]
        return out

    return hook


def scale_block_hook(factor: float) -> ForwardHook:
    """Forward hook on a decoder block multiplying its hidden-state output by ``factor``.

    Handles both shapes a block returns: a tensor (transformers 5) or a tuple
    ``(hidden, *rest)`` (transformers 4.x, with attention weights in ``rest`` when
    ``output_attentions`` is set), whose other members are passed on untouched.

    Example:
        >>> h = hf_arch(hf).blocks[8].register_forward_hook(scale_block_hook(0.1), prepend=True)
    """

    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] * factor, *output[1:])
        return output * factor

    return hook


@contextlib.contextmanager
def reference_interventions(
    hf: Any, interventions: Sequence[Intervention], n_tokens: int | None = None
) -> Iterator[Any]:
    """Register the HF forward hooks of several interventions for a ``with`` block.

    Args:
        hf: A HuggingFace GPT-2 or Llama-style causal LM.
        interventions: `ZeroHead`, `MLPNoise`, `ScaleOutput` descriptions.
        n_tokens: Sequence length, to validate (and resolve) positions.

    Yields:
        The model with the hooks attached; they are removed on exit.

    Example:
        >>> with reference_interventions(hf, [ScaleOutput(1, 10.0)]):
        ...     out = hf(tokens, output_hidden_states=True)
    """
    arch = hf_arch(hf)
    handles = []
    try:
        for iv in interventions:
            iv.validate(hf, n_tokens)
            if isinstance(iv, ZeroHead):
                mods = arch.qkv_modules(iv.layer)
                module = mods["qkv"] if "qkv" in mods else mods[iv.component]
                hook = zero_head_hook(arch, iv.component, iv.head)
            elif isinstance(iv, MLPNoise):
                module = arch.mlp_in(iv.layer)
                hook = mlp_noise_hook(iv.units, iv.positions, iv.mean, iv.std, iv.seed)
            elif isinstance(iv, ScaleOutput):
                module = arch.blocks[iv.layer]
                hook = scale_block_hook(iv.factor)
            else:
                raise MechprobeError(f"no HF reference for intervention {type(iv).__name__}")
            handles.append(module.register_forward_hook(hook, prepend=True))
        yield hf
    finally:
        for h in handles:
            h.remove()


def run_reference(
    hf: Any, tokens: Tensor, interventions: Sequence[Intervention] = ()
) -> dict[str, Any]:
    """Run the HF model with interventions; return ``hidden_states`` (HF convention) and ``logits``.

    Example:
        >>> ref = run_reference(hf, tokens, [ZeroHead(1, 2, "k")])
        >>> len(ref["hidden_states"]) == model_shape(hf).n_layers + 1
        True
    """
    device = next(hf.parameters()).device
    with (
        reference_interventions(hf, interventions, int(tokens.shape[1])),
        torch.inference_mode(),
    ):
        res = hf(tokens.to(device), output_hidden_states=True)
    return {"hidden_states": res.hidden_states, "logits": res.logits}


def _describe(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"Tensor{tuple(obj.shape)}"
    if obj is None:
        return "None"
    if isinstance(obj, tuple | list):
        inner = ", ".join(_describe(o) for o in obj)
        return f"{type(obj).__name__} of {len(obj)}: ({inner})"
    return type(obj).__name__


def describe_block_output(hf: Any, tokens: Tensor, layer: int = 0) -> str:
    """Show, live, what a forward hook on an HF decoder block receives as ``output``.

    Registers a hook on ``hf_arch(hf).blocks[layer]``, runs the model without and with
    ``output_attentions=True`` and reports the type, length and shapes the hook saw, with the
    installed transformers version, and where the attention weights came back.

    Example:
        >>> print(describe_block_output(hf, tokens))
        transformers 5.23.0, GPT2Block (blocks[0]) forward hook `output`: ...
    """
    import transformers

    arch = hf_arch(hf)
    block = arch.blocks[layer]
    seen: list[str] = []
    kinds: list[bool] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        seen.append(_describe(output))
        kinds.append(isinstance(output, tuple))

    device = next(hf.parameters()).device
    results = {}
    handle = block.register_forward_hook(hook)
    try:
        for flag in (False, True):
            with torch.inference_mode():
                res = hf(tokens.to(device), output_attentions=flag)
            results[flag] = res.attentions
    finally:
        handle.remove()
    att = results[True]
    att_text = f"{len(att)} tensors of shape {tuple(att[0].shape)}" if att else "nothing"
    name = type(block).__name__
    lines = [
        f"transformers {transformers.__version__}: a forward hook on {name} "
        f"(hf_arch(hf).blocks[{layer}]) receives as `output`:",
        f"  without output_attentions: {seen[0]}",
        f"  with output_attentions=True: {seen[1]}",
    ]
    if not any(kinds):
        lines.append(
            "  -> the block returns a plain tensor either way; the attention weights come back "
            f"in the model output (`.attentions`: {att_text}), collected by hooks on the "
            "attention modules, not from the block's return value. transformers 4.x blocks "
            "instead return a tuple (hidden, *rest) that grows when output_attentions is set, "
            "so a hook that changes the hidden state must replace output[0] and keep the rest; "
            "mechprobe's scale hook handles both shapes."
        )
    else:
        lines.append(
            "  -> the block returns a tuple (hidden, *rest): a hook that changes the hidden state "
            "must return (new_hidden, *output[1:]); the tuple grows with output_attentions "
            f"(`.attentions`: {att_text})."
        )
    return "\n".join(lines)
