"""Activation patching with plain HuggingFace forward hooks: the independent check of `patch`.

A clean run records the activation of one cell, a corrupted run gets it written back:

- ``resid_pre``: a forward pre-hook on the decoder block (its hidden-states input);
- ``attn_out``: a forward hook on the attention module (its first output);
- ``mlp_out``: a forward hook on the block's ``mlp``;
- ``z``: a forward pre-hook on the attention's output projection (``c_proj`` / ``o_proj``),
  whose input is the heads' outputs side by side, ``d_head`` columns per head;
- ``q``/``k``/``v``: a forward hook on the projection producing the component, the head's
  columns as in `mechprobe.reference.interventions.zero_head_hook`.

Example:
    >>> ids = torch.tensor([[1, 2, 3, 4]]); other = torch.tensor([[1, 5, 3, 4]])
    >>> reference_patch(hf, ids, other, "resid_pre", 0, 1, [7], [8]).shape
    (1,)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechprobe.models.registry import model_shape
from mechprobe.reference.arch import hf_arch

#: The attention output projection within a block, by architecture family.
OUT_PROJ = {"gpt2": "attn.c_proj"}
DEFAULT_OUT_PROJ = "self_attn.o_proj"


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _site(hf: Any, component: str, layer: int) -> tuple[Any, str, slice | None]:
    """``(module, "pre" | "out", columns)``: where the component is read and written."""
    arch = hf_arch(hf)
    block = arch.module(hf, "block", layer)
    if component == "resid_pre":
        return block, "pre", None
    if component == "attn_out":
        return arch.module(hf, "attention", layer), "out", None
    if component == "mlp_out":
        return block.get_submodule("mlp"), "out", None
    if component == "z":
        return block.get_submodule(OUT_PROJ.get(arch.family, DEFAULT_OUT_PROJ)), "pre", None
    offset = arch.column_offset(hf, component)
    return arch.module(hf, component, layer), "out", slice(offset, None)


def reference_patch(
    hf: Any,
    clean_ids: Tensor,
    corrupt_ids: Tensor,
    component: str,
    layer: int,
    index: int,
    answer: Sequence[int],
    wrong: Sequence[int],
) -> np.ndarray:
    """``[pair]`` logit differences of the corrupted run with one clean cell patched in.

    Args:
        hf: The HF causal LM (`mechprobe.models.load_reference`).
        clean_ids: ``[pair, pos]`` clean token ids.
        corrupt_ids: ``[pair, pos]`` corrupt token ids (same shape).
        component: ``resid_pre``, ``attn_out``, ``mlp_out``, ``z``, ``q``, ``k`` or ``v``.
        layer: Block index.
        index: Position (position components) or head (head components, every position).
        answer: Per pair, the answer token id.
        wrong: Per pair, the wrong answer's token id.
    """
    module, where, cols = _site(hf, component, layer)
    d_head = model_shape(hf).d_head
    head_cols = None
    if component in ("z", "q", "k", "v"):
        start = (cols.start if cols is not None else 0) + index * d_head
        head_cols = slice(start, start + d_head)
    store: dict[str, Tensor] = {}

    def select(t: Tensor) -> Tensor:
        return t[:, index] if head_cols is None else t[..., head_cols]

    def write(t: Tensor, value: Tensor) -> Tensor:
        t = t.clone()
        if head_cols is None:
            t[:, index] = value
        else:
            t[..., head_cols] = value
        return t

    def record_pre(mod: Any, args: tuple, kwargs: dict) -> None:
        store["v"] = select(_hidden(args, kwargs)).clone()

    def record_out(mod: Any, args: tuple, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        store["v"] = select(out).clone()

    def patch_pre(mod: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _with_hidden(args, kwargs, write(_hidden(args, kwargs), store["v"]))

    def patch_out(mod: Any, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (write(output[0], store["v"]), *output[1:])
        return write(output, store["v"])

    with torch.inference_mode():
        if where == "pre":
            h = module.register_forward_pre_hook(record_pre, with_kwargs=True)
        else:
            h = module.register_forward_hook(record_out)
        try:
            hf(clean_ids, logits_to_keep=1)
        finally:
            h.remove()
        if where == "pre":
            h = module.register_forward_pre_hook(patch_pre, with_kwargs=True)
        else:
            h = module.register_forward_hook(patch_out)
        try:
            logits = hf(corrupt_ids, logits_to_keep=1).logits[:, -1]
        finally:
            h.remove()
    rows = torch.arange(logits.shape[0])
    diff = logits[rows, torch.as_tensor(answer)] - logits[rows, torch.as_tensor(wrong)]
    return diff.double().cpu().numpy()
