"""Whether a model can be loaded here, said before any loading: a reason, or None.

A sweep lists a model it cannot load as skipped with this one-line reason and runs the rest. The
check is cheap: installed packages for the offline models, the directory for a local path, the
local HuggingFace cache and then a short connection check for hub ids.

Example:
    >>> unavailable("tiny-gpt2") is None
    True
"""

from __future__ import annotations

import os

from mechprobe.errors import MechprobeError


def _in_hub_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return False
    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def unavailable(name: str) -> str | None:
    """Why model ``name`` cannot be loaded here (one line), or None when it can.

    Example:
        >>> unavailable("gpt2") in (None, "gpt2 needs the HuggingFace hub: no network here "
        ...     "and it is not in the local HuggingFace cache")
        True
    """
    from mechprobe.models.source import resolve_model

    src = resolve_model(name)
    if src.kind in ("tiny", "gguf"):
        try:
            _ = src.identity  # finds the packages' files without loading anything
        except MechprobeError as exc:
            return str(exc)
        return None
    from mechprobe.models.sources import did_you_mean, hub_reachable, missing_path

    if why := missing_path(name):
        return f"{name}: {why}"
    if src.kind == "local":
        return None
    repo = str(src.repo)
    if _in_hub_cache(repo):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"} or not hub_reachable():
        hint = did_you_mean(name).strip()
        return (
            f"{name} needs the HuggingFace hub: no network here and it is not in the local "
            "HuggingFace cache" + (f" ({hint})" if hint else "")
        )
    return None
