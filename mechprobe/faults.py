"""Failpoints: named places where a test can make the process die, to prove crash safety.

A test sets ``MECHPROBE_FAILPOINT=<name>`` (a comma list works too) and runs a command in a
subprocess; when the run reaches `failpoint` with that name, the process SIGKILLs itself, as a
power cut or the OOM killer would. With the variable unset this costs one dictionary lookup.
The runner's points are ``<step>:computed`` (results in memory, nothing written),
``<step>:written`` (the step's temporary directory complete, not yet swapped in) and
``<step>:swapping`` (the old directory set aside, the new one not yet in place).

Example:
    >>> failpoint("negation:written")  # no-op unless MECHPROBE_FAILPOINT names it
"""

from __future__ import annotations

import os
import signal

ENV = "MECHPROBE_FAILPOINT"
#: A file path: `failpoint_once` fires only if it can still create this file.
ONCE_ENV = "MECHPROBE_FAILPOINT_ONCE"


def failpoint(name: str) -> None:
    """SIGKILL this process if ``$MECHPROBE_FAILPOINT`` names ``name``."""
    wanted = os.environ.get(ENV)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def failpoint_once(name: str) -> None:
    """`failpoint`, firing only the first time across processes.

    Fires when ``$MECHPROBE_FAILPOINT`` names ``name`` and the file ``$MECHPROBE_FAILPOINT_ONCE``
    can still be created (crash tests: a Dask worker dies once; its retried task then runs).
    """
    marker = os.environ.get(ONCE_ENV)
    if not marker or name not in os.environ.get(ENV, "").split(","):
        return
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return
    failpoint(name)
