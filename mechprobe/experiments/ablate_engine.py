"""The fast ablation pass of `mechprobe.experiments.ablate`: many unit sets in few forwards.

An ablation at a sample's target position changes nothing before it (causal attention) and
nothing in the blocks below the ablated layer. So the pass runs, on the plain HuggingFace model
(`mechprobe.reference`; the bridge's wrapped HF model does not fill a key/value cache):

1. the context before the targets once, keeping its key/value cache (every layer);
2. the clean targets and the ``context_post`` tokens after them on that cache: the clean log
   probabilities and the hidden state entering each ablated layer;
3. per layer and family, every unit set (observed and null draws) at once: the batch is
   ``sets x samples``, the cache is repeated only for the layers from the ablated one on, the
   blocks below it are skipped (they return the cached clean hidden state) and a forward hook
   on the unit's projection (Q/K/V, or the MLP's input) writes the ablation value at the target.

Only the ``context_post + 1`` positions from the target on are computed in the ablated passes,
in float32; the result equals a full forward with the ablation hooked in (see
``tests/test_ablate.py``, which recomputes it with plain forward hooks on whole windows).

Example:
    >>> import torch
    >>> windows = torch.randint(0, 1000, (2, 7))
    >>> eng = Engine(hf, windows, pre=4, layers=[1])
    >>> sets = torch.tensor([[0, 1], [2, 3]])
    >>> vals = torch.zeros(2, 2, 2)
    >>> out = eng.effects("mlp", 1, sets, vals)
    >>> out["kl"].shape  # [set, sample]
    torch.Size([2, 2])
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechprobe.reference.arch import hf_arch, with_hidden
from mechprobe.reference.capture import forward_hooks

#: The metrics of an ablation: KL(clean || ablated) of the next-token distribution, and the
#: loss increase of the actual next token (log p_clean - log p_ablated).
METRICS = ("kl", "loss")


def unit_modules(hf: Any, family: str, layer: int) -> list[tuple[Any, int, int]]:
    """``(module, first unit, end unit)`` of the projections whose outputs are the family's units.

    ``qkv``: the flat Q|K|V units (GPT-2's fused ``c_attn`` holds them all; else ``q_proj``,
    ``k_proj``, ``v_proj`` in turn); ``mlp``: the MLP's input projection (``mlp.hook_pre``).

    Example:
        >>> [(a, b) for _, a, b in unit_modules(hf, "qkv", 0)]
        [(0, 192)]
    """
    from mechprobe.models.registry import model_shape

    arch, s = hf_arch(hf), model_shape(hf)
    if family == "mlp":
        return [(arch.module(hf, "mlp_in", layer), 0, s.d_mlp)]
    if arch.fused:
        return [(arch.module(hf, "q", layer), 0, 3 * s.n_heads * s.d_head)]
    nq, nk = s.n_heads * s.d_head, s.n_kv_heads * s.d_head
    spans = {"q": (0, nq), "k": (nq, nq + nk), "v": (nq + nk, nq + 2 * nk)}
    return [(arch.module(hf, c, layer), *spans[c]) for c in ("q", "k", "v")]


def ablation_hooks(
    hf: Any,
    family: str,
    layer: int,
    units: Int[Tensor, "rows k"],
    values: Float[Tensor, "rows k"],
    position: int,
) -> list[tuple[Any, Any]]:
    """Forward hooks writing ``values`` into ``units`` of each row at ``position`` (HF modules).

    Example:
        >>> hooks = ablation_hooks(hf, "mlp", 0, torch.tensor([[3]]), torch.zeros(1, 1), 2)
        >>> len(hooks)
        1
    """
    out = []
    for module, lo, hi in unit_modules(hf, family, layer):
        inside = (units >= lo) & (units < hi)
        rows, slots = torch.nonzero(inside, as_tuple=True)
        cols = units[rows, slots] - lo
        vals = values[rows, slots]

        def hook(m: Any, args: Any, output: Tensor, r=rows, c=cols, v=vals) -> Tensor:
            output = output.clone()
            output[r, position, c] = v.to(output.dtype)
            return output

        out.append((module, hook))
    return out


class Engine:
    """The clean pass of a set of windows, and ablated passes of unit sets on top of it.

    Args:
        hf: The plain HuggingFace causal LM (float32 on its device).
        windows: ``[samples, pre + 1 + post]`` token ids; the target sits at ``pre``.
        pre: Tokens before the target.
        layers: The layers that will be ablated (their clean input is kept).
        rows: Rows per ablated forward (``sets x samples`` are split into such batches).
    """

    def __init__(
        self,
        hf: Any,
        windows: Int[Tensor, "samples pos"],
        pre: int,
        layers: Sequence[int],
        rows: int = 128,
    ) -> None:
        self.hf, self.pre, self.rows = hf, pre, max(1, rows)
        self.device = next(hf.parameters()).device
        self.arch = hf_arch(hf)
        self.blocks: list[Any] = list(self.arch.module(hf, "blocks").children())
        self.suffix = windows[:, pre:].to(self.device)
        self.n = int(windows.shape[0])
        kept: dict[int, Tensor] = {}
        self.block_out: dict[int, Any] = {}

        def keep_input(layer: int) -> Any:
            def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
                hidden = args[0] if args else kwargs["hidden_states"]
                kept[layer] = hidden.detach().clone()

            return hook

        def keep_output(layer: int) -> Any:
            def hook(module: Any, args: Any, output: Any) -> None:
                self.block_out[layer] = output

            return hook

        with torch.inference_mode():
            self.cache = None
            if pre > 0:
                self.cache = hf(windows[:, :pre].to(self.device), use_cache=True).past_key_values
            handles = [
                self.blocks[L].register_forward_pre_hook(keep_input(L), with_kwargs=True)
                for L in layers
            ]
            try:
                with forward_hooks([(b, keep_output(i)) for i, b in enumerate(self.blocks)]):
                    logits = hf(self.suffix, cache=self._cache(1, None)).logits
            finally:
                for h in handles:
                    h.remove()
        self.clean_hidden = kept
        self.clean_logp = torch.log_softmax(logits.float(), dim=-1)

    def _cache(self, repeat: int, start: int | None) -> Any:
        """A copy of the context's cache; rows repeated ``repeat`` times from layer ``start`` on."""
        if self.cache is None:
            return None
        cache = copy.deepcopy(self.cache)
        if repeat > 1 and start is not None:
            for i, layer in enumerate(cache.layers):
                if i >= start:
                    layer.keys = layer.keys.repeat_interleave(repeat, dim=0)
                    layer.values = layer.values.repeat_interleave(repeat, dim=0)
        return cache

    @contextmanager
    def _skip_below(self, layer: int, hidden: Tensor) -> Iterator[None]:
        """Blocks below ``layer`` return ``hidden`` (the clean input of ``layer``) at once."""
        saved = []
        for i in range(layer):
            block = self.blocks[i]
            like = self.block_out[i]

            def forward(*args: Any, _like: Any = like, **kwargs: Any) -> Any:
                return with_hidden(_like, hidden)

            saved.append((block, block.__dict__.get("forward")))
            block.forward = forward
        try:
            yield
        finally:
            for block, old in saved:
                if old is None:
                    del block.forward
                else:
                    block.forward = old

    def effects(
        self,
        family: str,
        layer: int,
        sets: Int[Tensor, "sets k"],
        values: Float[Tensor, "sets samples k"],
    ) -> dict[str, Float[Tensor, "sets samples"]]:
        """Per unit set and sample: mean KL and mean loss increase over the window's positions.

        Args:
            family: ``qkv`` or ``mlp``.
            layer: The ablated layer (given to the constructor).
            sets: The units of each set.
            values: The value each unit of each set takes at each sample's target.

        Returns:
            ``{"kl": [sets, samples], "loss": [sets, samples]}`` (float64, on the CPU); the loss
            is NaN where no next token lies in the window (``post`` 0).
        """
        n_sets, n = int(sets.shape[0]), self.n
        per = max(1, self.rows // n)
        kl = torch.empty(n_sets, n, dtype=torch.float64)
        loss = torch.empty(n_sets, n, dtype=torch.float64)
        nxt = self.suffix[:, 1:]
        clean = self.clean_logp
        clean_next = clean[:, :-1].gather(-1, nxt[..., None])[..., 0]
        p_clean = clean.exp()
        with torch.inference_mode():
            for s0 in range(0, n_sets, per):
                c = min(per, n_sets - s0)
                # rows are sample-major: row = sample * c + set (the cache's repeat order)
                units = sets[s0 : s0 + c].repeat(n, 1).to(self.device)
                vals = values[s0 : s0 + c].transpose(0, 1).reshape(n * c, -1).to(self.device)
                hidden = self.clean_hidden[layer].repeat_interleave(c, dim=0)
                hooks = ablation_hooks(self.hf, family, layer, units, vals, 0)
                with self._skip_below(layer, hidden), forward_hooks(hooks):
                    logits = self.hf(
                        self.suffix.repeat_interleave(c, dim=0),
                        cache=self._cache(c, layer),
                    ).logits
                logp = torch.log_softmax(logits.float(), dim=-1).view(n, c, *logits.shape[1:])
                k = (p_clean[:, None] * (clean[:, None] - logp)).sum(-1)  # [n, c, pos]
                kl[s0 : s0 + c] = k.mean(-1).T.double().cpu()
                if nxt.shape[1]:
                    idx = nxt[:, None, :, None].expand(n, c, -1, 1)
                    abl_next = logp[:, :, :-1].gather(-1, idx)[..., 0]
                    d = clean_next[:, None] - abl_next
                    loss[s0 : s0 + c] = d.mean(-1).T.double().cpu()
                else:
                    loss[s0 : s0 + c] = float("nan")
        return {"kl": kl, "loss": loss}
