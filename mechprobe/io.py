"""Atomic result writing: every file appears whole or not at all.

Each writer writes to a temporary file in the destination directory and renames it into place
(``os.replace`` is atomic on POSIX), so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mechprobe.errors import MechprobeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only on success.

    Args:
        path: The final destination. Parent directories are created.

    Yields:
        A temporary path in the same directory; write the file there.

    Example:
        >>> with atomic_path("out/result.txt") as tmp:
        ...     tmp.write_text("done")
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MechprobeError(f"cannot create output directory {dest.parent}: {exc}") from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically and return the path.

    Example:
        >>> write_text("out/note.txt", "hello")
        PosixPath('out/note.txt')
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (numpy scalars and arrays are converted).

    Non-finite floats are written as ``NaN``/``Infinity`` (Python's JSON dialect).

    Example:
        >>> write_json("out/summary.json", {"layers": 12})
        PosixPath('out/summary.json')
    """
    return write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, Any]) -> Path:
    """Save arrays to an uncompressed ``.npz`` atomically; object arrays are refused (no pickles).

    Example:
        >>> write_npz("out/arrays.npz", {"beta": np.zeros(3)})
        PosixPath('out/arrays.npz')
    """
    clean = {}
    for key, value in arrays.items():
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"array {key!r} has dtype object; refusing to pickle it")
        clean[key] = arr
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **clean)
    return Path(path)
