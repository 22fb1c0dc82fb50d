"""Text sources and the selection of negation / affirmation target tokens.

Two jobs, both free of any model:

* :func:`load_text` resolves a text source (a local path, an ``http(s)`` URL or
  ``gutenberg:ID``), downloads it once into mechprobe's cache and returns the whole file as
  downloaded (Gutenberg header and licence included, line endings untouched).
* :func:`select_targets` applies the course's selection rule to a list of decoded token
  strings and :func:`make_windows` cuts the context windows around the targets.

Example:
    >>> src = load_text("gutenberg:32154")  # doctest: +SKIP
    >>> pieces = ["It", " is", " not", " here", " and", " can", " be"]
    >>> select_targets(pieces, pre=1, post=1).positions.tolist()
    [2, 5]
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mechprobe.errors import MechprobeError

__all__ = [
    "AFFIRMATION",
    "AFFIRMATION_WORDS",
    "DEFAULT_TEXT_SOURCE",
    "NEGATION",
    "NEGATION_WORDS",
    "TEXT_ENV",
    "Targets",
    "TextSource",
    "balance_targets",
    "classify_token",
    "decode_pieces",
    "first_per_class",
    "load_text",
    "make_windows",
    "resolve_source",
    "select_targets",
    "tokenize_text",
]

#: The course's text: Philip K. Dick, *The Variable Man* (Project Gutenberg eBook #32154).
DEFAULT_TEXT_SOURCE = "gutenberg:32154"
#: Environment variable naming a local text file used when no source is given.
TEXT_ENV = "MECHPROBE_TEXT"
#: Shipped fallback text (original prose) used when the default download fails.
FALLBACK_TEXT = "sample_negation.txt"
GUTENBERG_URL = "https://www.gutenberg.org/cache/epub/{id}/pg{id}.txt"

#: Label of an affirmation target.
AFFIRMATION = 0
#: Label of a negation target.
NEGATION = 1
#: Whole-token negations (besides any token containing ``'t`` or ``n't``).
NEGATION_WORDS = frozenset({"not", "cannot", "nor", "never"})
#: Affirmation (modal / assent) words.
AFFIRMATION_WORDS = frozenset(
    {
        "agree",
        "always",
        "allow",
        "can",
        "certainly",
        "could",
        "definitely",
        "may",
        "might",
        "shall",
        "should",
    }
)


# --------------------------------------------------------------------------------------
# text sources
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextSource:
    """A loaded text and where it came from.

    Attributes:
        text: The whole text (UTF-8 decoded with replacement, line endings as in the file).
        source: The source as asked for (``gutenberg:32154``, a URL or a path).
        origin: What was actually read: the local path, or the cached download's path, or
            ``mechprobe/data/sample_negation.txt`` after a fallback.
        sha256: Hex sha256 of the bytes the text was decoded from.
        fallback: Whether the built-in sample text replaced a failed default download.
    """

    text: str
    source: str
    origin: str
    sha256: str
    fallback: bool = False

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (everything but the text).

        Example:
            >>> TextSource("a", "x.txt", "/tmp/x.txt", "ab").describe()["sha256"]
            'ab'
        """
        return {
            "source": self.source,
            "origin": self.origin,
            "sha256": self.sha256,
            "fallback": self.fallback,
            "n_chars": len(self.text),
        }


def resolve_source(source: str) -> tuple[str, str | None]:
    """Classify a source: ``("url", url)`` for http(s) or ``gutenberg:ID``, else ``("path", None)``.

    Raises:
        MechprobeError: For a malformed ``gutenberg:`` id.

    Example:
        >>> resolve_source("gutenberg:32154")
        ('url', 'https://www.gutenberg.org/cache/epub/32154/pg32154.txt')
    """
    if source.lower().startswith("gutenberg:"):
        book = source.split(":", 1)[1].strip()
        if not book.isdigit():
            raise MechprobeError(f"bad text source {source!r}: expected gutenberg:<number>")
        return "url", GUTENBERG_URL.format(id=int(book))
    if re.match(r"^https?://", source, flags=re.IGNORECASE):
        return "url", source
    return "path", None


def _cache_file(url: str) -> Path:
    from mechprobe.models.cache import cache_dir

    name = Path(urllib.parse.urlparse(url).path).name or "download.txt"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return cache_dir("texts") / f"{digest}-{name}"


def _download(url: str, dest: Path, timeout: float) -> None:
    """Download ``url`` to ``dest`` atomically (raises OSError/ValueError on failure)."""
    from mechprobe.io import atomic_path

    request = urllib.request.Request(url, headers={"User-Agent": "mechprobe"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read()
    if not data:
        raise OSError("empty response")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def _from_bytes(data: bytes, source: str, origin: str, fallback: bool = False) -> TextSource:
    return TextSource(
        text=data.decode("utf-8", errors="replace"),
        source=source,
        origin=origin,
        sha256=hashlib.sha256(data).hexdigest(),
        fallback=fallback,
    )


def load_text(source: str | None = None, *, timeout: float = 30.0) -> TextSource:
    """Load a text source, downloading (once, cached) when it is a URL.

    Sources: a local path; an ``http(s)`` URL; ``gutenberg:ID`` (the Project Gutenberg plain
    text ``https://www.gutenberg.org/cache/epub/ID/pgID.txt``). With ``source=None`` the
    file named by ``$MECHPROBE_TEXT`` is used if that variable is set, else
    ``gutenberg:32154`` (*The Variable Man*). Downloads are cached in
    ``cache_dir("texts")`` and written atomically. The file is returned whole, as
    downloaded: nothing is stripped and CRLF line endings are kept.

    If the *default* source cannot be downloaded, a loud warning goes to stderr and the
    built-in sample text (original prose shipped with mechprobe) is used instead; the
    returned :class:`TextSource` says so (``fallback=True``).

    Args:
        source: Path, URL or ``gutenberg:ID``; ``None`` for ``$MECHPROBE_TEXT`` / default.
        timeout: Download timeout in seconds.

    Returns:
        A :class:`TextSource` with the text, its origin and sha256.

    Raises:
        MechprobeError: A missing/unreadable file or a failed non-default download.

    Example:
        >>> src = load_text("story.txt")  # doctest: +SKIP
        >>> src.sha256[:8], src.fallback  # doctest: +SKIP
        ('3f1c2a9e', False)
    """
    if source is None:
        env = os.environ.get(TEXT_ENV)
        source = env if env else DEFAULT_TEXT_SOURCE
    kind, url = resolve_source(source)
    if kind == "path":
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise MechprobeError(f"cannot read text file {source}: {why}") from exc
        return _from_bytes(data, source, str(path))

    assert url is not None
    dest = _cache_file(url)
    if not dest.is_file():
        try:
            _download(url, dest, timeout)
        except (OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            if source != DEFAULT_TEXT_SOURCE:
                raise MechprobeError(f"could not download {source} ({reason})") from exc
            from mechprobe.data import read_data_text

            sys.stderr.write(
                f"WARNING: could not download {source} ({reason}); falling back to the "
                f"built-in sample text {FALLBACK_TEXT} (original prose, NOT The Variable "
                "Man) -- results will differ from the course's\n"
            )
            data = read_data_text(FALLBACK_TEXT).encode("utf-8")
            return _from_bytes(data, source, f"mechprobe/data/{FALLBACK_TEXT}", fallback=True)
    return _from_bytes(dest.read_bytes(), source, str(dest))


# --------------------------------------------------------------------------------------
# tokens and the selection rule
# --------------------------------------------------------------------------------------


def tokenize_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of the whole text: no BOS or other special tokens, no length warning.

    Example:
        >>> tokenize_text(model.tokenizer, "It is not.")  # doctest: +SKIP
        [1026, 318, 407, 13]
    """
    try:
        enc = tokenizer(text, add_special_tokens=False, verbose=False)
    except TypeError:  # a tokenizer without the verbose flag
        enc = tokenizer(text, add_special_tokens=False)
    return list(enc["input_ids"])


def decode_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Decode every token on its own: ``[tokenizer.decode([i]) for i in ids]``.

    Example:
        >>> decode_pieces(model.tokenizer, [1026, 318, 407])  # doctest: +SKIP
        ['It', ' is', ' not']
    """
    return [tokenizer.decode([int(i)]) for i in ids]


def classify_token(piece: str, next_piece: str) -> int | None:
    """The course's rule for one candidate: ``NEGATION``, ``AFFIRMATION`` or ``None``.

    ``tok = piece.strip().lower()``. Negation: ``"'t" in tok`` or ``"n't" in tok`` or
    ``tok`` in {not, cannot, nor, never}. Affirmation: ``tok`` in {agree, always, allow,
    can, certainly, could, definitely, may, might, shall, should} and
    ``next_piece != " not"``. Both need ``next_piece`` to start with a space.

    Example:
        >>> classify_token(" not", " be"), classify_token(" can", " be")
        (1, 0)
        >>> classify_token(" can", " not"), classify_token("n't", ".")
        (None, None)
    """
    if not next_piece.startswith(" "):
        return None
    tok = piece.strip().lower()
    if "'t" in tok or "n't" in tok or tok in NEGATION_WORDS:
        return NEGATION
    if tok in AFFIRMATION_WORDS and next_piece != " not":
        return AFFIRMATION
    return None


@dataclass(frozen=True)
class Targets:
    """Target token positions and labels, in text order.

    Attributes:
        positions: Index of each target in the tokenized text (int64).
        labels: ``AFFIRMATION`` (0) or ``NEGATION`` (1) per target (int8).
    """

    positions: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def count(self, label: int) -> int:
        """How many targets carry ``label``.

        Example:
            >>> Targets(np.array([3, 5]), np.array([1, 0], dtype=np.int8)).count(NEGATION)
            1
        """
        return int((self.labels == label).sum())

    def take(self, index: np.ndarray) -> Targets:
        """The targets at ``index`` (an index array or boolean mask), order preserved."""
        return Targets(self.positions[index], self.labels[index])


def select_targets(pieces: Sequence[str], pre: int = 90, post: int = 10) -> Targets:
    """Apply :func:`classify_token` at every candidate ``ti`` in ``range(pre, n - post)``.

    Args:
        pieces: Decoded tokens of the whole text (``decode([id])`` each).
        pre: Tokens of context before a target (the window starts at ``ti - pre``).
        post: Tokens after a target (the window ends at ``ti + post``); at least 1, since
            the rule looks at the next token.

    Returns:
        Every match, in text order.

    Raises:
        MechprobeError: For ``pre < 0`` or ``post < 1``.

    Example:
        >>> select_targets(["a", " not", " b", " may", " c"], pre=1, post=1).labels.tolist()
        [1, 0]
    """
    if pre < 0:
        raise MechprobeError(f"context-pre must be >= 0, got {pre}")
    if post < 1:
        raise MechprobeError(
            f"context-post must be >= 1 (the rule reads the next token), got {post}"
        )
    positions: list[int] = []
    labels: list[int] = []
    for ti in range(pre, len(pieces) - post):
        label = classify_token(pieces[ti], pieces[ti + 1])
        if label is not None:
            positions.append(ti)
            labels.append(label)
    return Targets(np.asarray(positions, dtype=np.int64), np.asarray(labels, dtype=np.int8))


def first_per_class(targets: Targets, n: int) -> Targets:
    """Keep the first ``n`` targets of each class, in text order.

    Example:
        >>> t = Targets(np.arange(5), np.array([1, 1, 0, 1, 0], dtype=np.int8))
        >>> first_per_class(t, 1).positions.tolist()
        [0, 2]
    """
    if n < 1:
        raise MechprobeError(f"max-samples must be at least 1, got {n}")
    keep = np.zeros(len(targets), dtype=bool)
    for label in (AFFIRMATION, NEGATION):
        keep[np.flatnonzero(targets.labels == label)[:n]] = True
    return targets.take(keep)


def balance_targets(targets: Targets, seed: int = 0) -> Targets:
    """Subsample the larger class (without replacement, seeded) to the size of the smaller.

    The kept targets stay in text order.

    Example:
        >>> t = Targets(np.arange(5), np.array([1, 1, 0, 1, 0], dtype=np.int8))
        >>> balance_targets(t, seed=0).count(NEGATION)
        2
    """
    n = min(targets.count(AFFIRMATION), targets.count(NEGATION))
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(targets), dtype=bool)
    for label in (AFFIRMATION, NEGATION):
        idx = np.flatnonzero(targets.labels == label)
        keep[rng.choice(idx, size=n, replace=False) if len(idx) > n else idx] = True
    return targets.take(keep)


def make_windows(
    ids: Sequence[int], positions: np.ndarray, pre: int, post: int
) -> Int[Tensor, "batch pos"]:
    """Windows ``ids[ti - pre : ti + post + 1]`` around each target (target at index ``pre``).

    Example:
        >>> make_windows(list(range(10)), np.array([3]), pre=2, post=1).tolist()
        [[1, 2, 3, 4]]
    """
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.long)
    if pos.numel() and (int(pos.min()) < pre or int(pos.max()) + post >= ids_t.numel()):
        raise MechprobeError("a target's window runs past the text")
    offsets = torch.arange(-pre, post + 1)
    return ids_t[pos[:, None] + offsets[None, :]]
