"""The three interventions of `mechprobe.interventions`, done with plain HuggingFace forward hooks.

This is how a researcher would do it without TransformerLens, and it is the independent
reference the TransformerLens hooks are checked against:

- zero a head: hook the projection producing the component (GPT-2's fused ``attn.c_attn``,
  or ``self_attn.<component>_proj``) and zero the head's ``d_head`` columns of its output,
  counted from where the component starts in it (``component * d_model`` in GPT-2's fused
  ``[q | k | v]``, 0 in a separate projection).
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
from mechprobe.interventions import Intervention, MLPNoise, ScaleOutput, ZeroHead, gaussian_noise
from mechprobe.models.registry import model_shape
from mechprobe.reference.arch import ArchMap, block_hidden, hf_arch, with_hidden
from mechprobe.reference.capture import ForwardHook, forward_hooks
from mechprobe.validate import resolve_positions, resolve_units


def zero_head_hook(arch: ArchMap, hf: Any, component: str, head: int) -> ForwardHook:
    """Forward hook zeroing one head of Q, K or V in the output of the projection producing it.

    The head's columns are ``offset + head * d_head`` onwards, where ``offset`` is where the
    component starts in that output (GPT-2's fused ``[q | k | v]``: ``component * d_model``;
    a separate projection: 0).

    Example:
        >>> arch = hf_arch(hf)
        >>> hook = zero_head_hook(arch, hf, "k", 2)
        >>> handle = arch.module(hf, "k", 1).register_forward_hook(hook)
        >>> handle.remove()
    """
    d_head = model_shape(hf).d_head
    start = arch.column_offset(hf, component) + head * d_head
    cols = slice(start, start + d_head)

    def hook(module: Any, args: Any, output: Tensor) -> Tensor:
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

    The noise is `mechprobe.interventions.gaussian_noise` ``[n_positions, n_units]`` (seeded,
    float32 on the CPU, then cast), the same for every batch row and every call.

    Example:
        >>> hook = mlp_noise_hook(slice(None, None, 2), [4], 10.0, 1.0, 0)
        >>> handle = hf_arch(hf).module(hf, "mlp_in", 1).register_forward_hook(hook)
        >>> handle.remove()
    """

    def hook(module: Any, args: Any, output: Tensor) -> Tensor:
        cols = resolve_units(units, output.shape[-1], "unit")
        rows = resolve_positions(positions, output.shape[1])
        noise = gaussian_noise(len(rows), len(cols), mean, std, seed).to(output)
        out = output.clone()
        out[:, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = noise
        return out

    return hook


def scale_block_hook(factor: float) -> ForwardHook:
    """Forward hook on a decoder block multiplying its hidden-state output by ``factor``.

    Handles both shapes a block returns (`mechprobe.reference.arch.with_hidden`): a tensor
    (transformers 5) or a tuple ``(hidden, *rest)`` (transformers 4.x, with attention weights in
    ``rest`` when ``output_attentions`` is set), whose other members are passed on untouched.

    Example:
        >>> scale_block_hook(10.0)(None, (), torch.ones(2)).tolist()
        [10.0, 10.0]
    """

    def hook(module: Any, args: Any, output: Any) -> Any:
        return with_hidden(output, block_hidden(output) * factor)

    return hook


def reference_hooks(
    hf: Any, interventions: Sequence[Intervention], n_tokens: int | None = None
) -> list[tuple[Any, ForwardHook]]:
    """The ``(module, forward_hook)`` pairs implementing ``interventions`` on an HF model.

    Example:
        >>> pairs = reference_hooks(hf, [ScaleOutput(1, 10.0)])
        >>> type(pairs[0][0]).__name__
        'GPT2Block'
    """
    arch = hf_arch(hf)
    pairs = []
    for iv in interventions:
        iv.validate(hf, n_tokens)
        if isinstance(iv, ZeroHead):
            pair = (
                arch.module(hf, iv.component, iv.layer),
                zero_head_hook(arch, hf, iv.component, iv.head),
            )
        elif isinstance(iv, MLPNoise):
            hook = mlp_noise_hook(iv.units, iv.positions, iv.mean, iv.std, iv.seed)
            pair = (arch.module(hf, "mlp_in", iv.layer), hook)
        elif isinstance(iv, ScaleOutput):
            pair = (arch.module(hf, "block", iv.layer), scale_block_hook(iv.factor))
        else:
            raise MechprobeError(f"no HF reference for intervention {type(iv).__name__}")
        pairs.append(pair)
    return pairs


@contextlib.contextmanager
def reference_interventions(
    hf: Any, interventions: Sequence[Intervention], n_tokens: int | None = None
) -> Iterator[Any]:
    """Register the HF forward hooks of several interventions for a ``with`` block.

    Hooks go first (``prepend=True``, see the module docstring) and are removed on exit.

    Args:
        hf: A HuggingFace causal LM of an architecture in `mechprobe.reference.arch`.
        interventions: `ZeroHead`, `MLPNoise`, `ScaleOutput` descriptions.
        n_tokens: Sequence length, to validate positions.

    Yields:
        The model with the hooks attached.

    Example:
        >>> with reference_interventions(hf, [ScaleOutput(1, 10.0)]):
        ...     out = hf(tokens, output_hidden_states=True)
    """
    with forward_hooks(reference_hooks(hf, interventions, n_tokens), prepend=True):
        yield hf


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

    Registers a hook on block ``layer``, runs the model without and with
    ``output_attentions=True`` and reports the type, length and shapes the hook saw, with the
    installed transformers version, and where the attention weights came back.

    Example:
        >>> print(describe_block_output(hf, tokens))
        transformers 5...: a forward hook on GPT2Block (block 0) receives as `output`:
        ...
    """
    import transformers

    block = hf_arch(hf).module(hf, "block", layer)
    seen: list[str] = []
    kinds: list[bool] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        seen.append(_describe(output))
        kinds.append(isinstance(output, tuple))

    device = next(hf.parameters()).device
    results = {}
    with forward_hooks([(block, hook)]):
        for flag in (False, True):
            with torch.inference_mode():
                res = hf(tokens.to(device), output_attentions=flag)
            results[flag] = res.attentions
    att = results[True]
    att_text = f"{len(att)} tensors of shape {tuple(att[0].shape)}" if att else "nothing"
    name = type(block).__name__
    lines = [
        f"transformers {transformers.__version__}: a forward hook on {name} "
        f"(block {layer}) receives as `output`:",
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
