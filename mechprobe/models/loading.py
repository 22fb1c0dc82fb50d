"""`load_model` (a TransformerLens bridge) and `load_reference` (a plain HuggingFace model).

Both boot in float32 with eager attention (the bridge reimplements attention step by step so that
``hook_attn_scores``/``hook_pattern`` see the explicit pattern; the reference needs it for
``output_attentions``). On a CPU under glibc, loading also keeps freed activation memory in the
process (`tune_cpu_allocator`): a forward pass frees and reallocates tens of MB per layer, and
returning it to the kernel each time costs a page fault per 4 KiB when it is touched again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import logging
import os
import platform
from typing import TYPE_CHECKING, Any, cast

import torch

from mechprobe.errors import MechprobeError
from mechprobe.models.placement import Placement, dispatch
from mechprobe.models.source import ModelSource, resolve_model
from mechprobe.models.sources import hf_pair

if TYPE_CHECKING:
    from mechprobe.models.types import Model


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return ``device``, or CUDA when available and CPU otherwise.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise MechprobeError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MechprobeError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_TUNED: dict[str, int] = {}


def tune_cpu_allocator(mmap_mb: int = 256, trim_mb: int = 512) -> bool:
    """Keep freed activation memory in the process (glibc ``mallopt``); once per process.

    glibc returns a freed block of at least ``M_MMAP_THRESHOLD`` to the kernel, and trims the
    heap's top when more than ``M_TRIM_THRESHOLD`` is free there; its dynamic thresholds stay
    below the ~70 MB a transformer layer allocates and frees, so every layer page-faults its
    activations in again (smollm2-135m, 32 x 101 tokens: ~515,000 faults a pass). Blocks up to
    ``mmap_mb`` now come from the heap, and up to ``trim_mb`` of free heap is kept. Set
    ``MECHPROBE_MALLOC=default`` to leave the allocator alone.

    Args:
        mmap_mb: Allocations of at least this many MiB are still mapped (and unmapped) apart.
        trim_mb: Free memory at the heap's top kept before trimming, MiB.

    Returns:
        Whether the settings are in force (False off glibc, or when switched off).

    Example:
        >>> tune_cpu_allocator() in (True, False)
        True
    """
    if _ALLOCATOR_TUNED:
        return bool(_ALLOCATOR_TUNED.get("ok"))
    ok = False
    if os.environ.get("MECHPROBE_MALLOC", "") != "default" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_mb << 20)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, trim_mb << 20)
            )
        except (OSError, AttributeError):
            ok = False
    _ALLOCATOR_TUNED["ok"] = int(ok)
    return ok


def _prepare(hf: Any, device: torch.device, dtype: torch.dtype) -> Any:
    return hf.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _place(
    hf: Any, device: str | torch.device | None, dtype: torch.dtype, placement: Placement | None
) -> Any:
    """``hf`` on its device in its dtype, or dispatched over a device map, in eval mode."""
    if placement is None:
        return _prepare(hf, resolve_device(device), dtype)
    if not placement.mapped:
        return _prepare(hf, resolve_device(placement.device), placement.torch_dtype())
    return dispatch(hf.eval().requires_grad_(False), placement)


def load_reference(
    name: str | ModelSource = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    placement: Placement | None = None,
) -> tuple[Any, Any]:
    """Load an unmodified HuggingFace model and its tokenizer, for cross-checks.

    The model is its own instance (never the one inside a bridge), in eval mode, with eager
    attention so that ``output_attentions`` works.

    Args:
        name: ``smollm2-135m``, ``gemma3-270m``, ``tiny-gpt2``, ``gpt2``..``gpt2-xl``, a hub id
            or a local directory (safetensors only).
        device: Torch device; default CUDA if available, else CPU.
        dtype: Parameter dtype.
        placement: Device or device map, and dtype (`mechprobe.models.placement`); when given,
            it replaces ``device`` and ``dtype``.

    Returns:
        ``(hf_model, tokenizer)``.

    Example:
        >>> hf, tok = load_reference("tiny-gpt2")
        >>> hf(torch.tensor([[464, 3797]])).logits.shape
        torch.Size([1, 2, 50257])
    """
    hf, tok = hf_pair(resolve_model(name))
    return _place(hf, device, dtype, placement), tok


def load_model(
    name: str | ModelSource = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    placement: Placement | None = None,
) -> Model:
    """Load a model as a TransformerLens ``TransformerBridge`` with HuggingFace numerics.

    Hook names follow TransformerLens: ``blocks.L.attn.hook_q/hook_k/hook_v`` (per head,
    ``[batch, pos, head, d_head]``), ``hook_attn_scores``, ``hook_pattern``, ``hook_z``,
    ``blocks.L.mlp.hook_pre/hook_post``, ``blocks.L.hook_resid_pre/mid/post``.

    Args:
        name: ``smollm2-135m`` (default, offline), ``gemma3-270m`` (offline),
            ``tiny-gpt2`` (offline, random weights), ``gpt2``..``gpt2-xl``, a hub id or a local
            directory (safetensors only).
        device: Torch device; default CUDA if available, else CPU.
        dtype: Parameter dtype.
        placement: Device or device map, and dtype (`mechprobe.models.placement`); when given,
            it replaces ``device`` and ``dtype``.

    Returns:
        The bridge; ``bridge.tokenizer`` is its tokenizer.

    Example:
        >>> model = load_model("tiny-gpt2")
        >>> logits, cache = model.run_with_cache(torch.tensor([[464, 3797]]))
        >>> cache["blocks.0.attn.hook_q"].shape
        torch.Size([1, 2, 4, 16])
    """
    from transformer_lens.model_bridge import TransformerBridge

    src = resolve_model(name)
    name = src.name
    hf, tok = hf_pair(src)
    hf = _place(hf, device, dtype, placement)
    if placement is not None:
        dtype = placement.torch_dtype()
    mapped = getattr(hf, "hf_device_map", None) is not None
    dev = None if mapped else next(hf.parameters()).device
    if not getattr(hf.config, "architectures", None):  # GGUF configs may leave it empty
        hf.config.architectures = [type(hf).__name__]
    quiet = io.StringIO()
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(quiet):
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf, tokenizer=tok, device=None if dev is None else str(dev), dtype=dtype
        )
    bridge.eval()
    bridge.requires_grad_(False)
    bridge.mechprobe_name = name
    # how it was placed, for workers that load it again (`mechprobe.collect_store`)
    bridge.mechprobe_placement = placement or Placement(
        device=None if device is None else str(device), dtype=str(dtype).removeprefix("torch.")
    )
    return bridge


def random_weights_model(model: Model, seed: int = 0) -> Model:
    """The same architecture as ``model``, randomly initialised (seeded), as a bridge.

    The random-weights control of the probes: built from ``model``'s own HuggingFace config
    (``AutoModelForCausalLM.from_config``, the architecture's own initialisation, inside a
    forked RNG seeded with ``seed``), so nothing is downloaded, not even for the offline GGUF
    models, whose config came with their conversion. Same tokenizer, device and dtype. What a
    probe decodes from it comes from the architecture and the input tokens, not from training.

    Example:
        >>> rnd = random_weights_model(load_model("tiny-gpt2"), seed=1)
        >>> rnd.cfg.n_layers, rnd.mechprobe_name
        (2, 'tiny-gpt2 (random weights, seed 1)')
    """
    import copy

    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    hf_old = cast(Any, model).original_model  # the bridge's HuggingFace model
    config = copy.deepcopy(hf_old.config)
    config._attn_implementation = "eager"
    param = next(hf_old.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    hf = _prepare(hf, param.device, param.dtype)
    quiet = io.StringIO()
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    name = getattr(model, "mechprobe_name", config.name_or_path)
    with contextlib.redirect_stdout(quiet):
        bridge = TransformerBridge.boot_transformers(
            name,
            hf_model=hf,
            tokenizer=model.tokenizer,
            device=str(param.device),
            dtype=param.dtype,
        )
    bridge.eval()
    bridge.requires_grad_(False)
    bridge.mechprobe_name = f"{name} (random weights, seed {seed})"
    bridge.mechprobe_placement = getattr(model, "mechprobe_placement", None)
    return bridge
