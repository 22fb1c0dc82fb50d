"""Classes of target tokens defined by rules in a small TOML or JSON file.

A class file lists classes in order (labels 0, 1, ... in file order). Each class matches a token
(or a word, see :func:`word_spans`) when the stripped, lower-cased text is one of its ``words``,
or contains one of its ``contains`` strings, or fully matches its ``regex``; and when the token
that follows passes the optional conditions ``next_not`` (its raw text is none of these) and
``next_starts_with_space`` (it starts with ``" "``). The negation preset,
:func:`negation_preset`, is exactly the course's rule.

Example:
    >>> classes = negation_preset()
    >>> classes.names
    ('affirmation', 'negation')
    >>> classes.select(["It", " is", " not", " here", " and", " can", " be"], pre=1, post=1)
    Targets(positions=array([2, 5]), labels=array([1, 0], dtype=int8))
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mechprobe.corpus import bounded_regex
from mechprobe.corpus.targets import Targets
from mechprobe.errors import MechprobeError

#: Labels are int8, so a class set holds at most this many classes (labels 0..127).
MAX_CLASSES = 128
#: File name of the negation preset in ``mechprobe/data``.
NEGATION_PRESET = "classes_negation.toml"
#: Apostrophes that join the parts of a contraction into one word (``don`` + ``'t``).
APOSTROPHES = frozenset("'\u2019")

_KEYS = ("name", "words", "contains", "regex", "next_not", "next_starts_with_space")


@dataclass(frozen=True)
class ClassRule:
    """One class: which (stripped, lower-cased) tokens it matches and what may follow them.

    Attributes:
        name: The class's name.
        words: Exact matches (stored stripped and lower-cased).
        contains: Substrings, any of which makes a match (stored lower-cased).
        regex: A pattern the whole stripped, lower-cased token must match (``re.fullmatch``).
        next_not: Raw texts the next token must not be (compared exactly, case-sensitive).
        next_starts_with_space: When true, the next token must start with ``" "``.

    Example:
        >>> rule = ClassRule("past", regex=r"[a-z]+ed")
        >>> rule.matches(" Walked", " home"), rule.matches(" walk", " home")
        (True, False)
    """

    name: str
    words: frozenset[str] = frozenset()
    contains: tuple[str, ...] = ()
    regex: str | None = None
    next_not: tuple[str, ...] = ()
    next_starts_with_space: bool = False
    _pattern: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", frozenset(w.strip().lower() for w in self.words))
        object.__setattr__(self, "contains", tuple(c.lower() for c in self.contains))
        object.__setattr__(self, "next_not", tuple(self.next_not))
        try:
            pattern = None if self.regex is None else re.compile(self.regex)
        except re.error as exc:
            raise MechprobeError(f"class {self.name!r}: bad regex {self.regex!r}: {exc}") from None
        if pattern is not None:
            pattern = bounded_regex.compile_bounded(self.name, pattern)
        object.__setattr__(self, "_pattern", pattern)

    def matches_text(self, tok: str) -> bool:
        """Whether the stripped, lower-cased ``tok`` meets words / contains / regex.

        Raises:
            MechprobeError: The regex ran over its time bound on ``tok`` (the class named;
                `mechprobe.corpus.bounded_regex`).
        """
        if tok in self.words or any(c in tok for c in self.contains):
            return True
        return self._pattern is not None and bounded_regex.fullmatch(self.name, self._pattern, tok)

    def next_ok(self, next_piece: str) -> bool:
        """Whether the raw text of the following token meets the next-token conditions."""
        if self.next_starts_with_space and not next_piece.startswith(" "):
            return False
        return next_piece not in self.next_not

    def matches(self, piece: str, next_piece: str) -> bool:
        """Whether the token (or word) text ``piece``, followed by ``next_piece``, is this class."""
        return self.next_ok(next_piece) and self.matches_text(piece.strip().lower())


@dataclass(frozen=True)
class ClassSet:
    """Two or more classes in order; a class's label is its index.

    Attributes:
        classes: The rules, in label order.
        source: Where they came from (a path), for error messages.

    Raises:
        MechprobeError: Fewer than 2 or more than `MAX_CLASSES` classes, a repeated name, or a
            word listed in two classes (such a word would always match both).

    Example:
        >>> cs = ClassSet((ClassRule("a", words={"x"}), ClassRule("b", contains=("y",))))
        >>> cs.classify(" X", " z"), cs.classify(" xyz", ""), cs.classify(" w", " z")
        (0, 1, None)
    """

    classes: tuple[ClassRule, ...]
    source: str = "<classes>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        n = len(self.classes)
        if not 2 <= n <= MAX_CLASSES:
            raise MechprobeError(f"{self.source}: need 2 to {MAX_CLASSES} classes, got {n}")
        names: set[str] = set()
        seen: dict[str, str] = {}
        for rule in self.classes:
            if rule.name in names:
                raise MechprobeError(f"{self.source}: two classes are named {rule.name!r}")
            names.add(rule.name)
            for word in sorted(rule.words):
                if word in seen:
                    raise MechprobeError(
                        f"{self.source}: the word {word!r} is in both class {seen[word]!r} "
                        f"and class {rule.name!r}"
                    )
                seen[word] = rule.name

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        """The class names in label order."""
        return tuple(r.name for r in self.classes)

    def label(self, name: str) -> int:
        """The label of the class called ``name``.

        Example:
            >>> negation_preset().label("negation")
            1
        """
        if name not in self.names:
            raise MechprobeError(f"{self.source}: no class named {name!r}")
        return self.names.index(name)

    def _match(self, text: str, next_piece: str, where: str) -> int | None:
        tok = text.strip().lower()
        hits = [
            k for k, r in enumerate(self.classes) if r.next_ok(next_piece) and r.matches_text(tok)
        ]
        if len(hits) > 1:
            names = " and ".join(repr(self.classes[k].name) for k in hits)
            raise MechprobeError(f"{self.source}: {where} matches more than one class: {names}")
        return hits[0] if hits else None

    def classify(self, piece: str, next_piece: str) -> int | None:
        """The label of the token ``piece`` followed by ``next_piece``, or None.

        Raises:
            MechprobeError: The token matches two classes (both are named).
        """
        return self._match(piece, next_piece, f"token {piece!r}")

    def select(
        self,
        pieces: Sequence[str],
        pre: int = 90,
        post: int = 10,
        unit: str = "token",
        word_token: str = "first",
    ) -> Targets:
        """The targets of every class, in text order.

        With ``unit="token"`` the rules are applied at every ``ti`` in ``range(pre, n - post)``
        to ``pieces[ti]`` and ``pieces[ti + 1]``. With ``unit="word"`` the tokens are grouped
        into words (:func:`word_spans`); a word's rule text is its tokens joined, the next-token
        conditions read the token after its last token, and the target sits at the word's
        ``word_token`` (``"first"`` or ``"last"``) token, which must lie in
        ``range(pre, n - post)``; a word that ends the text is no candidate.

        Raises:
            MechprobeError: ``pre < 0``, ``post < 1``, an unknown ``unit`` or ``word_token``,
                or a token (word) matching two classes (both named, with its position).

        Example:
            >>> pieces = [" we", " don", "'t", " go", " and", " can", " stay", "."]
            >>> t = negation_preset().select(pieces, pre=0, post=1, unit="word")
            >>> t.positions.tolist(), t.labels.tolist()
            ([1, 5], [1, 0])
        """
        if pre < 0:
            raise MechprobeError(f"context-pre must be >= 0, got {pre}")
        if post < 1:
            raise MechprobeError(
                f"context-post must be >= 1 (the rules read the next token), got {post}"
            )
        if unit not in ("token", "word"):
            raise MechprobeError(f"unit must be 'token' or 'word', got {unit!r}")
        if word_token not in ("first", "last"):
            raise MechprobeError(f"word token must be 'first' or 'last', got {word_token!r}")
        n = len(pieces)
        spans = [(i, i) for i in range(n)] if unit == "token" else word_spans(pieces)
        positions: list[int] = []
        labels: list[int] = []
        for first, last in spans:
            ti = first if word_token == "first" else last
            if ti < pre or ti >= n - post or last + 1 >= n:
                continue
            text = "".join(pieces[first : last + 1])
            where = f"word {text!r} (tokens {first}..{last})" if unit == "word" else ""
            label = self._match(text, pieces[last + 1], where or f"token {ti} {text!r}")
            if label is not None:
                positions.append(ti)
                labels.append(label)
        return Targets(np.asarray(positions, dtype=np.int64), np.asarray(labels, dtype=np.int8))


def _continues(word: str, piece: str, next_piece: str) -> bool:
    if not word or not piece:
        return False
    a, b = word[-1], piece[0]
    if a.isalnum():
        if b in APOSTROPHES:  # "'t", or a lone "'" that the next token continues
            rest = piece[1:] or next_piece
            return bool(rest) and rest[0].isalnum()
        return b.isalnum()
    return a in APOSTROPHES and b.isalnum() and len(word) >= 2 and word[-2].isalnum()


def word_spans(pieces: Sequence[str]) -> list[tuple[int, int]]:
    r"""Group tokens into words: ``(first, last)`` token index of each, covering every token.

    A word is a run of letters and digits (``str.isalnum``) with apostrophes (``'`` or ``’``)
    inside it, the regex ``[^\W_]+(?:['’][^\W_]+)*``, as far as token boundaries allow. A token
    continues the word before it when the word so far ends in a letter or digit and the token
    starts with one, or with an apostrophe followed by one (in the token, ``" don" + "'t"``, or
    in the next token when the apostrophe is the whole token, ``" rock" + "'" + "n"``); or when
    the word so far ends in such an apostrophe and the token starts with a letter or digit.
    Every other token starts a new word: a token starting with whitespace or punctuation
    (underscores included, as in ``_italics_``), and an empty token. So whitespace and
    punctuation tokens are words of their own (``" not" + "."`` is two words; so is
    ``" no" + "'."``). Characters inside a token are never split; a token decoded to
    ``"\ufffd"`` (part of a multi-byte character) counts as punctuation.

    Example:
        >>> word_spans([" we", " don", "'t", " def", "initely", " go", "."])
        [(0, 0), (1, 2), (3, 4), (5, 5), (6, 6)]
    """
    spans: list[tuple[int, int]] = []
    word = ""
    for i, piece in enumerate(pieces):
        nxt = pieces[i + 1] if i + 1 < len(pieces) else ""
        if spans and _continues(word, piece, nxt):
            spans[-1] = (spans[-1][0], i)
            word += piece
        else:
            spans.append((i, i))
            word = piece
    return spans


def word_types(pieces: Sequence[str], positions: Sequence[int], unit: str = "token") -> list[str]:
    """The stripped, lower-cased text of the token (or whole word) at each position.

    Example:
        >>> pieces = [" We", " don", "'t", " go"]
        >>> word_types(pieces, [0, 2]), word_types(pieces, [0, 2], unit="word")
        (['we', "'t"], ['we', "don't"])
    """
    if unit == "token":
        return [pieces[int(p)].strip().lower() for p in positions]
    if unit != "word":
        raise MechprobeError(f"unit must be 'token' or 'word', got {unit!r}")
    owner = {t: (a, b) for a, b in word_spans(pieces) for t in range(a, b + 1)}
    spans = [owner[int(p)] for p in positions]
    return ["".join(pieces[a : b + 1]).strip().lower() for a, b in spans]


# ------------------------------------------------------------------------------ loading


def _str_list(value: Any, where: str, key: str, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MechprobeError(f"{where}: {key!r} must be a list of strings, got {value!r}")
    if not allow_empty and any(not v.strip() for v in value):
        raise MechprobeError(f"{where}: {key!r} holds an empty string")
    return tuple(value)


def _rule_from_dict(entry: Any, index: int, source: str) -> ClassRule:
    where = f"{source}: class {index + 1}"
    if not isinstance(entry, Mapping):
        raise MechprobeError(f"{where} is not a table / object: {entry!r}")
    name = entry.get("name")
    if name is None:
        raise MechprobeError(f"{where} has no name")
    if not isinstance(name, str) or not name.strip():
        raise MechprobeError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    where = f"{source}: class {name!r}"
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise MechprobeError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (expected {', '.join(_KEYS)})"
        )
    words = _str_list(entry.get("words", []), where, "words", allow_empty=False)
    contains = _str_list(entry.get("contains", []), where, "contains", allow_empty=False)
    next_not = _str_list(entry.get("next_not", []), where, "next_not", allow_empty=True)
    regex = entry.get("regex")
    if regex is not None and (not isinstance(regex, str) or not regex):
        raise MechprobeError(f"{where}: 'regex' must be a non-empty string, got {regex!r}")
    space = entry.get("next_starts_with_space", False)
    if not isinstance(space, bool):
        raise MechprobeError(f"{where}: 'next_starts_with_space' must be true or false")
    if not words and not contains and regex is None:
        raise MechprobeError(f"{where} has no 'words', 'contains' or 'regex' to match tokens")
    try:
        return ClassRule(name, frozenset(words), contains, regex, next_not, space)
    except MechprobeError as exc:
        raise MechprobeError(f"{source}: {exc}") from None


def classes_from_dict(data: Any, source: str = "<classes>") -> ClassSet:
    """Build a `ClassSet` from the parsed file: ``{"class": [{"name": ..., ...}, ...]}``.

    Raises:
        MechprobeError: One line naming ``source`` and the class: unknown keys, no name, a
            duplicate name, fewer than two classes, a class with no words / contains / regex, a
            bad regex, a value of the wrong type.

    Example:
        >>> classes_from_dict({"class": [{"name": "a", "words": ["x"]}, {"name": "b"}]})
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: <classes>: class 'b' has no 'words', 'contains' or ...
    """
    if not isinstance(data, Mapping):
        raise MechprobeError(f"{source}: expected a table / object with a 'class' list")
    unknown = sorted(set(data) - {"class"})
    if unknown:
        raise MechprobeError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))} "
            "(expected only 'class')"
        )
    entries = data.get("class")
    if not isinstance(entries, list):
        raise MechprobeError(f"{source}: no list of classes ('[[class]]' tables / 'class': [...])")
    rules = tuple(_rule_from_dict(e, i, source) for i, e in enumerate(entries))
    return ClassSet(rules, source)


def _parse(raw: str, fmt: str) -> Any:
    """``raw`` parsed as ``"TOML"`` or ``"JSON"``; a ValueError when it is not valid."""
    loads: Callable[[str], Any] = json.loads
    if fmt == "TOML":
        try:
            # new in Python 3.11, so missing where mypy checks (as Python 3.10)
            import tomllib  # type: ignore[import-not-found]

            loads = tomllib.loads
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli
            except ModuleNotFoundError:
                raise MechprobeError(
                    "reading TOML needs Python 3.11+ or the tomli package; or write JSON"
                ) from None
            loads = tomli.loads
    try:
        return loads(raw)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"not valid {fmt}: {exc}") from None


def load_classes(path: str | Path) -> ClassSet:
    """Read a class file: TOML (``.toml``) or JSON (``.json``); another suffix tries both.

    Example:
        >>> _ = Path("c.json").write_text(json.dumps({"class": [
        ...     {"name": "past", "regex": "[a-z]+ed"}, {"name": "modal", "words": ["can"]}]}))
        >>> load_classes("c.json").names
        ('past', 'modal')
    """
    from mechprobe.corpus.local import decode_text, read_local

    source = str(path)
    raw = decode_text(read_local(path, "classes file"), source, "classes file")
    suffix = Path(path).suffix.lower()
    problems = []
    for fmt in {".toml": ["TOML"], ".json": ["JSON"]}.get(suffix, ["JSON", "TOML"]):
        try:
            return classes_from_dict(_parse(raw, fmt), source)
        except ValueError as exc:
            problems.append(" ".join(str(exc).split()))
    raise MechprobeError(f"cannot parse classes file {source!r}: {'; '.join(problems)}")


def negation_preset() -> ClassSet:
    """The shipped ``classes_negation.toml``: exactly the course's rule (affirmation 0, negation 1).

    Example:
        >>> negation_preset().classify(" can", " not"), negation_preset().classify("'t", " go")
        (None, 1)
    """
    from mechprobe.data import read_data_text

    return classes_from_dict(_parse(read_data_text(NEGATION_PRESET), "TOML"), NEGATION_PRESET)
