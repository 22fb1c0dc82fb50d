"""The exception types for user errors.

A `MechprobeError` is a problem with the user's input or environment (unknown model, layer out of
range, unreadable file, missing package). The CLI prints it as a single line
``mechprobe: error: <message>`` and exits with status 2; library callers can catch it.
A `ConfigError` carries several invalid settings at once, each tied to the setting's name, so
that the CLI can name every bad option in one line.
"""

from __future__ import annotations

from collections.abc import Iterable


class MechprobeError(Exception):
    """A user-facing error: bad input or a missing resource, reported in one line.

    Example:
        >>> raise MechprobeError("layer 40 is out of range for gpt2 (0..11)")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: layer 40 is out of range for gpt2 (0..11)
    """


class ConfigError(MechprobeError):
    """One or more invalid settings, each as ``(setting, message)``.

    The message of each problem is about the value (``"layer 40 is out of range (0..29)"``); the
    setting is the config field's name (``"layers"``), which the CLI turns into its flag.

    Example:
        >>> err = ConfigError([("alpha", "must be in (0, 1), got 2.0"), ("seed", "must be >= 0")])
        >>> str(err)
        'alpha: must be in (0, 1), got 2.0; seed: must be >= 0'
    """

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in self.problems))


class BadInputError(MechprobeError, ValueError):
    """Bad values given to a library function (a `MechprobeError`, and a ``ValueError`` too).

    Example:
        >>> isinstance(BadInputError("labels must be 0/1"), ValueError)
        True
    """
