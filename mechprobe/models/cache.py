"""Where mechprobe keeps converted weights and tokenizers, and how it keeps them honest.

The cache directory is ``$MECHPROBE_CACHE`` if set, else the platform's user cache directory
(``~/.cache/mechprobe`` on Linux).

Every converted artefact (dequantized GGUF weights, tokenizers) is a directory made by
`cached_build`, the one function all of them go through:

- the directory is built in a temporary sibling (``.NAME.tmp-XXXX``), removed if the build fails,
  and renamed into place only when complete; a build killed midway leaves its temporary
  directory behind, and the next `cached_build` in that folder removes it;
- the last file written is a sidecar, ``mechprobe-manifest.json``, with the size and sha256 of
  every other file;
- before each use the directory is checked against its sidecar (`verify_dir`): file set, sizes,
  then every sha256. A missing or unreadable sidecar, a missing, extra, truncated or changed file
  (a corrupted header, one tensor rescaled, a NaN written in place, a broken ``config.json``), or an
  empty directory makes it rebuild from the source, with a one-line warning. The conversions are
  deterministic, so a rebuilt directory holds the same bytes as a clean run's.

Verification reads every byte once (sha256, ~1.5 GB/s on one core with SHA extensions, from the
page cache): 0.35-0.55 s for SmolLM2-135M's 538 MB, about 0.7 s for Gemma-3-270M's 1.1 GB. It also
warms the page cache for the load that follows. Concurrent processes are serialised by an
advisory lock per directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "mechprobe-manifest.json"
MANIFEST_FORMAT = 1
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp-|old-)?[A-Za-z0-9_]+$")
_HASH_MEMO: dict[str, list[Any]] = {}


def cache_dir(*parts: str) -> Path:
    """Return (and create) a directory inside mechprobe's cache.

    Raises:
        MechprobeError: ``MECHPROBE_CACHE`` is set but empty (it would mean the current
            directory), or the directory cannot be created (a file in the way, a HOME that
            cannot hold a cache, no permission): ``<path>: <cause>``.

    Example:
        >>> cache_dir("tokenizers").name
        'tokenizers'
    """
    from mechprobe.errors import MechprobeError

    root = os.environ.get("MECHPROBE_CACHE")
    if root is not None and not root.strip():
        raise MechprobeError(
            "MECHPROBE_CACHE: set but empty; unset it (default ~/.cache/mechprobe) or give a "
            "directory"
        )
    if root is None:
        import platformdirs

        root = platformdirs.user_cache_dir("mechprobe")
    path = Path(root).joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MechprobeError(
            f"{exc.filename or path}: cannot create the cache directory: {exc.strerror}; set "
            "MECHPROBE_CACHE to a writable directory"
        ) from exc
    return path


def sha256_file(path: str | os.PathLike[str], chunk: int = 8 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks.

    Example:
        >>> len(sha256_file(__file__))
        64
    """
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


#: A memo entry is trusted only for a file whose ctime is at least this much older than the hash
#: (file timestamps tick coarsely: a rewrite in the same tick would otherwise look unchanged).
RACY_NS = 2_000_000_000


def _memo_key(st: os.stat_result) -> list[int]:
    """What a rewrite changes: device, inode, ctime (``touch`` cannot set it), size, mtime."""
    return [st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size, st.st_mtime_ns]


def _trusted(entry: Any, key: list[int]) -> str | None:
    """The memo's sha256 when ``entry`` matches ``key`` and was hashed well after the ctime."""
    if not (isinstance(entry, list) and len(entry) == 3 and entry[0] == key):
        return None
    hashed_at, digest = entry[1], entry[2]
    if not isinstance(hashed_at, int) or key[2] > hashed_at - RACY_NS:
        return None
    return str(digest)


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """Return a file's sha256, remembered across calls and processes while the file is unchanged.

    For identifying source files cheaply (run manifests, cache keys); the memo lives in
    ``cache_dir("hashes")/sha256.json``. It is keyed by the device, inode, ctime, size and
    mtime: a rewrite in place changes the ctime, which ``touch`` or ``os.utime`` cannot set
    back, so a file rewritten with the same size and a restored mtime is hashed again; so is a
    file replaced by another (inode). An entry is trusted only when the file's ctime is more than
    2 s older than the hash (`RACY_NS`), as git does with its index. The cost: one ``stat`` for
    an unchanged file; a full read (~1.5 GB/s) after anything that sets its ctime (a write,
    ``chmod``, ``chown``, a new hard link, a copy restored with ``cp -p``) and on each call within
    2 s of such a change. Cached conversions are never trusted this way: `verify_dir` hashes them
    in full.

    Example:
        >>> cached_sha256(__file__) == sha256_file(__file__)
        True
    """
    import time

    p = Path(path).resolve()
    key = _memo_key(p.stat())
    name = str(p)
    if (digest := _trusted(_HASH_MEMO.get(name), key)) is not None:
        return digest
    store = cache_dir("hashes") / "sha256.json"
    try:
        disk = json.loads(store.read_text(encoding="utf-8"))
        assert isinstance(disk, dict)
    except (OSError, ValueError, AssertionError):
        disk = {}
    digest = _trusted(disk.get(name), key)
    if digest is None:
        hashed_at = time.time_ns()
        digest = sha256_file(p)
        disk[name] = [key, hashed_at, digest]
        with contextlib.suppress(OSError):  # a read-only cache only loses the memo
            _atomic_write(store, json.dumps(disk, indent=0, sort_keys=True))
    _HASH_MEMO[name] = disk[name]
    return digest


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _files(directory: Path) -> list[str]:
    """Relative paths of all files under ``directory`` but the sidecar, sorted."""
    out = [
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() or p.is_symlink()
    ]
    return sorted(f for f in out if f != MANIFEST)


def write_manifest(directory: str | os.PathLike[str], **info: Any) -> dict[str, Any]:
    """Record the size and sha256 of every file in ``directory`` in its sidecar, written last.

    Args:
        directory: A finished directory.
        **info: Extra JSON-able facts to keep in the sidecar (e.g. the source's sha256).

    Returns:
        The sidecar's content.

    Example:
        >>> d = Path("built")  # the doctests run in a temporary working directory
        >>> d.mkdir()
        >>> _ = (d / "a.txt").write_text("hello")
        >>> write_manifest(d)["files"]["a.txt"]["size"]
        5
        >>> verify_dir(d) is None
        True
    """
    d = Path(directory)
    files = {f: {"size": (d / f).stat().st_size, "sha256": sha256_file(d / f)} for f in _files(d)}
    manifest = {"format": MANIFEST_FORMAT, **info, "files": files}
    _atomic_write(d / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def verify_dir(directory: str | os.PathLike[str]) -> str | None:
    """Check a cached directory against its sidecar; return what is wrong, or None if it is intact.

    Checks, cheapest first: the sidecar parses, the set of files is the recorded one, every size
    matches, every sha256 matches (one full read of the directory).

    Example:
        >>> Path("empty").mkdir()
        >>> verify_dir("empty")
        'no manifest (empty directory)'
    """
    d = Path(directory)
    if not d.is_dir():
        return "not a directory" if d.exists() or d.is_symlink() else "missing"
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        fmt = manifest["format"]
        recorded = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in files.items()}
    except FileNotFoundError:
        return "no manifest" + ("" if any(d.iterdir()) else " (empty directory)")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"unreadable manifest ({type(exc).__name__})"
    if fmt != MANIFEST_FORMAT:
        return f"manifest format {fmt!r}, expected {MANIFEST_FORMAT}"
    present = _files(d)
    missing = sorted(set(recorded) - set(present))
    extra = sorted(set(present) - set(recorded))
    if missing:
        return f"{missing[0]} is missing"
    if extra:
        return f"unexpected file {extra[0]}"
    if not recorded:
        return "empty manifest"
    try:
        for f, (size, _) in recorded.items():
            actual = (d / f).stat().st_size
            if actual != size:
                return f"{f} has {actual} bytes, expected {size}"
        for f, (_, digest) in recorded.items():
            if sha256_file(d / f) != digest:
                return f"{f} does not match its sha256"
    except OSError as exc:
        return f"unreadable file ({type(exc).__name__}: {exc.strerror or exc})"
    return None


@contextlib.contextmanager
def _lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an advisory exclusive lock on ``path`` (created if needed); yield whether it is held."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
        yield True
        return
    try:
        fh = open(path, "a+b")  # closed by the with below
    except OSError:  # a read-only cache: nothing will be built there, verification needs no lock
        yield True
        return
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _lock_path(parent: Path, name: str) -> Path:
    return parent / f".{name}.lock"


def remove_leftovers(parent: str | os.PathLike[str], *, held: str | None = None) -> list[Path]:
    """Remove temporary directories that interrupted builds left in ``parent``; return them.

    A leftover (``.NAME.tmp-XXXX`` or ``.NAME.old-XXXX``) is removed only while no process holds
    ``NAME``'s lock, i.e. only when no build of ``NAME`` is running. ``held`` names the lock the
    caller already holds.

    Example:
        >>> Path(".x.tmp-1234").mkdir()
        >>> [p.name for p in remove_leftovers(".")]
        ['.x.tmp-1234']
    """
    p = Path(parent)
    removed = []
    for entry in sorted(p.iterdir()):
        m = _LEFTOVER.match(entry.name)
        if not m or not entry.is_dir() or entry.is_symlink():
            continue
        name = m.group("name")
        with contextlib.ExitStack() as stack:
            if name != held and not stack.enter_context(_lock(_lock_path(p, name), blocking=False)):
                continue  # a build of that name is running
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    for entry in removed:
        log.warning("mechprobe: removed %s, left by an interrupted conversion", entry)
    return removed


def cached_build(
    dest: str | os.PathLike[str],
    build: Callable[[Path], None],
    *,
    what: str,
    announce: bool = True,
    **info: Any,
) -> Path:
    """Return ``dest`` verified, building (or rebuilding) it first when it is absent or damaged.

    This is the single path by which mechprobe caches converted files: ``build(tmp)`` fills an
    empty temporary directory next to ``dest``; the sidecar is written after it, and the
    directory is renamed to ``dest``. A ``dest`` that fails `verify_dir` is replaced the same way,
    with one warning line naming the problem. Leftovers of killed builds in ``dest``'s folder are
    removed first.

    Args:
        dest: The cache directory to produce, e.g. ``cache_dir("models") / "smollm2-135m-<sha>"``.
        build: Writes the files into the directory it is given; must be deterministic.
        what: Name for the messages (``"smollm2-135m"``).
        announce: Log a first build as a warning (slow conversions) rather than at info level.
        **info: Extra facts recorded in the sidecar (e.g. ``source_sha256``).

    Returns:
        ``dest``, intact.

    Example:
        >>> d = cached_build(Path("greeting"), lambda t: (t / "hi.txt").write_text("hi"), what="hi")
        >>> (d / "hi.txt").read_text(), verify_dir(d)
        ('hi', None)
    """
    dest = Path(dest)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _lock(_lock_path(parent, dest.name)):
        remove_leftovers(parent, held=dest.name)
        problem = verify_dir(dest)
        if problem is None:
            return dest
        if problem == "missing":
            level = logging.WARNING if announce else logging.INFO
            log.log(level, "mechprobe: building %s once into %s", what, dest)
        else:
            log.warning(
                "mechprobe: the cached %s at %s is damaged (%s); rebuilding it from the source",
                what, dest, problem,
            )  # fmt: skip
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
        old = parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            build(tmp)
            write_manifest(tmp, **info)
            if dest.exists() or dest.is_symlink():
                os.replace(dest, old)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            elif old.exists() or old.is_symlink():
                old.unlink()
    return dest
