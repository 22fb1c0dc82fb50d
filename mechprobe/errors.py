"""The one exception type for user errors.

A `MechprobeError` is a problem with the user's input or environment (unknown model, layer out of
range, unreadable file, missing package). The CLI prints it as a single line
``mechprobe: error: <message>`` and exits with status 2; library callers can catch it.
"""

from __future__ import annotations


class MechprobeError(Exception):
    """A user-facing error: bad input or a missing resource, reported in one line.

    Example:
        >>> raise MechprobeError("layer 40 is out of range for gpt2 (0..11)")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: layer 40 is out of range for gpt2 (0..11)
    """


def check_index(name: str, value: int, size: int, what: str = "") -> int:
    """Validate an index into a range of ``size`` items, allowing negative indices.

    Args:
        name: The argument's name, used in the message (e.g. ``"layer"``).
        value: The index given by the user.
        size: How many items there are.
        what: Optional description of what is indexed (e.g. ``"gpt2's 12 layers"``).

    Returns:
        The non-negative index.

    Raises:
        MechprobeError: When the index is out of range.

    Example:
        >>> check_index("layer", -1, 12)
        11
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise MechprobeError(f"{name} must be an integer, got {value!r}")
    if not -size <= value < size:
        where = f" of {what}" if what else ""
        raise MechprobeError(f"{name} {value} is out of range{where} (valid: 0..{size - 1})")
    return value % size
