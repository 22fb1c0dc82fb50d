"""Where a model's weights go: one device, or a device map over several; and their dtype.

A :class:`Placement` is what ``--device``, ``--device-map``, ``--n-devices``, ``--max-memory``
and ``--dtype`` ask for, checked once (:func:`placement_from_options`) before any model is
loaded. Loading applies it with HuggingFace accelerate (:func:`dispatch`): the model is read
once into CPU memory, cast, then its blocks are dispatched over the devices as
``from_pretrained(device_map=...)`` would place them, and the TransformerBridge wraps the
dispatched model (TransformerLens refuses ``device_map`` beside ``hf_model=``, so mechprobe
places the model itself). float32 is the default and the only dtype for parity checks.

Building and checking a placement imports no torch.

Example:
    >>> p = placement_from_options(device_map="balanced", max_memory="0=20GiB,1=20GiB")
    >>> p.device_map, p.max_memory
    ('balanced', {0: '20GiB', 1: '20GiB'})
    >>> p.label("cuda")
    'cuda, device map balanced (0=20GiB, 1=20GiB)'
    >>> placement_from_options(dtype="float64")
    Traceback (most recent call last):
    ...
    mechprobe.errors.ConfigError: dtype: must be one of float32, bfloat16, float16, got 'float64'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mechprobe.errors import ConfigError

#: The dtypes a model can be loaded in; the first is the default.
DTYPES = ("float32", "bfloat16", "float16")
#: The device maps accelerate computes for a model.
DEVICE_MAPS = ("auto", "balanced")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


@dataclass(frozen=True)
class Placement:
    """A model's placement over devices and its dtype.

    Attributes:
        device: One torch device (None: CUDA if available, else CPU); unused with a device map.
        device_map: ``auto`` or ``balanced`` (None: the whole model on ``device``).
        n_devices: Split over this many CUDA devices (``balanced``, their free memory each).
        max_memory: Per-device budgets for the device map, e.g. ``{0: "20GiB", "cpu": "64GiB"}``.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.
    """

    device: str | None = None
    device_map: str | None = None
    n_devices: int | None = None
    max_memory: dict[int | str, str] | None = field(default=None, hash=False)
    dtype: str = "float32"

    @property
    def mapped(self) -> bool:
        """Whether the model is dispatched over a device map rather than moved to one device."""
        return self.device_map is not None or (self.n_devices or 1) > 1

    def label(self, device_type: str) -> str:
        """How the run's manifest records it (a resumed run must match it exactly).

        Example:
            >>> Placement().label("cpu"), Placement(dtype="bfloat16").label("cuda")
            ('cpu', 'cuda, bfloat16')
        """
        parts = [device_type]
        if self.mapped:
            how = self.device_map or "balanced"
            if self.n_devices:
                how += f" over {self.n_devices}"
            if self.max_memory:
                how += " (" + ", ".join(f"{k}={v}" for k, v in self.max_memory.items()) + ")"
            parts.append(f"device map {how}")
        if self.dtype != DTYPES[0]:
            parts.append(self.dtype)
        return ", ".join(parts)

    def torch_dtype(self) -> Any:
        """The torch dtype (imports torch).

        Example:
            >>> Placement(dtype="bfloat16").torch_dtype()
            torch.bfloat16
        """
        import torch

        return getattr(torch, self.dtype)


def parse_max_memory(text: str) -> dict[int | str, str]:
    """``0=20GiB,1=20GiB,cpu=64GiB`` as accelerate's ``max_memory`` (GPU indices as ints).

    Raises:
        ValueError: One line naming the bad entry.

    Example:
        >>> parse_max_memory("0=20GiB, cpu=64GB")
        {0: '20GiB', 'cpu': '64GB'}
    """
    budgets: dict[int | str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        device, sep, size = (s.strip() for s in entry.partition("="))
        if not sep or not device or not _MEMORY.match(size):
            raise ValueError(f"give DEVICE=SIZE entries like 0=20GiB,cpu=64GiB, got {entry!r}")
        if not (device.isdigit() or device in ("cpu", "disk", "mps")):
            raise ValueError(f"{device!r} is not a GPU index, cpu or disk")
        key: int | str = int(device) if device.isdigit() else device
        if key in budgets:
            raise ValueError(f"device {device} is given twice")
        budgets[key] = size
    return budgets


def placement_from_options(
    *,
    device: str | None = None,
    device_map: str | None = None,
    n_devices: int | str | None = None,
    max_memory: str | None = None,
    dtype: str | None = None,
) -> Placement:
    """Check the placement options together and return the :class:`Placement`.

    Raises:
        ConfigError: Every problem at once, keyed by option name.

    Example:
        >>> placement_from_options(device="cpu", device_map="auto")
        Traceback (most recent call last):
        ...
        mechprobe.errors.ConfigError: device_map: give either --device or --device-map, not both
    """
    problems: list[tuple[str, str]] = []
    if device_map is not None and device_map not in DEVICE_MAPS:
        known = ", ".join(DEVICE_MAPS)
        problems.append(("device_map", f"must be one of {known}, got {device_map!r}"))
    if device_map is not None and device is not None:
        problems.append(("device_map", "give either --device or --device-map, not both"))
    n: int | None = None
    if n_devices is not None:
        try:
            n = int(n_devices)
            if n < 1:
                raise ValueError
        except ValueError:
            problems.append(("n_devices", f"must be a whole number >= 1, got {n_devices!r}"))
        else:
            if n > 1 and device is not None:
                problems.append(("n_devices", "give either --device or --n-devices, not both"))
    budgets = None
    if max_memory is not None:
        try:
            budgets = parse_max_memory(max_memory)
        except ValueError as exc:
            problems.append(("max_memory", str(exc)))
        if device_map is None and (n or 1) <= 1:
            problems.append(("max_memory", "needs --device-map or --n-devices > 1"))
    if dtype is not None and dtype not in DTYPES:
        problems.append(("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}"))
    if problems:
        raise ConfigError(problems)
    return Placement(device, device_map, n, budgets, dtype or DTYPES[0])


def check_devices(placement: Placement) -> None:
    """Refuse, before loading, a placement this machine cannot hold (imports torch).

    Raises:
        ConfigError: More devices asked for than CUDA has, or a GPU budget without CUDA.

    Example:
        >>> check_devices(Placement(device_map="auto"))  # any machine: CPU at least
    """
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems = []
    if (placement.n_devices or 1) > have and (placement.n_devices or 1) > 1:
        problems.append(
            ("n_devices", f"{placement.n_devices} CUDA devices asked for, this machine has {have}")
        )
    gpus = [k for k in placement.max_memory or {} if isinstance(k, int)]
    if gpus and max(gpus) >= have:
        problems.append(("max_memory", f"GPU {max(gpus)} is given, this machine has {have} GPUs"))
    if problems:
        raise ConfigError(problems)


def dispatch(hf: Any, placement: Placement) -> Any:
    """Cast ``hf`` to the placement's dtype and dispatch it over its device map (accelerate).

    ``balanced`` spreads the blocks evenly over the GPUs (or the first ``n_devices``), ``auto``
    fills them in order; a block is never split (the model's ``_no_split_modules``).

    Example:
        >>> from mechprobe.models.sources import tiny_gpt2
        >>> hf = dispatch(tiny_gpt2()[0], Placement(device_map="auto"))
        >>> sorted(set(hf.hf_device_map.values()))
        ['cpu']
    """
    import torch
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    dtype = placement.torch_dtype()
    hf = hf.to(dtype=dtype)
    budgets: dict[int | str, Any] | None = (
        dict(placement.max_memory) if placement.max_memory else None
    )
    if budgets is None and placement.n_devices and placement.n_devices > 1:
        budgets = {i: torch.cuda.mem_get_info(i)[0] for i in range(placement.n_devices)}
    no_split = list(getattr(hf, "_no_split_modules", None) or [])
    if (placement.device_map or "balanced") == "balanced" and torch.cuda.is_available():
        budgets = get_balanced_memory(
            hf, max_memory=budgets, no_split_module_classes=no_split, dtype=dtype
        )
    device_map = infer_auto_device_map(
        hf, max_memory=budgets, no_split_module_classes=no_split, dtype=dtype
    )
    return dispatch_model(hf, device_map=device_map)
