"""Hook names, built in one place, and temporary hooks on a TransformerLens model.

Every hook name mechprobe uses comes from this module: per-layer points through `hook_name`
(``blocks.L.<point>``, the points listed in `POINTS`) and the model-wide names `EMBED` and
`FINAL_NORM`. Hooks are functions ``(activation, hook) -> activation``; temporary hooks live in a
context manager that always removes them; an unknown hook name is an error, never a silent no-op.

Example:
    >>> hook_name(3, "q")
    'blocks.3.attn.hook_q'
    >>> with temporary_hooks(model, [(hook_name(0, "k"), lambda act, hook: act * 0)]):
    ...     logits = model(tokens)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mechprobe.errors import MechprobeError

if TYPE_CHECKING:
    from mechprobe.models.types import Model

HookFn = Callable[[Any, Any], Any]

#: Per-layer hook points by short name (TransformerLens names within ``blocks.L``).
POINTS = {
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "q_normed": "attn.hook_q_normed",
    "k_normed": "attn.hook_k_normed",
    "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k",
    "scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "z": "attn.hook_z",
    "mlp_pre": "mlp.hook_pre",
    "mlp_post": "mlp.hook_post",
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
}
#: The token embeddings (before any block).
EMBED = "hook_embed"
#: The output of the final norm (the unembedding's input).
FINAL_NORM = "ln_final.hook_out"
#: The unit families of the probing experiments and the points behind them.
UNIT_POINTS = {
    "qkv": ("q", "k", "v"),
    "mlp": ("mlp_pre",),
    "resid_post": ("resid_post",),
    "attn_z": ("z",),
    "mlp_post": ("mlp_post",),
}
#: Model-wide hook points computed before the first block.
PRE_BLOCK = (EMBED, "hook_pos_embed")
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def hook_name(layer: int, point: str) -> str:
    """Full hook name of a per-layer point, by short name (``"q"``) or point (``"attn.hook_q"``).

    Example:
        >>> hook_name(3, "k"), hook_name(3, "hook_resid_post")
        ('blocks.3.attn.hook_k', 'blocks.3.hook_resid_post')
    """
    return f"blocks.{layer}.{POINTS.get(point, point)}"


def unit_hook_names(layers: Iterable[int], family: str) -> list[str]:
    """Hook names behind a unit family: ``qkv`` (hook_q, hook_k, hook_v) or ``mlp`` (hook_pre).

    Example:
        >>> unit_hook_names([0], "qkv")
        ['blocks.0.attn.hook_q', 'blocks.0.attn.hook_k', 'blocks.0.attn.hook_v']
    """
    if family not in UNIT_POINTS:
        raise MechprobeError(f"unknown unit family {family!r} (choose {', '.join(UNIT_POINTS)})")
    return [hook_name(L, p) for L in layers for p in UNIT_POINTS[family]]


def hidden_state_names(n_layers: int) -> list[str]:
    """Hooks giving HuggingFace's ``output_hidden_states`` (``n_layers + 1`` names).

    The embeddings (``blocks.0.hook_resid_pre``), every block's output but the last, then the
    final norm's output (HF's last hidden state is taken after the final norm).

    Example:
        >>> hidden_state_names(2)
        ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post', 'ln_final.hook_out']
    """
    inner = [hook_name(L, "resid_post") for L in range(n_layers - 1)]
    return [hook_name(0, "resid_pre"), *inner, FINAL_NORM]


def residual_names(n_layers: int) -> list[str]:
    """The residual stream before the first block and after every block (``n_layers + 1``).

    Example:
        >>> residual_names(2)
        ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
    """
    return [hook_name(0, "resid_pre")] + [hook_name(L, "resid_post") for L in range(n_layers)]


def check_hook_names(model: Model, names: Iterable[str]) -> list[str]:
    """Return ``names`` as a list, raising on any name the model does not have.

    Example:
        >>> check_hook_names(model, ["blocks.0.attn.hook_q"])
        ['blocks.0.attn.hook_q']
    """
    names = list(names)
    unknown = [n for n in names if n not in model.hook_dict]
    if unknown:
        raise MechprobeError(
            f"unknown hook name(s) {', '.join(unknown)} (e.g. blocks.0.attn.hook_q, "
            "blocks.0.mlp.hook_pre, blocks.0.hook_resid_post)"
        )
    return names


def stop_layer(names: Iterable[str], n_layers: int) -> int | None:
    """The ``stop_at_layer`` that still runs every hook in ``names`` (None: run the whole model).

    Example:
        >>> stop_layer(["blocks.3.attn.hook_q"], 30), stop_layer([FINAL_NORM], 30)
        (4, None)
        >>> stop_layer([EMBED], 30)
        1
    """
    layers = []
    for name in names:
        if name in PRE_BLOCK:
            layers.append(0)
            continue
        m = _LAYER.match(name)
        if m is None:
            return None
        layers.append(int(m.group(1)))
    top = max(layers, default=n_layers - 1) + 1
    return None if top >= n_layers else top


@contextlib.contextmanager
def temporary_hooks(model: Model, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[Model]:
    """Add forward hooks for the duration of a ``with`` block; always remove them.

    Args:
        model: A TransformerLens bridge.
        fwd_hooks: ``(hook_name, fn)`` pairs; every name must exist on the model.

    Yields:
        The model, with the hooks attached.

    Example:
        >>> with temporary_hooks(model, [("blocks.0.attn.hook_k", lambda act, hook: act)]):
        ...     logits = model(tokens)
    """
    check_hook_names(model, [name for name, _ in fwd_hooks])
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model
