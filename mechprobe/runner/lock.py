"""One writer per output directory: an exclusive lock taken at the start of a run.

The lock is an ``flock`` on ``OUT/.mechprobe.lock``, held for the whole run and released by the
kernel when the process ends, however it ends (a SIGKILL included): a stale lock file never
blocks a later run. The file records who holds it, so that a second run can say so.

Example:
    >>> with out_lock("out", "mechprobe demo"):
    ...     out_lock("out", "second").__enter__()
    Traceback (most recent call last):
    ...
    mechprobe.errors.MechprobeError: out is in use by another mechprobe run (pid ...); ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from mechprobe.errors import MechprobeError

LOCK_NAME = ".mechprobe.lock"


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """Create the output directory if needed and check that it can be written; return it.

    Example:
        >>> check_out_dir("")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: the output directory is empty: give a path ...
    """
    if not str(out).strip():
        raise MechprobeError("the output directory is empty: give a path (e.g. mechprobe-out)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise MechprobeError(f"the output path {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MechprobeError(f"cannot create the output directory {path}: {exc.strerror}") from exc
    probe = path / f".mechprobe-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MechprobeError(
            f"cannot write to the output directory {path}: {exc.strerror}"
        ) from exc
    return path


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, {info['command']!r}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def open_lock_file(lock_path: Path) -> int:
    """Open (or create) the lock file without following a link; refuse anything but a file.

    ``O_NOFOLLOW`` makes a symbolic link fail to open, so the run never writes through it to a
    file elsewhere; a directory, a FIFO or device, a file with other hard links, or one that
    cannot be opened for writing is refused too. Nothing is truncated before these checks.

    Raises:
        MechprobeError: ``<path>: <cause>``, naming what to do.

    Example:
        >>> os.symlink("elsewhere.txt", "link.lock")
        >>> open_lock_file(Path("link.lock"))
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: link.lock: the lock file is a symbolic link; ...
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    hint = "remove it (mechprobe creates its own lock file there)"
    try:
        fd = os.open(lock_path, flags, 0o666)
    except OSError as exc:
        if lock_path.is_symlink():
            cause = "the lock file is a symbolic link; mechprobe never writes through a link"
        elif lock_path.is_dir():
            cause = "the lock file is a directory"
        else:
            cause = f"cannot open the lock file: {exc.strerror}"
            raise MechprobeError(f"{lock_path}: {cause}") from None
        raise MechprobeError(f"{lock_path}: {cause}; {hint}") from None
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "the lock file is not a regular file"
    elif st.st_nlink > 1:
        why = f"the lock file has {st.st_nlink} hard links; writing it would change the others"
    if why:
        os.close(fd)
        raise MechprobeError(f"{lock_path}: {why}; {hint}")
    return fd


@contextlib.contextmanager
def out_lock(out: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Hold the output directory's lock for a ``with`` block; fail at once if another run has it.

    Args:
        out: The output directory (created and checked writable).
        command: What this run is, recorded for a second run's error message.

    Yields:
        The output directory.

    Raises:
        MechprobeError: The directory is held by another run, or cannot be written.
    """
    path = check_out_dir(out)
    lock_path = path / LOCK_NAME
    fd = open_lock_file(lock_path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MechprobeError(
                f"{out} is in use by another mechprobe run ({_holder(lock_path)}); wait for it or "
                "choose another --out"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({**info, "since": time.time()}).encode())
        yield path
    finally:
        os.close(fd)  # releases the flock
