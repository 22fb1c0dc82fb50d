"""Parse and validate settings: layers, heads, units, positions, seeds and numbers, in one place.

Two kinds of function live here. ``parse_*`` turn the text a user typed into a value and raise
`MechprobeError` when the text has the wrong form. ``check_*`` validate a value, against a model's
shape where one is involved, and return it normalised. Messages are about values ("layer 40 is out
of range (0..29)"), never about command-line flags: `Problems` collects them per setting, and the
CLI names the flag. Indices (layers, heads, units, positions) count from 0 and are never negative.

Example:
    >>> problems = Problems()
    >>> layer = problems.check("layer", check_index, 40, 30, "layer")
    >>> seed = problems.check("seed", check_seed, 7)
    >>> layer, seed
    (None, 7)
    >>> problems.raise_if_any()
    Traceback (most recent call last):
    ...
    mechprobe.errors.ConfigError: layer: layer 40 is out of range (0..29)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from mechprobe.errors import ConfigError, MechprobeError

T = TypeVar("T")
#: Seeds are unsigned 32-bit integers (what numpy's and torch's generators accept everywhere).
SEED_LIMIT = 2**32
#: The course's models are 12-layer GPT-2; its layer choices are mapped to other depths.
COURSE_N_LAYERS = 12


class Problems:
    """Collect invalid settings, then raise them all at once as one `ConfigError`.

    Example:
        >>> p = Problems()
        >>> p.check("alpha", check_number, 2.0, low=0, high=1, inclusive=False)
        >>> p.names()
        ['alpha']
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, name: str, message: str) -> None:
        """Record one problem with setting ``name``."""
        self.items.append((name, message))

    def check(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``fn(*args, **kwargs)``; on a `MechprobeError` record it and return None."""
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            self.items += [(name if n == "value" else n, m) for n, m in exc.problems]
        except MechprobeError as exc:
            self.add(name, str(exc))
        return None

    def names(self) -> list[str]:
        """The settings with a problem, in order."""
        return list(dict.fromkeys(n for n, _ in self.items))

    def raise_if_any(self) -> None:
        """Raise a `ConfigError` holding every problem recorded, if there is one."""
        if self.items:
            raise ConfigError(self.items)


# ------------------------------------------------------------------------------ parsing text


def parse_int(text: str | int) -> int:
    """An integer from text (``"12"``) or an int; floats and booleans are refused.

    Example:
        >>> parse_int(" 12 ")
        12
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise MechprobeError(f"expected an integer, got {text!r}")
    if isinstance(text, int):
        return text
    try:
        return int(text.strip())
    except ValueError:
        raise MechprobeError(f"expected an integer, got {text!r}") from None


def parse_float(text: str | float) -> float:
    """A float from text or a number (``"1e-4"``, ``"inf"`` and ``"nan"`` parse; check later).

    Example:
        >>> parse_float("1e-4")
        0.0001
    """
    if isinstance(text, bool):
        raise MechprobeError(f"expected a number, got {text!r}")
    try:
        return float(text)
    except (TypeError, ValueError):
        raise MechprobeError(f"expected a number, got {text!r}") from None


def parse_list(text: str, item: Callable[[str], T]) -> tuple[T, ...]:
    """A comma-separated list, each item parsed by ``item``; an empty list is an error.

    Example:
        >>> parse_list("0.1, 10", parse_float)
        (0.1, 10.0)
    """
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise MechprobeError("is empty: give at least one value")
    return tuple(item(p) for p in parts)


def parse_layers(text: str) -> tuple[int, ...] | None:
    """``"all"`` -> None (every layer); ``"0,3,5"`` -> ``(0, 3, 5)``.

    Example:
        >>> parse_layers("all"), parse_layers("0, 3,5")
        (None, (0, 3, 5))
    """
    if str(text).strip().lower() == "all":
        return None
    try:
        return parse_list(text, parse_int)
    except MechprobeError:
        raise MechprobeError(f"expected 'all' or integers like 0,3,5, got {text!r}") from None


def parse_choices(text: str, choices: Sequence[str]) -> tuple[str, ...]:
    """A comma list of names from ``choices`` (lower-cased, duplicates dropped, order kept).

    Example:
        >>> parse_choices("mlp,QKV", ("qkv", "mlp"))
        ('mlp', 'qkv')
    """
    items = tuple(dict.fromkeys(p.strip().lower() for p in str(text).split(",") if p.strip()))
    bad = [i for i in items if i not in choices]
    if bad or not items:
        raise MechprobeError(f"expected a comma list of {', '.join(choices)}; got {text!r}")
    return items


def parse_units(text: str) -> slice | tuple[int, ...]:
    """A unit selection: a Python slice (``"::2"``, ``"10:20"``) or a comma list (``"1,5"``).

    Example:
        >>> parse_units("::2"), parse_units("3,7")
        (slice(None, None, 2), (3, 7))
    """
    text = str(text).strip()
    form = f"{text!r} is not a slice like '::2' or '10:20' or a comma list like '1,5,9'"
    if ":" not in text:
        try:
            return parse_list(text, parse_int)
        except MechprobeError:
            raise MechprobeError(form) from None
    parts = text.split(":")
    try:
        if len(parts) > 3:
            raise ValueError
        fields = [int(p) if p.strip() else None for p in parts] + [None] * (3 - len(parts))
    except ValueError:
        raise MechprobeError(form) from None
    if fields[2] is not None and fields[2] <= 0:
        raise MechprobeError(f"{text!r}: the slice step must be positive")
    if any(f is not None and f < 0 for f in fields[:2]):
        raise MechprobeError(f"{text!r}: slice bounds count from 0 and are never negative")
    return slice(*fields)


# ------------------------------------------------------------------------------ checking values


def check_index(value: int, size: int, what: str = "index") -> int:
    """A 0-based index below ``size``; negative indices are refused.

    Example:
        >>> check_index(3, 12, "layer")
        3
    """
    value = parse_int(value)
    if not 0 <= value < size:
        valid = f"0..{size - 1}" if size > 0 else "none"
        raise MechprobeError(f"{what} {value} is out of range ({valid})")
    return value


def check_indices(values: Iterable[int] | None, size: int, what: str = "layer") -> list[int]:
    """Sorted distinct indices below ``size``; None means all of them.

    Example:
        >>> check_indices([5, 0, 5], 12)
        [0, 5]
        >>> check_indices(None, 3)
        [0, 1, 2]
    """
    if values is None:
        return list(range(size))
    values = list(values)
    if not values:
        raise MechprobeError(f"no {what} selected")
    return sorted({check_index(v, size, what) for v in values})


def check_seed(value: int) -> int:
    """A seed in ``[0, 2**32)``.

    Example:
        >>> check_seed(0)
        0
    """
    value = parse_int(value)
    if not 0 <= value < SEED_LIMIT:
        raise MechprobeError(f"seed {value} is outside [0, 2**32)")
    return value


def check_number(
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    inclusive: bool = True,
    what: str = "value",
) -> float:
    """A finite float, optionally within ``[low, high]`` (or the open interval).

    Example:
        >>> check_number(0.05, low=0, high=1, inclusive=False)
        0.05
    """
    value = parse_float(value)
    if not math.isfinite(value):
        raise MechprobeError(f"{what} must be a finite number, got {value!r}")
    lo_bad = low is not None and (value < low if inclusive else value <= low)
    hi_bad = high is not None and (value > high if inclusive else value >= high)
    if lo_bad or hi_bad:
        left, right = ("[", "]") if inclusive else ("(", ")")
        span = f"{left}{'-inf' if low is None else f'{low:g}'}, "
        span += f"{'inf' if high is None else f'{high:g}'}{right}"
        raise MechprobeError(f"{what} must be in {span}, got {value:g}")
    return value


def check_count(value: int, low: int = 1, what: str = "value") -> int:
    """An integer of at least ``low``.

    Example:
        >>> check_count(32)
        32
    """
    value = parse_int(value)
    if value < low:
        raise MechprobeError(f"{what} must be at least {low}, got {value}")
    return value


def check_tolerance(value: float) -> float:
    """A comparison tolerance: finite and >= 0 (``inf`` would pass everything, NaN nothing).

    Example:
        >>> check_tolerance(1e-4)
        0.0001
    """
    return check_number(value, low=0.0, what="tolerance")


def resolve_units(units: slice | Sequence[int], width: int, what: str = "unit") -> list[int]:
    """A slice or index list as sorted distinct indices below ``width``; empty is an error.

    Example:
        >>> resolve_units(slice(None, None, 2), 6)
        [0, 2, 4]
    """
    if isinstance(units, slice):
        idx = list(range(width)[units])
    elif isinstance(units, int | str):
        raise MechprobeError(f"{what}s must be a slice or a list of indices, got {units!r}")
    else:
        idx = sorted({check_index(u, width, what) for u in units})
    if not idx:
        raise MechprobeError(f"{units!r} selects no {what} (there are {width})")
    return idx


def resolve_positions(positions: int | Sequence[int] | None, n_pos: int) -> list[int]:
    """None (every position), an int or a list as sorted distinct positions below ``n_pos``.

    Example:
        >>> resolve_positions(4, 11), resolve_positions(None, 3)
        ([4], [0, 1, 2])
    """
    if positions is None:
        return list(range(n_pos))
    if isinstance(positions, int):
        positions = [positions]
    return resolve_units(list(positions), n_pos, "position")


def relative_layer(course_layer: int, n_layers: int, course_n_layers: int = COURSE_N_LAYERS) -> int:
    """Map a layer of the course's 12-layer GPT-2 to the same relative depth in another model.

    Relative depth is ``layer / (n_layers - 1)``, so the first and last layers map to the first
    and last layers, and a 12-layer model keeps the course's layer.

    Example:
        >>> relative_layer(6, 12), relative_layer(6, 30), relative_layer(8, 2)
        (6, 16, 1)
    """
    if n_layers <= 1:
        return 0
    depth = course_layer / (course_n_layers - 1)
    return min(n_layers - 1, max(0, round(depth * (n_layers - 1))))


def check_context(n_tokens: int, n_ctx: int, what: str = "the text") -> int:
    """A token count that fits the model's context window (and is not zero).

    Example:
        >>> check_context(101, 1024)
        101
    """
    if n_tokens < 1:
        raise MechprobeError(f"{what} is empty (no tokens)")
    if n_tokens > n_ctx:
        raise MechprobeError(
            f"{what} has {n_tokens:,} tokens, more than the model's context of {n_ctx:,}"
        )
    return n_tokens


#: KDE bandwidth rules scipy's ``gaussian_kde`` knows.
BANDWIDTH_RULES = ("scott", "silverman")


def check_bandwidth(bandwidth: float | str | None) -> float | str:
    """A KDE bandwidth: ``"scott"`` (None), ``"silverman"`` or a positive factor.

    The factor multiplies the data's standard deviation; its square must stay a normal float64
    (about 1.5e-154 to 1.3e154), else the kernel's covariance underflows or overflows and no
    density is finite.

    Example:
        >>> check_bandwidth(None), check_bandwidth("0.2"), check_bandwidth("Silverman")
        ('scott', 0.2, 'silverman')
    """
    if bandwidth is None:
        return "scott"
    if isinstance(bandwidth, str) and bandwidth.strip().lower() in BANDWIDTH_RULES:
        return bandwidth.strip().lower()
    try:
        factor = parse_float(bandwidth)
    except MechprobeError:
        raise MechprobeError(
            f"expected a positive number, 'scott' or 'silverman', got {bandwidth!r}"
        ) from None
    if not (math.isfinite(factor) and factor > 0):
        raise MechprobeError(f"bandwidth must be a positive finite number, got {factor!r}")
    square = factor * factor
    if not (math.isfinite(square) and square >= 2.2250738585072014e-308):
        raise MechprobeError(
            f"bandwidth {factor:g} gives no finite density (its square is outside float64's "
            "normal range); use a factor near 1, 'scott' or 'silverman'"
        )
    return factor


def fit_context(ids: Sequence[int], n_ctx: int, truncate: bool, what: str = "the text") -> list:
    """Token ids that fit the context: too long is an error, or cut to ``n_ctx`` with ``truncate``.

    Example:
        >>> fit_context([1, 2, 3], 2, truncate=True)
        [1, 2]
        >>> fit_context([1, 2, 3], 2, truncate=False)
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: the text has 3 tokens, ... (truncate keeps the first 2)
    """
    ids = list(ids)
    if truncate and len(ids) > n_ctx:
        return ids[:n_ctx]
    try:
        check_context(len(ids), n_ctx, what)
    except MechprobeError as exc:
        if len(ids) > n_ctx:
            raise MechprobeError(f"{exc} (truncate keeps the first {n_ctx:,})") from None
        raise
    return ids
