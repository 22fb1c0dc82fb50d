"""Entry point of the ``mechprobe`` command: one line per user error, exit 130 on Ctrl-C.

Everything that can take time -- building the parser, importing a subcommand's libraries, the
work itself -- runs inside `main`'s handlers, so a user error is always the single line
``mechprobe: error: ...`` (exit 2) and Ctrl-C, at any moment, is ``mechprobe: interrupted``
(exit 130) with no traceback. `entry` also covers imports (a Ctrl-C while a module imports
ends the process at once: see `_on_interrupt`) and the interpreter's exit: a Ctrl-C while
libraries clean up ends the process at once with the same line and status. Results are written
atomically, so an interruption never leaves a half-written result.

An environmental fault (``OSError``: a disk full, a file-size limit, a file where a directory
goes, a permission, a full stdout) is one line ``mechprobe: error: <path>: <cause>`` too: exit
1 for a failed write or read (`IO_FAILURES`), exit 2 otherwise (`os_error_line`). A stdout
closed at start is refused in one line (exit 2); one closed by its reader (``| head``) ends the
command quietly.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

INTERRUPTED = "mechprobe: interrupted\n"
STDOUT_CLOSED = "mechprobe: error: <stdout>: closed; redirect it to a file or /dev/null"


def _interrupted_exit(signum: int, frame: object) -> None:
    """SIGINT during exit: say so and end now, skipping the remaining exit handlers."""
    try:
        sys.stderr.write(INTERRUPTED)
        sys.stderr.flush()
    finally:
        os._exit(130)


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT: a KeyboardInterrupt, except while a module is being imported (then: exit now).

    An interrupt raised during an import can surface in Python code that a C++ extension runs
    while it initialises (torch, through pybind11); such code cannot pass it on, and the
    process aborts (SIGABRT) with a C++ message instead of a line and status 130. Ending at
    once is as safe as a kill at that moment, which the failpoint tests cover: results are
    swapped in whole, and leftovers are cleaned by the next run.
    """
    f = frame
    while f is not None:
        if f.f_code.co_filename.startswith("<frozen importlib"):
            _interrupted_exit(signum, frame)
        f = f.f_back
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mechprobe`` command; return its exit status.

    Example:
        >>> main(["models"])  # doctest: +ELLIPSIS
        name ...
        0
    """
    from mechprobe.errors import MechprobeError

    try:
        from mechprobe.cli.app import dispatch

        return dispatch(argv)
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        return 130
    except MechprobeError as exc:
        message = " ".join(str(exc).split())  # always one line
        sys.stderr.write(f"mechprobe: error: {message}\n")
        return 2
    except BrokenPipeError:
        raise  # stdout closed by a reader (`| head`): `entry` ends quietly
    except OSError as exc:
        line, code = os_error_line(exc)
        sys.stderr.write(line + "\n")
        return code
    except Exception as exc:
        if not _from_interrupt(exc):
            raise
        sys.stderr.write(INTERRUPTED)
        return 130


#: errno values of a failed write or read (exit 1): the disk, a quota or a size limit.
IO_FAILURES = frozenset(
    getattr(errno, n) for n in ("ENOSPC", "EFBIG", "EDQUOT", "EIO") if hasattr(errno, n)
)


def os_error_line(exc: OSError) -> tuple[str, int]:
    """The one line and exit status for an environmental fault (``OSError``).

    A failed write or read (disk full, file-size limit, quota, I/O error) is exit 1, and the
    results already written stay as they are (every result is swapped in whole); any other
    fault (a file or directory of the wrong type, a permission) is exit 2, like bad input.

    Example:
        >>> os_error_line(OSError(errno.ENOSPC, "No space left on device", "out/a.npz"))
        ('mechprobe: error: out/a.npz: No space left on device (I/O failure; results written before are kept)', 1)
        >>> os_error_line(IsADirectoryError(errno.EISDIR, "Is a directory", "out/index.html"))
        ('mechprobe: error: out/index.html: Is a directory', 2)
    """  # noqa: E501
    where = exc.filename
    cause = " ".join(str(exc.strerror or exc).split())
    line = f"mechprobe: error: {cause}" if where is None else f"mechprobe: error: {where}: {cause}"
    if exc.errno in IO_FAILURES:
        return f"{line} (I/O failure; results written before are kept)", 1
    return line, 2


class _NamedStream:
    """A text stream whose write errors name it (``<stdout>``): one line says what failed."""

    def __init__(self, stream: Any, name: str) -> None:
        self._stream, self._name = stream, name

    def write(self, text: str) -> int:
        return self._call(self._stream.write, text)

    def flush(self) -> None:
        self._call(self._stream.flush)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = self._name
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _from_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` wraps a Ctrl-C.

    Python turns a KeyboardInterrupt raised inside ``__set_name__`` (class creation while a
    library imports) into a RuntimeError whose cause is the interrupt.

    Example:
        >>> try:
        ...     raise RuntimeError("Error calling __set_name__") from KeyboardInterrupt()
        ... except RuntimeError as exc:
        ...     _from_interrupt(exc)
        True
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def entry() -> None:
    """The console script: `main`, then an exit that a Ctrl-C cannot turn into a traceback."""
    signal.signal(signal.SIGINT, _on_interrupt)
    if sys.stdout is None:  # started with stdout closed (`mechprobe ... >&-`)
        sys.stderr.write(f"{STDOUT_CLOSED}\n")
        raise SystemExit(2)
    sys.stdout = _NamedStream(sys.stdout, "<stdout>")
    try:
        code = main()
        sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        code = 130
    except BrokenPipeError:  # e.g. `mechprobe models | head -1`
        code = 0
        os._exit(code)
    except OSError as exc:  # stdout full (`> /dev/full`): its buffer cannot be written
        line, code = os_error_line(exc)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        os._exit(code)  # skip the interpreter's own flush of the same buffer
    if code == 130:
        # A KeyboardInterrupt that once escaped C-level code run during an import (a library
        # running Python through the C API) leaves CPython's "unhandled keyboard interrupt"
        # flag set, and the interpreter would then end itself by SIGINT (status -2) whatever
        # this function returns. The interrupted run has cleaned up; end with 130 now.
        sys.stderr.flush()
        os._exit(130)
    signal.signal(signal.SIGINT, _interrupted_exit)
    _exit_now(code)


def _exit_now(code: int) -> None:
    """End the process with ``code`` without tearing the interpreter down module by module.

    When the command returns, everything it wrote is closed (files are written atomically,
    inside context managers). What the interpreter would still do is run the ``atexit``
    handlers (logging's flush among them), which run here too, and then free thousands of
    modules (torch, transformers) one by one: 1.5 s after a run on smollm2-135m, measured, for
    nothing the user sees. Where a thread that is not a daemon is still alive (none of
    mechprobe's), the interpreter's own exit runs instead, since it waits for such threads.
    """
    import atexit
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        raise SystemExit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach the reader
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
