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
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechprobe.errors import MechprobeError, check_index
from mechprobe.hooks import HookFn, hook_name, temporary_hooks
from mechprobe.models.registry import model_shape

Units = slice | Sequence[int]
Positions = int | Sequence[int] | None
COMPONENTS = ("q", "k", "v")


# ----------------------------------------------------------------------------- argument parsing


def parse_units(text: str, name: str = "--mlp-units") -> slice | tuple[int, ...]:
    """Parse a unit selection: a Python slice (``"::2"``, ``"10:20"``) or a comma list (``"1,5"``).

    Args:
        text: The selection as typed by a user.
        name: The argument name used in error messages.

    Returns:
        A ``slice`` or a tuple of ints.

    Raises:
        MechprobeError: When the text is neither form.

    Example:
        >>> parse_units("::2")
        slice(None, None, 2)
        >>> parse_units("3,7")
        (3, 7)
    """
    text = text.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) > 3:
                raise ValueError
            fields = [int(p) if p.strip() else None for p in parts] + [None] * (3 - len(parts))
            if fields[2] == 0:
                raise MechprobeError(f"{name} {text!r}: slice step cannot be zero")
            return slice(*fields)
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise MechprobeError(
            f"{name} {text!r} is not a slice like '::2' or '10:20' or a comma list like '1,5,9'"
        ) from None


def resolve_units(units: Units, width: int, name: str = "units") -> list[int]:
    """Turn a slice or index list into sorted, distinct, non-negative indices below ``width``.

    Raises:
        MechprobeError: On an out-of-range index or an empty selection.

    Example:
        >>> resolve_units(slice(None, None, 2), 6)
        [0, 2, 4]
    """
    if isinstance(units, slice):
        idx = list(range(width)[units])
    else:
        if isinstance(units, int | str):
            raise MechprobeError(f"{name} must be a slice or a list of indices, got {units!r}")
        idx = sorted({check_index(name, int(u), width, f"{width} units") for u in units})
    if not idx:
        raise MechprobeError(f"{name} {units!r} selects no unit (there are {width})")
    return idx


def resolve_positions(positions: Positions, n_pos: int, name: str = "positions") -> list[int]:
    """Turn ``None`` (all), an int or a list into distinct non-negative positions below ``n_pos``.

    Raises:
        MechprobeError: On an out-of-range position or an empty list.

    Example:
        >>> resolve_positions(-1, 11)
        [10]
    """
    if positions is None:
        return list(range(n_pos))
    if isinstance(positions, int):
        positions = [positions]
    idx = sorted({check_index(name, int(p), n_pos, f"{n_pos} tokens") for p in positions})
    if not idx:
        raise MechprobeError(f"{name} is empty: choose at least one position")
    return idx


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


def _check_layer(layer: int, n_layers: int, name: str = "layer") -> int:
    if isinstance(layer, int) and not isinstance(layer, bool) and layer < 0:
        raise MechprobeError(f"{name} {layer} is out of range (valid: 0..{n_layers - 1})")
    return check_index(name, layer, n_layers, f"{n_layers} layers")


def _check_finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MechprobeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise MechprobeError(f"{name} must be finite, got {value!r}")
    return value


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
        check_index("head", head, act.shape[2], f"{act.shape[2]} heads")
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
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.5.mlp.hook_pre", fn)])
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
        ...     tokens, fwd_hooks=[("blocks.8.hook_resid_post", scale_output(0.1))]
        ... )
    """
    factor = _check_finite("factor", factor)

    def hook(act: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
        return act * factor

    return hook


# ----------------------------------------------------------------------------- descriptions


class Intervention:
    """Base of the intervention descriptions; ``hooks(model)`` gives ``(hook_name, fn)`` pairs."""

    layer: int

    def validate(self, model: Any, n_tokens: int | None = None) -> None:
        """Raise `MechprobeError` naming the argument if this does not fit ``model``."""
        raise NotImplementedError

    @property
    def point(self) -> str:
        """The TransformerLens hook point within the block (e.g. ``attn.hook_k``)."""
        raise NotImplementedError

    def hook_fn(self) -> HookFn:
        """The TransformerLens hook function."""
        raise NotImplementedError

    def hooks(self, model: Any, n_tokens: int | None = None) -> list[tuple[str, HookFn]]:
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
        >>> model.run_with_hooks(tokens, fwd_hooks=ZeroHead(3, 2, "k").hooks(model))
    """

    layer: int
    head: int
    component: str = "k"

    def validate(self, model: Any, n_tokens: int | None = None) -> None:
        s = model_shape(model)
        _check_layer(self.layer, s.n_layers)
        if self.component not in COMPONENTS:
            raise MechprobeError(f"component must be one of q, k, v; got {self.component!r}")
        n = s.n_heads if self.component == "q" else s.n_kv_heads
        if isinstance(self.head, bool) or not isinstance(self.head, int) or not 0 <= self.head < n:
            raise MechprobeError(
                f"head {self.head} is out of range for {self.component.upper()} (valid: 0..{n - 1})"
            )

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
        >>> model.run_with_hooks(tokens, fwd_hooks=MLPNoise(5, positions=(4,)).hooks(model))
    """

    layer: int
    units: Units = field(default_factory=lambda: slice(None, None, 2))
    positions: Positions = None
    mean: float = 10.0
    std: float = 1.0
    seed: int = 0

    def validate(self, model: Any, n_tokens: int | None = None) -> None:
        s = model_shape(model)
        _check_layer(self.layer, s.n_layers)
        resolve_units(self.units, s.d_mlp, "units")
        _check_finite("mean", self.mean)
        if _check_finite("std", self.std) < 0:
            raise MechprobeError(f"std must be >= 0, got {self.std}")
        if n_tokens is not None:
            resolve_positions(self.positions, n_tokens, "positions")
        elif self.positions is not None and not isinstance(self.positions, int):
            if len(self.positions) == 0:
                raise MechprobeError("positions is empty: choose at least one position")

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
        >>> model.run_with_hooks(tokens, fwd_hooks=ScaleOutput(8, 0.1).hooks(model))
    """

    layer: int
    factor: float

    def validate(self, model: Any, n_tokens: int | None = None) -> None:
        s = model_shape(model)
        _check_layer(self.layer, s.n_layers)
        _check_finite("factor", self.factor)

    @property
    def point(self) -> str:
        return "hook_resid_post"

    def hook_fn(self) -> HookFn:
        return scale_output(self.factor)


def intervention_hooks(
    model: Any, interventions: Sequence[Intervention], n_tokens: int | None = None
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
    model: Any, interventions: Sequence[Intervention], n_tokens: int | None = None
) -> Iterator[Any]:
    """Attach interventions for the duration of a ``with`` block (always removed afterwards).

    Example:
        >>> with intervene(model, [MLPNoise(1, positions=4)]):
        ...     logits = model(tokens)
    """
    with temporary_hooks(model, intervention_hooks(model, interventions, n_tokens)) as m:
        yield m
