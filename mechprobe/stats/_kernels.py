"""The probe solver's fused CPU kernels: the C extension ``mechprobe.stats._native``, if installed.

Why C: a Newton pass over a unit's activations is a dozen element-wise operations and nine
sums. As torch operations each is a separate trip through memory with its own dispatch, and
the float64 pass costs about 5.4 ns an element here (2 cores, AVX-512); fused into one loop
that the compiler vectorises (glibc's vector ``exp``) it costs 1.7-2.1 ns, the float32 pass
0.75 ns, and the calls release the GIL, so the solver's worker threads run in parallel
instead of taking turns in Python (``scripts/bench_probe.py`` measures the whole solver).
Library alternatives measured slower: numba (no vectorised ``exp``: 10 ns an element) and
``torch.compile`` (2.8 ns, and seconds of compilation in every process).

The extension (source ``_native.c``) is built when mechprobe is installed (``setup.py``), with
run-time CPU dispatch; nothing is compiled or loaded from a cache at run time. Its functions
check each array's dtype, shape and layout (a wrong one is a ``TypeError`` or ``ValueError``).
Where it was not built (no C compiler at install time), or with ``MECHPROBE_KERNELS=0``,
:func:`library` returns None and the solver uses its torch code, which gives the same results
to float64 rounding; :func:`solver_path` says which path runs, for the manifest.

Example:
    >>> lib = library()  # None where the extension was not built
    >>> lib is None or hasattr(lib, "sums")
    True
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from types import ModuleType
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Set to 0 to use the torch code instead of the compiled kernels.
ENV = "MECHPROBE_KERNELS"
#: The extension module's name.
MODULE = "mechprobe.stats._native"


@functools.cache
def library() -> ModuleType | None:
    """The compiled kernels (the extension module), or None: not built, or ``MECHPROBE_KERNELS=0``.

    A missing extension is logged once per process (a warning): the solver then runs its torch
    code.

    Example:
        >>> library() is None or library().__name__
        'mechprobe.stats._native'
    """
    if os.environ.get(ENV, "1").strip() == "0":
        return None
    try:
        native = importlib.import_module(MODULE)
    except ImportError as exc:
        log.warning(
            "the probe solver's C extension is not installed (%s): it is built when mechprobe is "
            "installed with a C compiler; using the torch code (same results, slower)",
            exc,
        )
        return None
    return native


def solver_path(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Which code the probe solver runs on ``device``, for a step's manifest.

    Returns:
        ``path`` ("compiled kernels" or "torch"), ``device`` and ``dtype`` (the passes' float
        types), and with the kernels their ``build``: module, compiler, flag set and the
        instruction set chosen at run time.

    Example:
        >>> solver_path("cuda")["path"]
        'torch'
        >>> solver_path("cpu")["path"] in ("compiled kernels", "torch")
        True
    """
    dev = torch.device(device).type
    lib = library() if dev == "cpu" else None
    out: dict[str, Any] = {
        "path": "torch" if lib is None else "compiled kernels",
        "device": dev,
        "dtype": "float64 (float32 warm-up passes)",
    }
    if lib is not None:
        out["build"] = {
            "module": MODULE,
            "compiler": lib.COMPILER,
            "flags": lib.FLAGS,
            "dispatch": lib.DISPATCH,
        }
    elif dev == "cpu":
        off = os.environ.get(ENV, "1").strip() == "0"
        out["why"] = "MECHPROBE_KERNELS=0" if off else "the C extension is not installed"
    return out


def array(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """A CPU tensor as a numpy array sharing its memory (an array is returned as it is).

    The kernels check the array's dtype, shape and layout themselves.

    Example:
        >>> array(torch.zeros(2, 3)).shape
        (2, 3)
    """
    if isinstance(t, np.ndarray):
        return t
    if t.device.type != "cpu":
        raise ValueError("kernel tensors must be on the CPU")
    return t.detach().numpy()
