"""Entry point of the ``mechprobe`` command: one line per user error, exit 130 on Ctrl-C.

Everything that can take time -- building the parser, importing a subcommand's libraries, the
work itself -- runs inside `main`'s handlers, so a user error is always the single line
``mechprobe: error: ...`` (exit 2) and Ctrl-C, at any moment, is ``mechprobe: interrupted``
(exit 130) with no traceback. `entry` also covers imports (a Ctrl-C while a module imports
ends the process at once: see `_on_interrupt`) and the interpreter's exit: a Ctrl-C while
libraries clean up ends the process at once with the same line and status. Results are written
atomically, so an interruption never leaves a half-written result.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

INTERRUPTED = "mechprobe: interrupted\n"


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
    except Exception as exc:
        if not _from_interrupt(exc):
            raise
        sys.stderr.write(INTERRUPTED)
        return 130


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
    try:
        code = main()
        sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        code = 130
    except BrokenPipeError:  # e.g. `mechprobe models | head -1`
        code = 0
        os._exit(code)
    if code == 130:
        # A KeyboardInterrupt that once escaped C-level code run during an import (a library
        # running Python through the C API) leaves CPython's "unhandled keyboard interrupt"
        # flag set, and the interpreter would then end itself by SIGINT (status -2) whatever
        # this function returns. The interrupted run has cleaned up; end with 130 now.
        sys.stderr.flush()
        os._exit(130)
    signal.signal(signal.SIGINT, _interrupted_exit)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
