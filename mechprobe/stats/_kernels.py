"""The probe solver's fused CPU kernels (``_kernels.c``), compiled on first use.

Why C: a Newton pass over a unit's activations is a dozen element-wise operations and nine
sums. As torch operations each is a separate trip through memory with its own dispatch, and
the float64 pass costs about 5.4 ns an element here (2 cores, AVX-512); fused into one loop
that the compiler vectorises (glibc's vector ``exp``) it costs 1.7-2.1 ns, the float32 pass
0.75 ns, and the calls release the GIL, so the solver's worker threads run in parallel
instead of taking turns in Python (``scripts/bench_probe.py`` measures the whole solver).
Library alternatives measured slower: numba (no vectorised ``exp``: 10 ns an element) and
``torch.compile`` (2.8 ns, and seconds of compilation in every process).

The source is compiled once per machine with the system's C compiler (``$CC``, else ``cc``)
into mechprobe's cache and loaded with ctypes. Where no compiler works, or with
``MECHPROBE_KERNELS=0``, :func:`library` returns None and the solver uses its torch code,
which gives the same results to float64 rounding.

Example:
    >>> lib = library()  # None without a C compiler
    >>> lib is None or hasattr(lib, "sums64")
    True
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Set to 0 to use the torch code instead of the compiled kernels.
ENV = "MECHPROBE_KERNELS"
#: Compiler and linker flags, best first. ``-ffast-math`` lets the loops reassociate the sums
#: (vectorise them); it is given when compiling only, not when linking, so that the library
#: does not switch the process to flush-to-zero. Infinities and NaN keep their meaning
#: (``-fno-finite-math-only``). ``MECHPROBE_LIBMVEC``: use glibc's vector ``exp``.
_FAST = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp-simd"]
FLAGS: tuple[tuple[list[str], list[str]], ...] = (
    ([*_FAST, "-DMECHPROBE_LIBMVEC"], ["-lmvec"]),
    (["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd"], []),
    (["-O2"], []),
)

_P, _N = ctypes.c_void_p, ctypes.c_ssize_t
_SIGNATURES = {
    "sums64": [_P, _N, _N, _P, _P, _P],
    "sums32": [_P, _N, _N, _P, _P, _P],
    "prepare64": [_P, _N, _P, _N, _N, _N, _P, _P, _P, _N],
    "prepare32": [_P, _N, _P, _N, _N, _N, _P, _P, _P, _N],
    "count_above": [_P, _N, _N, _N, _P, _P],
}


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no working C compiler, or ``MECHPROBE_KERNELS=0``).

    Each build is checked against numpy on a small input before it is used.
    """
    if os.environ.get(ENV, "1").strip() == "0" or os.name != "posix":
        return None
    source = resources.files("mechprobe.stats").joinpath("_kernels.c").read_bytes()
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        return None
    for compile_flags, link_flags in FLAGS:
        try:
            lib = _build(compiler, source, compile_flags, link_flags)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("probe kernels: %s with %s failed: %s", compiler, compile_flags, exc)
            continue
        if _works(lib):
            return lib
        log.warning("probe kernels built with %s give wrong sums; not used", compile_flags)
    return None


def _build(
    compiler: str, source: bytes, compile_flags: list[str], link_flags: list[str]
) -> ctypes.CDLL:
    """Compile (once; cached by source, flags, compiler and CPU) and load the library."""
    from mechprobe.models.cache import cache_dir

    key = hashlib.sha256(source)
    for part in (compiler, *compile_flags, *link_flags, platform.machine(), _cpu_flags()):
        key.update(part.encode() + b"\0")
    key.update(subprocess.run([compiler, "--version"], capture_output=True, timeout=30).stdout)
    folder = cache_dir("kernels")
    path = folder / f"probe-{key.hexdigest()[:16]}.so"
    if not path.exists():
        tmp = folder / f".{path.stem}.{uuid.uuid4().hex}"
        try:
            tmp.with_suffix(".c").write_bytes(source)
            run: dict[str, Any] = {"check": True, "capture_output": True, "timeout": 120}
            subprocess.run(
                [compiler, *compile_flags, "-fPIC", "-c", str(tmp.with_suffix(".c")),
                 "-o", str(tmp.with_suffix(".o"))],
                **run,
            )  # fmt: skip
            subprocess.run(
                [compiler, "-shared", str(tmp.with_suffix(".o")), "-o", str(tmp.with_suffix(".so")),
                 *link_flags, "-lm"],
                **run,
            )  # fmt: skip
            os.replace(tmp.with_suffix(".so"), path)  # atomic: other processes see all or none
        finally:
            for suffix in (".c", ".o", ".so"):
                tmp.with_suffix(suffix).unlink(missing_ok=True)
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    return lib


def _cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` builds are only valid on the same kind)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _works(lib: ctypes.CDLL) -> bool:
    """Whether ``sums64`` agrees with numpy on a small input (guards against miscompiles)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 37))
    a, b = rng.standard_normal(3), rng.standard_normal(3)
    p = 1.0 / (1.0 + np.exp(-(a[:, None] + b[:, None] * x)))
    w = p * (1.0 - p)
    v = w * (1.0 - 2.0 * p)
    want = np.stack([(f * x**k).sum(1) for f, k in [(p, 0), (w, 0), (v, 0), (p, 1), (w, 1),
                     (v, 1), (w, 2), (v, 2), (v, 3)]], 1)  # fmt: skip
    got = np.empty((3, 9))
    lib.sums64(x.ctypes.data, 3, 37, a.ctypes.data, b.ctypes.data, got.ctypes.data)
    return bool(np.allclose(got, want, rtol=1e-12, atol=1e-13))


def ptr(t: torch.Tensor | np.ndarray) -> int:
    """The address of a C-contiguous CPU tensor or array (checked)."""
    if isinstance(t, np.ndarray):
        if not t.flags.c_contiguous:
            raise ValueError("kernel arrays must be C-contiguous")
        return t.ctypes.data
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("kernel tensors must be contiguous and on the CPU")
    return t.data_ptr()
