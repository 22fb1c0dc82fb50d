"""The one recorder: activations at chosen hook points and positions, batch by batch.

Every experiment and the crosscheck record through `collect`. Only the hooks asked for are
recorded and only the positions asked for are kept, so memory is proportional to what is kept,
not to layers x sequence length. Intervention hooks given with ``hooks=`` run before the
recorders, so what is recorded is the activation after the intervention. Unless the logits are
asked for, the forward pass stops after the last layer that any requested hook lives in; when one
position per row is kept (and no logits nor intervention hooks are asked for), a causal model's
batch also ends at its last kept position, since no later token can change an earlier one.

Example:
    >>> from mechprobe.hooks import hook_name
    >>> acts = collect(model, tokens, [hook_name(0, "q")], positions=3)
    >>> acts["blocks.0.attn.hook_q"].shape  # [batch, head, d_head]
    torch.Size([2, 4, 16])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechprobe.errors import MechprobeError
from mechprobe.hooks import PRE_BLOCK, HookFn, check_hook_names, stop_layer, unit_hook_names
from mechprobe.models.registry import model_shape
from mechprobe.units import heads_to_units

if TYPE_CHECKING:
    from mechprobe.models.types import Model

Positions = int | Int[Tensor, " batch"] | Sequence[int] | None


class _StopForward(Exception):
    """Raised by the last requested hook to end a forward pass early."""


def _row_positions(positions: Positions, n_rows: int, n_pos: int) -> Tensor | None:
    if positions is None:
        return None
    if isinstance(positions, int):
        pos = torch.full((n_rows,), positions, dtype=torch.long)
    else:
        pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if pos.numel() != n_rows:
        raise MechprobeError(f"positions has {pos.numel()} entries for {n_rows} rows of tokens")
    pos = torch.where(pos < 0, pos + n_pos, pos)
    if pos.numel() and (pos.min() < 0 or pos.max() >= n_pos):
        raise MechprobeError(f"positions must lie in 0..{n_pos - 1}")
    return pos


LOGITS = "logits"
#: HuggingFace class-name endings of the decoder-only (causal) language models.
_CAUSAL_CLASSES = ("ForCausalLM", "LMHeadModel")


def is_causal(model: Model) -> bool:
    """Whether ``model`` (a bridge) is a causal decoder: position p sees only positions <= p.

    Example:
        >>> is_causal(model)
        True
    """
    hf = getattr(model, "original_model", None)
    return hf is not None and type(hf).__name__.endswith(_CAUSAL_CLASSES)


def collect(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    names: Sequence[str],
    *,
    positions: Positions = None,
    batch_size: int = 32,
    transform: Callable[[str, Tensor], Tensor] | None = None,
    hooks: Sequence[tuple[str, HookFn]] = (),
    logits: bool = False,
    truncate: bool = True,
    progress: bool | None = None,
    desc: str = "forward",
) -> dict[str, Tensor]:
    """Run ``tokens`` through ``model`` in batches and keep only the requested activations.

    Args:
        model: A TransformerLens bridge.
        tokens: Token ids, ``[batch, pos]``; no BOS is added.
        names: Hook names to record (validated: an unknown name is an error).
        positions: ``None`` keeps every position (``[batch, pos, ...]``); an int or one index
            per row keeps one position per row (``[batch, ...]``).
        batch_size: Rows per forward pass.
        transform: Optional ``(name, activation_at_kept_positions) -> tensor`` applied in the
            hook before storing (e.g. flatten heads into units).
        hooks: Intervention hooks ``(name, fn)``, run before the recorders.
        logits: Also keep the logits (under the key `LOGITS`, every position); the whole
            model then runs.
        truncate: With one position kept per row, no logits and no ``hooks``, on a causal model
            (`is_causal`): feed each batch only up to its last kept position (the tokens after it
            cannot change what is kept; the values agree with the full pass to float32
            rounding). ``False`` always feeds the whole rows.
        progress: Show a progress bar; default: when there is more than one batch.
        desc: Progress bar label.

    Returns:
        ``{name: tensor}`` on the CPU, rows in the order of ``tokens``.

    Example:
        >>> acts = collect(model, tokens, ["blocks.1.mlp.hook_pre"], logits=True)
        >>> acts["blocks.1.mlp.hook_pre"].shape, acts["logits"].shape
        (torch.Size([2, 9, 256]), torch.Size([2, 9, 50257]))
    """
    names = check_hook_names(model, list(dict.fromkeys(names)))
    check_hook_names(model, [name for name, _ in hooks])
    if tokens.ndim != 2:
        raise MechprobeError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
    if batch_size < 1:
        raise MechprobeError(f"batch size must be at least 1, got {batch_size}")
    n_rows, n_pos = tokens.shape
    pos_all = _row_positions(positions, n_rows, n_pos)
    all_names = [*names, *(n for n, _ in hooks)]
    stop = None if logits else stop_layer(all_names, model_shape(model).n_layers)
    # When every hook sits in a block, the pass also ends once the last of them has fired, so
    # the final norm and the unembedding (large for big vocabularies) are never computed.
    in_blocks = all(n.startswith("blocks.") or n in PRE_BLOCK for n in names)
    abort_after = len(names) if in_blocks and not logits else None
    fired: set[str] = set()
    # Interventions may read or write any position, so with hooks the rows stay whole.
    cut = truncate and pos_all is not None and not logits and not hooks and is_causal(model)
    device = next(model.parameters()).device
    out: dict[str, Tensor] = {}
    batch_slice = slice(0, 0)
    batch_pos: Tensor | None = None

    def store(name: str, kept: Tensor) -> None:
        if name not in out:
            out[name] = torch.empty((n_rows, *kept.shape[1:]), dtype=kept.dtype)
        out[name][batch_slice] = kept.to("cpu")

    def make_hook(name: str) -> HookFn:
        def hook(act: Tensor, hook: Any) -> Tensor:
            kept = act if batch_pos is None else act[torch.arange(act.shape[0]), batch_pos]
            kept = kept.detach()
            store(name, transform(name, kept) if transform is not None else kept)
            fired.add(name)
            if abort_after is not None and len(fired) == abort_after:
                raise _StopForward
            return act

        return hook

    fwd_hooks = [*hooks, *((name, make_hook(name)) for name in names)]
    starts = range(0, n_rows, batch_size)
    show = progress if progress is not None else len(starts) > 1
    with torch.inference_mode():
        for start in tqdm(starts, desc=desc, disable=not show, unit="batch"):
            batch_slice = slice(start, min(start + batch_size, n_rows))
            if pos_all is not None:
                batch_pos = pos_all[batch_slice].to(device)
            batch = tokens[batch_slice]
            if cut and batch_pos is not None and batch_pos.numel():
                batch = batch[:, : int(batch_pos.max()) + 1]
            batch = batch.to(device)
            fired.clear()
            try:
                res = model.run_with_hooks(
                    batch,
                    fwd_hooks=fwd_hooks,
                    return_type="logits" if logits else None,
                    stop_at_layer=stop,
                )
            except _StopForward:
                continue
            if logits:
                store(LOGITS, res.detach())
    return out


def collect_units(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    positions: Positions,
    layers: Sequence[int],
    components: Sequence[str] = ("qkv", "mlp"),
    *,
    batch_size: int = 32,
    truncate: bool = True,
    progress: bool | None = None,
    desc: str = "forward",
    hooks: Sequence[tuple[str, HookFn]] = (),
) -> dict[str, Float[Tensor, "batch layer units"]]:
    """Collect flat unit activations at one position per row for several layers.

    ``qkv`` units are Q|K|V from ``hook_q/k/v`` flattened head-major (GPT-2: the columns of
    ``attn.c_attn``); ``mlp`` units are ``mlp.hook_pre`` (GPT-2: ``c_fc`` output before GELU;
    gated MLPs: the gate projection).

    Args:
        model: A TransformerLens bridge.
        tokens: ``[batch, pos]`` token ids.
        positions: One position per row (int or per-row indices).
        layers: Layer indices, in the order of the output's ``layer`` axis.
        components: Any of ``"qkv"``, ``"mlp"``.
        batch_size: Rows per forward pass.
        truncate: End each batch at its last kept position (causal models; see `collect`).
        progress: Show a progress bar (default: more than one batch).
        desc: Progress bar label.
        hooks: Further hooks ``(name, fn)`` that see whole activations (every position; the
            rows are then not truncated), e.g. to read one layer at every position on the way.

    Returns:
        ``{component: [batch, layer, units]}`` float32 tensors on the CPU.

    Example:
        >>> units = collect_units(model, tokens, positions=5, layers=[0, 1])
        >>> units["qkv"].shape, units["mlp"].shape
        (torch.Size([2, 2, 192]), torch.Size([2, 2, 256]))
    """
    if positions is None:
        raise MechprobeError("collect_units keeps one position per row; give positions")
    names = [n for c in components for n in unit_hook_names(layers, c)]
    flat = collect(
        model,
        tokens,
        names,
        positions=positions,
        batch_size=batch_size,
        transform=lambda name, t: heads_to_units(t) if t.ndim == 3 else t,
        truncate=truncate,
        progress=progress,
        desc=desc,
        hooks=hooks,
    )
    result = {}
    for c in components:
        per_layer = []
        for L in layers:
            at_layer = unit_hook_names([L], c)
            per_layer.append(torch.cat([flat.pop(h) for h in at_layer], dim=-1))
        result[c] = torch.stack(per_layer, dim=1)
    return result
