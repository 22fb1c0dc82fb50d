"""The types of the models and tokenizers mechprobe works on, as structural protocols.

`Model` is what mechprobe uses of a TransformerLens ``TransformerBridge`` (what
`mechprobe.models.load_model` returns): its shape (``cfg``), its ``tokenizer``, its hook points
(``hook_dict``) and hooked forward passes (``run_with_hooks``, ``hooks``). `Tokenizer` is what it
uses of a HuggingFace tokenizer. Being protocols, both are satisfied by the real classes and by
any stand-in with the same members (the type checker confirms the bridge's conformance where
`load_model` returns it); nothing here imports torch or transformer_lens at run time.

Example:
    >>> from mechprobe.models.types import Model
    >>> def n_layers(model: Model) -> int:
    ...     return model.cfg.n_layers
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch.nn import Parameter


class Tokenizer(Protocol):
    """What mechprobe uses of a HuggingFace tokenizer."""

    @property
    def pad_token_id(self) -> int | None: ...

    @property
    def eos_token_id(self) -> int | None: ...

    def __call__(self, text: str, **kwargs: Any) -> Any:
        """Encode ``text``; the result has ``input_ids`` (and ``offset_mapping`` when asked)."""
        ...

    def decode(self, token_ids: Any, **kwargs: Any) -> str:
        """The text of ``token_ids`` (a list, array or tensor of ids)."""
        ...


class ModelConfig(Protocol):
    """The shape fields of a TransformerLens config (``model.cfg``)."""

    @property
    def n_layers(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    @property
    def n_heads(self) -> int: ...

    @property
    def d_head(self) -> int: ...

    @property
    def d_mlp(self) -> int | None: ...

    @property
    def d_vocab(self) -> int: ...

    @property
    def n_ctx(self) -> int: ...


class Model(Protocol):
    """What mechprobe uses of a TransformerLens bridge (`mechprobe.models.load_model`)."""

    # Read-only properties, so that a subclass of each type (the bridge's config class, a
    # tokenizer class) conforms as well as the type itself.
    @property
    def cfg(self) -> ModelConfig: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def hook_dict(self) -> Mapping[str, Any]:
        """Every hook point by name (``blocks.0.attn.hook_q``, ...)."""
        ...

    def parameters(self) -> Iterator[Parameter]: ...

    def hooks(self, fwd_hooks: list[Any] = ...) -> AbstractContextManager[Any]:
        """A context manager that attaches ``(hook_name, HookFn)`` pairs while it is open."""
        ...

    # ``fwd_hooks: list[Any]``, not ``list[tuple[str, HookFn]]``: the bridge declares
    # ``list[tuple[str | Callable, Callable]]``, and as lists are invariant, no narrower element
    # type would match it.
    def run_with_hooks(
        self,
        input: Any,
        fwd_hooks: list[Any] = ...,
        *,
        return_type: str | None = ...,
        stop_at_layer: int | None = ...,
        **kwargs: Any,
    ) -> Any:
        """A forward pass of ``input`` with ``(hook_name, HookFn)`` pairs attached."""
        ...

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any:
        """A forward pass (the logits by default)."""
        ...
