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
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
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
