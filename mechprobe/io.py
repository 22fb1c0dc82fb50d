"""Atomic result writing: every file, and every result directory, appears whole or not at all.

Each writer writes to a temporary file in the destination directory and renames it into place
(``os.replace`` is atomic on POSIX), so an interrupted run never leaves a half-written result.
`atomic_directory` does the same for a whole directory: it is built in a temporary sibling and
swapped in only when complete, so the previous complete directory stays until then.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mechprobe.errors import MechprobeError
from mechprobe.faults import failpoint


def _umask() -> int:
    """The umask, read from ``/proc`` without setting it (elsewhere set and at once restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
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
        ...     _ = tmp.write_text("done")
        >>> Path("out/result.txt").read_text()
        'done'
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
    clean: dict[str, Any] = {}  # Any: np.savez types its keywords as arrays or allow_pickle
    for key, value in arrays.items():
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"array {key!r} has dtype object; refusing to pickle it")
        clean[key] = arr
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **clean)
    return Path(path)


#: Name parts of the temporary siblings `atomic_directory` creates.
TMP_MARK, OLD_MARK = ".tmp-", ".old-"


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, name: str = "") -> Iterator[Path]:
    """Build a directory in a temporary sibling; swap it in for ``path`` only on success.

    The previous ``path`` (if any) stays complete and untouched until the new one is whole: it
    is then renamed aside, the new one renamed into place, and the old one removed. On an error
    (or an interrupt) the temporary directory is removed and ``path`` is unchanged. A process
    killed between the two renames leaves the old directory aside as ``.<name>.old-*``, which
    `recover_directories` puts back.

    Args:
        path: The directory to write.
        name: Prefix of its failpoints (``<name>:written``, ``<name>:swapping``; tests only).

    Example:
        >>> with atomic_directory("out/step") as tmp:
        ...     _ = (tmp / "a.txt").write_text("1")
        >>> sorted(p.name for p in Path("out/step").iterdir())
        ['a.txt']
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MechprobeError(f"cannot create output directory {dest.parent}: {exc}") from exc
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{TMP_MARK}", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; use the usual mode
        failpoint(f"{name}:written")
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}{OLD_MARK}", dir=dest.parent))
            os.replace(dest, old)
            failpoint(f"{name}:swapping")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_directories(parent: str | os.PathLike[str]) -> list[str]:
    """Clean up after killed `atomic_directory` calls in ``parent``; return what was done.

    Temporary builds (``.<name>.tmp-*``) are removed; a set-aside old directory
    (``.<name>.old-*``) is put back when ``<name>`` is missing, else removed. Call it only
    while no other process writes into ``parent`` (under the output directory's lock).

    Example:
        >>> Path("out/.step.tmp-x").mkdir(parents=True)
        >>> recover_directories("out")
        ['removed out/.step.tmp-x']
    """
    done: list[str] = []
    root = Path(parent)
    if not root.is_dir():
        return done
    for entry in sorted(root.iterdir()):
        name = entry.name
        if not (name.startswith(".") and entry.is_dir()):
            continue
        if TMP_MARK in name:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry}")
        elif OLD_MARK in name:
            dest = root / name[1 : name.index(OLD_MARK)]
            if dest.exists():
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry}")
            else:
                os.replace(entry, dest)
                done.append(f"restored {dest}")
    return done


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks.

    Example:
        >>> _ = Path("a.txt").write_text("abc")
        >>> sha256_file("a.txt")[:12]
        'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
