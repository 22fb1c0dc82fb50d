"""Replace activations on a TransformerLens model: zero a head, noise MLP units, scale a block.

Three hook-function factories, each returning ``(activation, hook) -> activation``:

- `zero_head` on ``blocks.L.attn.hook_q/k/v`` (``[batch, pos, head, d_head]``): zero one head.
- `mlp_noise` on ``blocks.L.mlp.hook_pre`` (``[batch, pos, units]``; GPT-2: ``c_fc`` output
  before GELU, Llama: ``gate_proj`` output): replace chosen units at chosen positions with seeded
  Gaussian noise.
- `scale_output` on ``blocks.L.hook_resid_post``: multiply the block's output by a factor.

The dataclasses `ZeroHead`, `MLPNoise` and `ScaleOutput` describe an intervention; their
``hooks(model)`` validates layer/head/units/positions/factor against the model and returns
``(hook_name, fn)`` pairs for ``model.run_with_hooks(fwd_hooks=...)``. `intervention_hooks`
concatenates several, and `intervene` attaches them in a ``with`` block. The same dataclasses
drive the plain-HuggingFace implementation in `mechprobe.reference.interventions`.

Every hook returns a modified copy (the bridge's hook points accept returned tensors), never
editing the tensor it receives in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechprobe.errors import MechprobeError
from mechprobe.hooks import HookFn, hook_name, temporary_hooks
from mechprobe.models.registry import model_shape
from mechprobe.validate import (
    check_index,
    check_number,
    check_seed,
    resolve_positions,
    resolve_units,
)

if TYPE_CHECKING:
    from mechprobe.models.types import Model

Units = slice | Sequence[int]
Positions = int | Sequence[int] | None
COMPONENTS = ("q", "k", "v")


def gaussian_noise(
    n_positions: int,
    n_units: int,
    mean: float,
    std: float,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "pos units"]:
    """The noise tensor ``[n_positions, n_units]`` drawn from N(mean, std²) with a seeded generator.

    Drawn on the CPU in float32 and then cast, so any device/dtype gets the same numbers.

    Example:
        >>> gaussian_noise(1, 3, 10.0, 1.0, seed=0).shape
        torch.Size([1, 3])
    """
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(n_positions, n_units, generator=g, dtype=torch.float32)
    return (noise * float(std) + float(mean)).to(dtype)


# ----------------------------------------------------------------------------- hook factories


def zero_head(head: int) -> HookFn:
    """Hook for ``blocks.L.attn.hook_q/k/v`` that zeroes one head: ``act[:, :, head, :] = 0``.

    Args:
        head: Head index on that hook (for ``hook_k``/``hook_v`` of a grouped-query model, a
            key/value head).

    Example:
        >>> fn = zero_head(2)
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_k", fn)])
    """

    def hook(act: Float[Tensor, "batch pos head d_head"], hook: Any) -> Tensor:
        check_index(head, act.shape[2], "head")
        out = act.clone()
        out[:, :, head, :] = 0
        return out

    return hook


def mlp_noise(
    units: Units,
    positions: Positions,
    mean: float,
    std: float,
    seed: int,
) -> HookFn:
    """Hook for ``blocks.L.mlp.hook_pre`` replacing chosen units at chosen positions with noise.

    The noise is `gaussian_noise` ``[n_positions, n_units]`` (same seed -> same numbers on every
    forward pass), shared by every batch row.

    Args:
        units: A slice (``slice(None, None, 2)`` = even units) or index list.
        positions: Token position(s); None means all.
        mean: Noise mean.
        std: Noise standard deviation.
        seed: Seed of the torch generator.

    Example:
        >>> fn = mlp_noise(slice(None, None, 2), [4], mean=10.0, std=1.0, seed=0)
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mlp.hook_pre", fn)])
    """

    def hook(act: Float[Tensor, "batch pos units"], hook: Any) -> Tensor:
        unit_idx = resolve_units(units, act.shape[-1])
        pos_idx = resolve_positions(positions, act.shape[1])
        noise = gaussian_noise(len(pos_idx), len(unit_idx), mean, std, seed, act.dtype)
        out = act.clone()
        rows = torch.tensor(pos_idx, device=act.device)[:, None]
        cols = torch.tensor(unit_idx, device=act.device)[None, :]
        out[:, rows, cols] = noise.to(act.device)
        return out

    return hook


def scale_output(factor: float) -> HookFn:
    """Hook for ``blocks.L.hook_resid_post`` multiplying the block's output by ``factor``.

    Example:
        >>> logits = model.run_with_hooks(
        ...     tokens, fwd_hooks=[("blocks.1.hook_resid_post", scale_output(0.1))]
        ... )
    """
    factor = check_number(factor, what="factor")

    def hook(act: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
        return act * factor

    return hook


# ----------------------------------------------------------------------------- descriptions


class Intervention:
    """Base of the intervention descriptions; ``hooks(model)`` gives ``(hook_name, fn)`` pairs."""

    layer: int

    def validate(self, model: Model, n_tokens: int | None = None) -> None:
        """Raise `MechprobeError` naming the argument if this does not fit ``model``."""
        raise NotImplementedError

    @property
    def point(self) -> str:
        """The TransformerLens hook point within the block (e.g. ``attn.hook_k``)."""
        raise NotImplementedError

    def hook_fn(self) -> HookFn:
        """The TransformerLens hook function."""
        raise NotImplementedError

    def hooks(self, model: Model, n_tokens: int | None = None) -> list[tuple[str, HookFn]]:
        """Validate against ``model`` (and ``n_tokens`` when given) and return the hook pairs.

        Example:
            >>> ZeroHead(layer=1, head=2).hooks(model)
            [('blocks.1.attn.hook_k', <function ...>)]
        """
        self.validate(model, n_tokens)
        return [(hook_name(self.layer, self.point), self.hook_fn())]


@dataclass(frozen=True)
class ZeroHead(Intervention):
    """Zero head ``head`` of Q, K or V at ``layer`` (on ``blocks.L.attn.hook_<component>``).

    Attributes:
        layer: Block index.
        head: Head index (K/V of a grouped-query model: a key/value head).
        component: ``"q"``, ``"k"`` or ``"v"``.

    Example:
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=ZeroHead(1, 2, "k").hooks(model))
    """

    layer: int
    head: int
    component: str = "k"

    def validate(self, model: Model, n_tokens: int | None = None) -> None:
        s = model_shape(model)
        check_index(self.layer, s.n_layers, "layer")
        if self.component not in COMPONENTS:
            raise MechprobeError(f"component must be one of q, k, v; got {self.component!r}")
        n = s.n_heads if self.component == "q" else s.n_kv_heads
        check_index(self.head, n, f"{self.component.upper()} head")

    @property
    def point(self) -> str:
        return f"attn.hook_{self.component}"

    def hook_fn(self) -> HookFn:
        return zero_head(self.head)


@dataclass(frozen=True)
class MLPNoise(Intervention):
    """Replace MLP input units (``mlp.hook_pre``) at ``positions`` with N(mean, std²) noise.

    Attributes:
        layer: Block index.
        units: Slice or index list of MLP units (default: even units ``::2``).
        positions: Token positions (None: all).
        mean: Noise mean.
        std: Noise standard deviation (>= 0).
        seed: Generator seed.

    Example:
        >>> hooks = MLPNoise(1, positions=(4,)).hooks(model)
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    """

    layer: int
    units: Units = field(default_factory=lambda: slice(None, None, 2))
    positions: Positions = None
    mean: float = 10.0
    std: float = 1.0
    seed: int = 0

    def validate(self, model: Model, n_tokens: int | None = None) -> None:
        s = model_shape(model)
        check_index(self.layer, s.n_layers, "layer")
        resolve_units(self.units, s.d_mlp, "MLP unit")
        check_number(self.mean, what="noise mean")
        check_number(self.std, low=0.0, what="noise std")
        check_seed(self.seed)
        if n_tokens is not None:
            resolve_positions(self.positions, n_tokens)

    @property
    def point(self) -> str:
        return "mlp.hook_pre"

    def hook_fn(self) -> HookFn:
        return mlp_noise(self.units, self.positions, self.mean, self.std, self.seed)


@dataclass(frozen=True)
class ScaleOutput(Intervention):
    """Multiply block ``layer``'s output (``hook_resid_post``) by ``factor``.

    Attributes:
        layer: Block index.
        factor: A finite number.

    Example:
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=ScaleOutput(1, 0.1).hooks(model))
    """

    layer: int
    factor: float

    def validate(self, model: Model, n_tokens: int | None = None) -> None:
        check_index(self.layer, model_shape(model).n_layers, "layer")
        check_number(self.factor, what="factor")

    @property
    def point(self) -> str:
        return "hook_resid_post"

    def hook_fn(self) -> HookFn:
        return scale_output(self.factor)


def intervention_hooks(
    model: Model, interventions: Sequence[Intervention], n_tokens: int | None = None
) -> list[tuple[str, HookFn]]:
    """All ``(hook_name, fn)`` pairs of several interventions, validated, in order.

    Example:
        >>> hooks = intervention_hooks(model, [ZeroHead(1, 2), ScaleOutput(0, 10.0)])
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    """
    pairs: list[tuple[str, HookFn]] = []
    for iv in interventions:
        pairs += iv.hooks(model, n_tokens)
    return pairs


@contextlib.contextmanager
def intervene(
    model: Model, interventions: Sequence[Intervention], n_tokens: int | None = None
) -> Iterator[Model]:
    """Attach interventions for the duration of a ``with`` block (always removed afterwards).

    Example:
        >>> with intervene(model, [MLPNoise(1, positions=4)]):
        ...     logits = model(tokens)
    """
    with temporary_hooks(model, intervention_hooks(model, interventions, n_tokens)) as m:
        yield m
