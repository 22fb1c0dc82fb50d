"""Hook names and temporary hooks on a TransformerLens model.

Hooks are functions ``(activation, hook) -> activation``. Temporary hooks live in a context
manager that always removes them; an unknown hook name is an error, never a silent no-op.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from mechprobe.errors import MechprobeError

HookFn = Callable[[Any, Any], Any]
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def check_hook_names(model: Any, names: Iterable[str]) -> list[str]:
    """Return ``names`` as a list, raising on any name the model does not have.

    Example:
        >>> check_hook_names(model, ["blocks.0.attn.hook_q"])
        ['blocks.0.attn.hook_q']
    """
    names = list(names)
    known = model.hook_dict
    unknown = [n for n in names if n not in known]
    if unknown:
        raise MechprobeError(
            f"unknown hook name(s) {', '.join(unknown)} (e.g. blocks.0.attn.hook_q, "
            "blocks.0.mlp.hook_pre, blocks.0.hook_resid_post)"
        )
    return names


def stop_layer(names: Iterable[str], n_layers: int) -> int | None:
    """The ``stop_at_layer`` that still runs every hook in ``names`` (None: run the whole model).

    Example:
        >>> stop_layer(["blocks.3.attn.hook_q"], 30)
        4
    """
    layers = []
    for name in names:
        m = _LAYER.match(name)
        if m is None:
            return None
        layers.append(int(m.group(1)))
    top = max(layers, default=n_layers - 1) + 1
    return None if top >= n_layers else top


def hook_name(layer: int, point: str) -> str:
    """Full hook name of a per-layer point such as ``attn.hook_q`` or ``hook_resid_post``.

    Example:
        >>> hook_name(3, "attn.hook_k")
        'blocks.3.attn.hook_k'
    """
    return f"blocks.{layer}.{point}"


@contextlib.contextmanager
def temporary_hooks(model: Any, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[Any]:
    """Add forward hooks for the duration of a ``with`` block; always remove them.

    Args:
        model: A TransformerLens bridge.
        fwd_hooks: ``(hook_name, fn)`` pairs; every name must exist on the model.

    Yields:
        The model, with the hooks attached.

    Example:
        >>> with temporary_hooks(model, [("blocks.0.attn.hook_k", zero_head_hook(2))]):
        ...     logits = model(tokens)
    """
    check_hook_names(model, [name for name, _ in fwd_hooks])
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model
