"""The patched forward passes of `mechprobe.experiments.patch`, batched and cut short.

TransformerLens's convention: a cell's clean activation goes into the corrupted run, and the
metric is the logit difference ``answer - wrong`` at the last position. Position components
(``resid_pre``, ``attn_out``, ``mlp_out``) are patched at one layer and position; head
components (``z``, ``q``, ``k``, ``v``) at one layer and head over every position, exactly as
``transformer_lens.patching.get_act_patch_*`` does.

Speed: the patched runs of many cells and pairs go through one forward (one row per cell x
pair); a run patched at layer ``L`` starts from the cached corrupt residual entering block
``L`` (the blocks before it would compute the same thing) by calling the bridge's blocks
``L .. n-1`` directly with the keyword arguments the model gave them (rotary embeddings,
causal mask), and only the last position goes through the final norm and the unembedding.
Before relying on that shortcut, `PatchRunner` checks that it reproduces the full forward's
corrupt metric; where it does not, every cell runs as a full forward with hooks instead.

Example:
    >>> from mechprobe.corpus.pairs import load_pairs, tokenise_pairs
    >>> tp = tokenise_pairs(model, load_pairs("ioi")[:3])
    >>> runner = PatchRunner(model, tp)
    >>> runner.values("resid_pre").shape  # [layer, pos, pair]
    (2, 15, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from mechprobe.corpus.pairs import TokenisedPairs
from mechprobe.hooks import hook_name

if TYPE_CHECKING:
    from mechprobe.models.types import Model

#: Components patched at a layer and position.
POSITION_COMPONENTS = ("resid_pre", "attn_out", "mlp_out")
#: Components patched at a layer and head, over every position.
HEAD_COMPONENTS = ("z", "q", "k", "v")
COMPONENTS = POSITION_COMPONENTS + HEAD_COMPONENTS
#: TransformerLens hook point of each component (within ``blocks.L``).
POINT = {
    "resid_pre": "hook_resid_pre",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
}


def logit_diff(logits: Tensor, answer: Tensor, wrong: Tensor) -> Tensor:
    """``logits[answer] - logits[wrong]`` per row of ``[rows, vocab]`` last-position logits.

    Example:
        >>> logit_diff(torch.tensor([[0.0, 2.0, 5.0]]), torch.tensor([2]), torch.tensor([1]))
        tensor([3.])
    """
    rows = torch.arange(logits.shape[0])
    return logits[rows, answer] - logits[rows, wrong]


def _strip_cache(value: Any) -> Any:
    return None if "Cache" in type(value).__name__ else value


class PatchRunner:
    """Clean and corrupt runs of a group of pairs, and patched runs of any cells.

    Pairs of different lengths are run in groups of equal length; a cell at a position beyond
    a pair's last token is NaN for that pair.

    Attributes:
        model: The bridge.
        pairs: The tokenised pairs.
        clean: ``[pair]`` clean logit difference.
        corrupt: ``[pair]`` corrupt logit difference.
        fast: Whether the cut-short forward reproduced the full one (else full forwards run).
        fast_check: Largest |difference| of that check.
    """

    def __init__(self, model: Model, pairs: TokenisedPairs, *, batch_tokens: int = 4096) -> None:
        self.model: Any = cast(Any, model)  # the bridge: blocks, ln_final, unembed, caches
        self.pairs = pairs
        self.batch_tokens = batch_tokens
        self.n_layers = int(model.cfg.n_layers)
        self.n_heads = int(model.cfg.n_heads)
        lengths = pairs.lengths
        self.n_pos = int(lengths.max())
        self.groups = [np.flatnonzero(lengths == t) for t in sorted(set(lengths.tolist()))]
        n = len(lengths)
        self.clean = np.full(n, np.nan)
        self.corrupt = np.full(n, np.nan)
        self._cache: list[dict[str, Tensor]] = []
        self._resid: list[list[Tensor]] = []
        self._kwargs: list[list[tuple[tuple, dict]]] = []
        self.fast_check = 0.0
        names = [hook_name(L, POINT[c]) for L in range(self.n_layers) for c in COMPONENTS]
        with torch.inference_mode():
            for g in self.groups:
                clean_ids = torch.tensor([pairs.clean[i] for i in g])
                corrupt_ids = torch.tensor([pairs.corrupt[i] for i in g])
                ans, wrong = torch.as_tensor(pairs.answer[g]), torch.as_tensor(pairs.wrong[g])
                logits, cache = self.model.run_with_cache(
                    clean_ids, names_filter=lambda n: n in names
                )
                self.clean[g] = logit_diff(logits[:, -1], ans, wrong).double().numpy()
                self._cache.append({k: v for k, v in cache.items() if k in names})
                kwargs = self._block_kwargs(corrupt_ids[:1])
                resid_names = [hook_name(L, "resid_pre") for L in range(self.n_layers)]
                logits, cache = self.model.run_with_cache(
                    corrupt_ids, names_filter=lambda n, keep=resid_names: n in keep
                )
                self.corrupt[g] = logit_diff(logits[:, -1], ans, wrong).double().numpy()
                self._resid.append([cache[n] for n in resid_names])
                self._kwargs.append(kwargs)
                quick = self._tail(0, self._resid[-1][0], kwargs, [])
                diff = (
                    (
                        logit_diff(quick, ans, wrong).double()
                        - logits[:, -1].new_tensor(self.corrupt[g]).double()
                    )
                    .abs()
                    .max()
                )
                self.fast_check = max(self.fast_check, float(diff))
        scale = 1.0 + float(np.nanmax(np.abs(self.corrupt)))
        self.fast = self.fast_check <= 1e-4 * scale

    def _block_kwargs(self, ids: Tensor) -> list[tuple[tuple, dict]]:
        """The arguments each block receives (one row; caches dropped), for direct calls."""
        seen: list[tuple[tuple, dict]] = [((), {})] * self.n_layers
        handles = []
        for L in range(self.n_layers):

            def grab(mod: Any, args: tuple, kwargs: dict, L: int = L) -> None:
                seen[L] = (args, kwargs)

            handles.append(self.model.blocks[L].register_forward_pre_hook(grab, with_kwargs=True))
        try:
            self.model(ids)
        finally:
            for h in handles:
                h.remove()
        out = []
        for args, kwargs in seen:
            a = tuple(_strip_cache(x) for x in args[1:])
            k = {key: _strip_cache(v) for key, v in kwargs.items()}
            if "use_cache" in k:
                k["use_cache"] = False
            out.append((a, k))
        return out

    def _tail(
        self,
        start: int,
        x: Tensor,
        kwargs: list[tuple[tuple, dict]],
        hooks: Sequence[tuple[str, Callable[..., Any]]],
    ) -> Tensor:
        """Blocks ``start ..`` on the residual ``x``, then the last position's logits."""
        with self.model.hooks(fwd_hooks=list(hooks)):  # the bridge's own temporary hooks
            for L in range(start, self.n_layers):
                args, kw = kwargs[L]
                out = self.model.blocks[L](x, *args, **kw)
                x = out[0] if isinstance(out, tuple) else out
            return self.model.unembed(self.model.ln_final(x[:, -1:]))[:, -1]

    def _hook(self, component: str, pair_rows: Tensor, index: Tensor, clean: Tensor) -> Any:
        """The patching hook: row r gets pair ``pair_rows[r]``'s clean value at ``index[r]``."""
        rows = torch.arange(len(pair_rows))
        per_pos = component in POSITION_COMPONENTS

        def hook(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            if per_pos:
                act[rows, index] = clean[pair_rows, index].to(act.dtype)
            else:
                act[rows, :, index] = clean[pair_rows, :, index].to(act.dtype)
            return act

        return hook

    def n_index(self, component: str) -> int:
        """Positions (position components) or heads (head components; K/V: key/value heads)."""
        if component in POSITION_COMPONENTS:
            return self.n_pos
        return int(self._cache[0][hook_name(0, POINT[component])].shape[2])

    def values(self, component: str, layers: Sequence[int] | None = None) -> np.ndarray:
        """``[layer, pos-or-head, pair]`` patched logit differences of one component.

        Rows are NaN for layers not in ``layers`` and for positions a pair does not have;
        head components are padded with NaN to ``n_heads`` (GQA key/value heads).
        """
        width = self.n_pos if component in POSITION_COMPONENTS else self.n_heads
        out = np.full((self.n_layers, width, len(self.pairs.answer)), np.nan)
        layers = range(self.n_layers) if layers is None else layers
        with torch.inference_mode():
            for gi, g in enumerate(self.groups):
                t = len(self.pairs.clean[g[0]])
                n_idx = t if component in POSITION_COMPONENTS else self.n_index(component)
                for L in layers:
                    # L and g are advanced indices around a slice: the result is [pair, index]
                    out[L, :n_idx, g] = self._layer(gi, component, L, n_idx)
        return out

    def _layer(self, gi: int, component: str, layer: int, n_idx: int) -> np.ndarray:
        """``[pair-in-group, index]`` values of every cell of one component at one layer."""
        g = self.groups[gi]
        n, t = len(g), len(self.pairs.clean[g[0]])
        name = hook_name(layer, POINT[component])
        clean = self._cache[gi][name]
        ans, wrong = torch.as_tensor(self.pairs.answer[g]), torch.as_tensor(self.pairs.wrong[g])
        per_forward = max(1, self.batch_tokens // (t * n))  # cells per forward
        res = np.empty((n, n_idx))
        for lo in range(0, n_idx, per_forward):
            idx = torch.arange(lo, min(n_idx, lo + per_forward))
            index = idx.repeat_interleave(n)  # row = cell-major, pair-minor
            pair_rows = torch.arange(n).repeat(len(idx))
            hooks = [(name, self._hook(component, pair_rows, index, clean))]
            if self.fast:
                x = self._resid[gi][layer][pair_rows]
                logits = self._tail(layer, x, self._kwargs[gi], hooks)
            else:
                ids = torch.tensor([self.pairs.corrupt[i] for i in g])[pair_rows]
                logits = self.model.run_with_hooks(ids, fwd_hooks=hooks)[:, -1]
            vals = logit_diff(logits, ans[pair_rows], wrong[pair_rows]).double().numpy()
            res[:, lo : lo + len(idx)] = vals.reshape(len(idx), n).T
        return res
