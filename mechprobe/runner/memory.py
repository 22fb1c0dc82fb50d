"""Peak memory of a step: the process's peak resident set size, reset before each step.

On Linux the kernel's high-water mark (``VmHWM``) is reset by writing ``5`` to
``/proc/self/clear_refs``, so each step's peak is its own. Elsewhere the process's lifetime peak
(``ru_maxrss``) is reported and marked as such.

Example:
    >>> reset_peak() in (True, False)
    True
    >>> peak_rss_mb(True)[0] > 0
    True
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def reset_peak() -> bool:
    """Reset the process's peak RSS counter; return whether that worked (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb(was_reset: bool) -> tuple[float, str]:
    """The peak resident set size in MB and what it covers.

    Args:
        was_reset: Whether `reset_peak` succeeded at the step's start.

    Returns:
        ``(megabytes, description)``: the peak since the reset, else the process's lifetime peak.
    """
    if was_reset:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "peak RSS since the step started"
        except OSError:
            pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    return mb, "process lifetime peak (ru_maxrss)"
