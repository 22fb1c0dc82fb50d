"""Build of the optional C extension: the probe solver's kernels, ``mechprobe.stats._native``.

Everything else about the package is in ``pyproject.toml``. The extension is built at install time
(``pip install .``, ``pip install -e .``, ``python setup.py build_ext --inplace``) with the C
compiler Python was built with (or ``$CC``). It is optional: where no flag set below compiles, the
install goes on without it, says so, and the solver uses its torch code (same results to float64
rounding). Nothing is compiled at run time.

Flag sets, best first. ``-ffast-math`` lets the loops reassociate their sums (vectorise them); it is
given when compiling only, not when linking, so that loading the extension does not switch the
process to flush-to-zero, and infinities and NaN keep their meaning (``-fno-finite-math-only``).
``MECHPROBE_LIBMVEC`` uses glibc's vector ``exp`` (libmvec). CPU dispatch is at run time (the C
source's ``target_clones``), so the build is the same on every x86-64 machine: no ``-march``.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NAME = "mechprobe.stats._native"
SOURCE = "mechprobe/stats/_native.c"
_FAST = ["-O3", "-ffast-math", "-fno-finite-math-only", "-fopenmp-simd"]
FLAG_SETS: tuple[tuple[str, list[str], list[str]], ...] = (
    ("fast-math, libmvec", [*_FAST, "-DMECHPROBE_LIBMVEC"], ["-lmvec", "-lm"]),
    ("no fast-math", ["-O3", "-fno-math-errno", "-fopenmp-simd"], ["-lm"]),
    ("plain", ["-O2"], ["-lm"]),
)


class OptionalBuildExt(build_ext):
    """``build_ext`` that tries each flag set and, where none compiles, installs without it."""

    def run(self) -> None:
        """Build the extensions; a missing compiler is a warning, not an error."""
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError and the like)
            _warn(f"{type(exc).__name__}: {exc}")

    def build_extension(self, ext: Extension) -> None:
        """Build ``ext`` with the first flag set that compiles and links."""
        errors = []
        for label, compile_args, link_args in FLAG_SETS:
            ext.extra_compile_args = [*compile_args, f'-DMECHPROBE_FLAGS="{label}"']
            ext.extra_link_args = link_args
            try:
                super().build_extension(ext)
            except Exception as exc:  # CompileError, LinkError, a missing compiler
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            print(f"mechprobe: built {ext.name} ({label})", file=sys.stderr)
            return
        _warn("; ".join(errors))


def _warn(why: str) -> None:
    bar = "=" * 78
    print(
        f"{bar}\nmechprobe: WARNING: the probe solver's C extension ({NAME}) was not built:\n"
        f"  {why}\nmechprobe works without it, on the solver's torch code (same results, slower).\n"
        "Install a C compiler and Python's headers (Debian: apt-get install gcc python3-dev) and\n"
        f"reinstall to build it.\n{bar}",
        file=sys.stderr,
    )


setup(
    ext_modules=[Extension(NAME, [SOURCE], optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
