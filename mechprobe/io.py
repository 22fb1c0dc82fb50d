"""Atomic result writing: every file, and every result directory, appears whole or not at all.

Each writer writes to a temporary file in the destination directory and renames it into place
(``os.replace`` is atomic on POSIX), so an interrupted run never leaves a half-written result.
`atomic_directory` does the same for a whole directory: it is built in a temporary sibling and
swapped in only when complete, so the previous complete directory stays until then.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
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

    Raises:
        OSError: The write failed; its ``filename`` is ``path`` when the error named none.

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
    except OSError as exc:  # a failed write (disk full, size limit) names the file it was for
        if exc.filename is None:
            exc.filename = str(dest)
        raise
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


#: Name prefix of the directories `atomic_directory` makes: ``.mechprobe-<kind>-<step>-<token>``.
OWNED_PREFIX = ".mechprobe-"
#: The marker file inside each of them; clean-up touches nothing without it.
OWNED_MARKER = ".mechprobe-owned"
_OWNED = re.compile(r"^\.mechprobe-(?P<kind>tmp|old)-(?P<step>.+)-(?P<token>[0-9a-f]{12})$")


def _owned_dir(parent: Path, kind: str, step: str) -> Path:
    """Create ``parent/.mechprobe-<kind>-<step>-<token>/`` holding the marker file."""
    while True:
        path = parent / f"{OWNED_PREFIX}{kind}-{step}-{secrets.token_hex(6)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / OWNED_MARKER).write_text(f"{kind} {step}\n", encoding="utf-8")
        return path


def owned(entry: Path) -> tuple[str, str] | None:
    """``(kind, step)`` when ``entry`` is a directory `atomic_directory` made, else None.

    It must carry the name (prefix, kind, step, random token), be a real directory (not a link)
    and hold the marker file naming the same kind and step: a user's directory never qualifies.

    Example:
        >>> Path("out/.thesis.tmp-final").mkdir(parents=True)
        >>> owned(Path("out/.thesis.tmp-final")) is None
        True
    """
    match = _OWNED.match(entry.name)
    if match is None or entry.is_symlink() or not entry.is_dir():
        return None
    marker = entry / OWNED_MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 256:
            return None
        text = marker.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    kind, step = match["kind"], match["step"]
    return (kind, step) if text == f"{kind} {step}" else None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, name: str = "") -> Iterator[Path]:
    """Build a directory in a temporary sibling; swap it in for ``path`` only on success.

    The previous ``path`` (if any) stays complete and untouched until the new one is whole: it
    is then moved aside, the new one moved into place, and the old one removed. On an error
    (or an interrupt) the temporary directory is removed and ``path`` is unchanged. The
    temporary and set-aside directories are ``.mechprobe-tmp-<name>-<token>/`` and
    ``.mechprobe-old-<name>-<token>/``, each holding a marker file and the content in a
    subdirectory named like ``path``; a process killed between the two moves leaves the old
    directory aside, which `recover_directories` puts back. Nothing else is ever touched.

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
        box = _owned_dir(dest.parent, "tmp", dest.name)
    except OSError as exc:
        raise MechprobeError(f"cannot create output directory {dest.parent}: {exc}") from exc
    tmp = box / dest.name
    try:
        tmp.mkdir()
        yield tmp
        failpoint(f"{name}:written")
        old = None
        if dest.exists() or dest.is_symlink():
            old = _owned_dir(dest.parent, "old", dest.name)
            os.replace(dest, old / dest.name)
            failpoint(f"{name}:swapping")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(box, ignore_errors=True)


def recover_directories(parent: str | os.PathLike[str]) -> list[str]:
    """Clean up after killed `atomic_directory` calls in ``parent``; return what was done.

    Only directories `owned` says `atomic_directory` made are touched: a temporary build is
    removed; a set-aside old directory is put back when its destination is missing, else
    removed. Call it only while no other process writes into ``parent`` (under the output
    directory's lock).

    Example:
        >>> Path("out/.thesis.tmp-final").mkdir(parents=True)
        >>> box = _owned_dir(Path("out"), "tmp", "step")
        >>> recover_directories("out") == [f"removed {box}"], Path("out/.thesis.tmp-final").is_dir()
        (True, True)
    """
    done: list[str] = []
    root = Path(parent)
    if not root.is_dir():
        return done
    for entry in sorted(root.iterdir()):
        mine = owned(entry)
        if mine is None:
            continue
        kind, step = mine
        dest, kept = root / step, entry / step
        if kind == "old" and kept.is_dir() and not (dest.exists() or dest.is_symlink()):
            os.replace(kept, dest)
            done.append(f"restored {dest}")
        else:
            done.append(f"removed {entry}")
        shutil.rmtree(entry, ignore_errors=True)
    return done


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks; a device (``/dev/zero``) is an ``OSError``.

    Example:
        >>> _ = Path("a.txt").write_text("abc")
        >>> sha256_file("a.txt")[:12]
        'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if stat.S_ISCHR(mode := os.fstat(fh.fileno()).st_mode) or stat.S_ISBLK(mode):
            raise OSError(errno.EINVAL, "a device, not a file", str(path))  # /dev/zero: no end
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
