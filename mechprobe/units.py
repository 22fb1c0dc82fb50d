"""Per-head Q/K/V tensors and flat "units", and the map from a flat unit back to its head.

Vocabulary: ``batch pos head d_head`` for per-head tensors (as TransformerLens's ``hook_q/k/v``
give them) and ``units`` for the flattened ``(head d_head)`` axis. Q|K|V concatenated in that
order gives the columns of GPT-2's fused ``attn.c_attn`` output. Grouped-query models have
``n_heads * d_head`` Q units and ``n_kv_heads * d_head`` K and V units each.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import TYPE_CHECKING

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from mechprobe.models.types import Model

COMPONENTS = ("q", "k", "v")


def heads_to_units(x: Float[Tensor, "batch head d_head"]) -> Float[Tensor, "batch units"]:
    """Flatten per-head activations at one position into units (head-major).

    Also accepts ``[batch, pos, head, d_head]`` and returns ``[batch, pos, units]``.

    Example:
        >>> heads_to_units(torch.zeros(2, 4, 16)).shape
        torch.Size([2, 64])
    """
    if x.ndim == 4:
        return einops.rearrange(x, "batch pos head d_head -> batch pos (head d_head)")
    return einops.rearrange(x, "batch head d_head -> batch (head d_head)")


def units_to_heads(
    x: Float[Tensor, "batch units"], n_heads: int
) -> Float[Tensor, "batch head d_head"]:
    """Split flat units back into heads; the exact inverse of `heads_to_units`.

    Also accepts ``[batch, pos, units]`` and returns ``[batch, pos, head, d_head]``.

    Example:
        >>> units_to_heads(torch.zeros(2, 64), n_heads=4).shape
        torch.Size([2, 4, 16])
    """
    if x.ndim == 3:
        return einops.rearrange(x, "batch pos (head d_head) -> batch pos head d_head", head=n_heads)
    return einops.rearrange(x, "batch (head d_head) -> batch head d_head", head=n_heads)


def qkv_units(
    q: Float[Tensor, "batch head d_head"],
    k: Float[Tensor, "batch kv_head d_head"],
    v: Float[Tensor, "batch kv_head d_head"],
) -> Float[Tensor, "batch units"]:
    """Concatenate per-head Q, K, V (one position) into flat Q|K|V units.

    For GPT-2 the result has the same columns as ``attn.c_attn``'s output.

    Example:
        >>> qkv_units(torch.zeros(1, 4, 16), torch.zeros(1, 4, 16), torch.zeros(1, 4, 16)).shape
        torch.Size([1, 192])
    """
    return torch.cat([heads_to_units(q), heads_to_units(k), heads_to_units(v)], dim=-1)


@dataclass(frozen=True)
class QKVLayout:
    """Where Q, K and V sit among a layer's flat Q|K|V units.

    Attributes:
        n_heads: Query heads.
        n_kv_heads: Key/value heads (equal to ``n_heads`` without grouped-query attention).
        d_head: Width of a head.

    Example:
        >>> layout = QKVLayout(n_heads=9, n_kv_heads=3, d_head=64)
        >>> layout.n_units, layout.slice("k")
        (960, slice(576, 768, None))
    """

    n_heads: int
    n_kv_heads: int
    d_head: int

    def size(self, component: str) -> int:
        """Units of one component: ``n_heads * d_head`` for q, ``n_kv_heads * d_head`` else."""
        return (self.n_heads if component == "q" else self.n_kv_heads) * self.d_head

    @property
    def n_units(self) -> int:
        """Total Q|K|V units per layer."""
        return sum(self.size(c) for c in COMPONENTS)

    # `builtins.slice` below: inside this class, plain `slice` names the method `slice`.
    def slice(self, component: str) -> builtins.slice:
        """The columns of ``component`` (``"q"``, ``"k"`` or ``"v"``) among the flat units."""
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
        start = sum(self.size(c) for c in COMPONENTS[: COMPONENTS.index(component)])
        return slice(start, start + self.size(component))

    def slices(self) -> dict[str, builtins.slice]:
        """The columns of each component: ``{"q": ..., "k": ..., "v": ...}``."""
        return {c: self.slice(c) for c in COMPONENTS}

    def groups(self, family: str, n_units: int) -> dict[str, builtins.slice]:
        """Unit groups of a family: ``qkv`` -> qkv, q, k, v (GQA-aware); else the family alone.

        Example:
            >>> QKVLayout(9, 3, 64).groups("qkv", 960)["v"]
            slice(768, 960, None)
        """
        if family == "qkv":
            return {"qkv": slice(0, n_units), **self.slices()}
        return {family: slice(0, n_units)}

    def locate(self, unit: int) -> tuple[str, int, int]:
        """``(component, head, dim)`` of a flat Q|K|V unit.

        Example:
            >>> QKVLayout(9, 3, 64).locate(600)
            ('k', 0, 24)
        """
        for c, s in self.slices().items():
            if s.start <= unit < s.stop:
                head, dim = divmod(unit - s.start, self.d_head)
                return c, head, dim
        raise ValueError(f"unit {unit} is out of range (0..{self.n_units - 1})")

    def kv_head_of(self, head: int) -> int:
        """The key/value head that query head ``head`` attends with (grouped-query aware)."""
        return head // (self.n_heads // self.n_kv_heads)

    def unit_map(self, fused_c_attn: bool = False) -> dict[str, np.ndarray]:
        """Map each flat unit to ``component`` (0=q, 1=k, 2=v), ``head``, ``dim``.

        Args:
            fused_c_attn: Also return ``c_attn_column``: the unit's column in GPT-2's fused
                ``attn.c_attn`` output (only meaningful for GPT-2, where it is the identity).

        Returns:
            Dict of int arrays of length ``n_units``.

        Example:
            >>> int(QKVLayout(4, 4, 16).unit_map()["head"][16])
            1
        """
        comp, head, dim = [], [], []
        for ci, c in enumerate(COMPONENTS):
            n = self.n_heads if c == "q" else self.n_kv_heads
            comp.append(np.full(n * self.d_head, ci))
            head.append(np.repeat(np.arange(n), self.d_head))
            dim.append(np.tile(np.arange(self.d_head), n))
        out = {
            "component": np.concatenate(comp),
            "head": np.concatenate(head),
            "dim": np.concatenate(dim),
        }
        if fused_c_attn:
            if self.n_heads != self.n_kv_heads:
                raise ValueError("c_attn columns exist only for fused (GPT-2 style) attention")
            # c_attn's output is [q | k | v], each head-major: column = component*d_model + unit.
            out["c_attn_column"] = np.arange(self.n_units)
        return out


def layout_of(model: Model | PreTrainedModel) -> QKVLayout:
    """Return the `QKVLayout` of a bridge or HF model.

    Example:
        >>> layout_of(model).n_units
        192
    """
    from mechprobe.models.registry import model_shape

    s = model_shape(model)
    return QKVLayout(s.n_heads, s.n_kv_heads, s.d_head)
