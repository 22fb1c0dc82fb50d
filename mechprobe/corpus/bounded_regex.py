"""Class regexes with a time bound: a catastrophic pattern is one line naming its class.

A class file's ``regex`` is checked with ``re`` (its error messages), then compiled with the
``regex`` package (a dependency of transformers; its ``V0`` mode matches as ``re`` does), whose
matches take a timeout. At load time the pattern is tried on a few adversarial words
(`check_backtracking`); every match then runs with `REGEX_TIMEOUT_S`. Without the ``regex``
package the pattern runs on ``re``, unbounded.

Example:
    >>> compile_bounded("greedy", re.compile("(a|aa)+z"))
    Traceback (most recent call last):
    ...
    mechprobe.errors.MechprobeError: class 'greedy': the regex '(a|aa)+z' backtracks ...
    >>> fullmatch("past", compile_bounded("past", re.compile("[a-z]+ed")), "walked")
    True
"""

from __future__ import annotations

import re
from typing import Any

from mechprobe.errors import MechprobeError

__all__ = ["REGEX_CHECK_S", "REGEX_TIMEOUT_S", "check_backtracking", "compile_bounded", "fullmatch"]

#: Longest time one regex match may take (the ``regex`` package's timeout), in seconds.
REGEX_TIMEOUT_S = 1.0
#: Time a regex may take on each adversarial word at load time (`check_backtracking`).
REGEX_CHECK_S = 0.25
_HINT = "simplify it (e.g. no nested quantifiers)"


def compile_bounded(name: str, pattern: re.Pattern[str]) -> Any:
    """``pattern`` compiled by the ``regex`` package, checked (`check_backtracking`).

    Raises:
        MechprobeError: The pattern backtracks catastrophically on a short word.
    """
    try:
        import regex
    except ImportError:  # pragma: no cover - transformers depends on it
        return pattern
    try:
        bounded = regex.compile(pattern.pattern, flags=regex.V0)
    except regex.error:  # pragma: no cover - valid for re, so valid for regex V0
        return pattern
    check_backtracking(name, bounded)
    return bounded


def _match(pattern: Any, text: str, timeout: float) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(text) is not None
    return pattern.fullmatch(text, timeout=timeout) is not None


def fullmatch(name: str, pattern: Any, text: str) -> bool:
    """Whether ``pattern`` matches all of ``text``, within `REGEX_TIMEOUT_S`.

    Raises:
        MechprobeError: The match ran over the bound (the class ``name`` and the text named).
    """
    try:
        return _match(pattern, text, REGEX_TIMEOUT_S)
    except TimeoutError:
        raise MechprobeError(
            f"class {name!r}: the regex {pattern.pattern!r} ran over {REGEX_TIMEOUT_S:g} s on a "
            f"{len(text)}-character text {text[:24]!r}...: catastrophic backtracking; {_HINT}"
        ) from None


def check_backtracking(name: str, pattern: Any) -> None:
    """Refuse a pattern that backtracks catastrophically on a short word.

    Each of a few adversarial words (36 repeats of one character then ``!``; the characters
    are the pattern's own letters and digits, then ``a``, ``e``, ``0`` and a space) must be
    matched within `REGEX_CHECK_S`; a pattern such as ``(a|aa)+z`` is not.
    """
    source = pattern.pattern
    chars = dict.fromkeys([*(c.lower() for c in source if c.isalnum()), "a", "e", "0", " "])
    for char in list(chars)[:12]:
        text = char * 36 + "!"
        try:
            _match(pattern, text, REGEX_CHECK_S)
        except TimeoutError:
            raise MechprobeError(
                f"class {name!r}: the regex {source!r} backtracks catastrophically (over "
                f"{REGEX_CHECK_S:g} s on {text!r}); {_HINT}"
            ) from None
