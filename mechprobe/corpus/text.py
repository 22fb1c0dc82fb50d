"""Text sources: a local path, an ``http(s)`` URL or ``gutenberg:ID``, loaded whole.

:func:`load_text` resolves a source, downloads it once into mechprobe's cache
(`mechprobe.corpus.download`) and returns the whole file as downloaded (Gutenberg header and
licence included, line endings untouched), with its sha256.

Example:
    >>> path = Path("story.txt")
    >>> _ = path.write_text("It is not here.", encoding="utf-8")
    >>> src = load_text("story.txt")
    >>> src.sha256[:12], src.fallback
    ('b7fd0df58e7c', False)
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechprobe.corpus.download import DEFAULT_MAX_BYTES, cached_download
from mechprobe.errors import MechprobeError

#: The course's text: Philip K. Dick, *The Variable Man* (Project Gutenberg eBook #32154).
DEFAULT_TEXT_SOURCE = "gutenberg:32154"
#: Environment variable naming a local text file used when no source is given.
TEXT_ENV = "MECHPROBE_TEXT"
#: Default downloads that failed in this process: the fallback is used again without another
#: try or warning, so that one run warns once.
_FELL_BACK: set[str] = set()
#: Shipped fallback text (original prose) used when the default download fails.
FALLBACK_TEXT = "sample_negation.txt"
GUTENBERG_URL = "https://www.gutenberg.org/cache/epub/{id}/pg{id}.txt"


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


def text_source(text: str, source: str = "inline") -> TextSource:
    """A `TextSource` for a text given directly (a sentence typed on the command line).

    Example:
        >>> text_source("Hello").sha256[:12]
        '185f8db32271'
    """
    return _from_bytes(text.encode("utf-8"), source, source)


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
    if re.match(r"^[a-z][a-z0-9+.-]*://", source, flags=re.IGNORECASE):
        if not re.match(r"^https?://", source, flags=re.IGNORECASE):
            raise MechprobeError(f"unsupported text source {source!r}: only http(s) URLs")
        return "url", source
    return "path", None


def _from_bytes(data: bytes, source: str, origin: str, fallback: bool = False) -> TextSource:
    from mechprobe.corpus.local import decode_text

    return TextSource(
        text=decode_text(data, source, "text file", errors="replace"),
        source=source,
        origin=origin,
        sha256=hashlib.sha256(data).hexdigest(),
        fallback=fallback,
    )


def load_text(
    source: str | None = None, *, timeout: float = 30.0, max_bytes: int = DEFAULT_MAX_BYTES
) -> TextSource:
    """Load a text source, downloading (once, cached) when it is a URL.

    Sources: a local path; an ``http(s)`` URL; ``gutenberg:ID`` (the Project Gutenberg plain
    text ``https://www.gutenberg.org/cache/epub/ID/pgID.txt``). With ``source=None`` the
    file named by ``$MECHPROBE_TEXT`` is used if that variable is set, else
    ``gutenberg:32154`` (*The Variable Man*). Downloads are cached in
    ``cache_dir("texts")`` and written atomically. The file is returned whole, as
    downloaded: nothing is stripped and CRLF line endings are kept. UTF-16 and UTF-32 (a BOM,
    or UTF-16's zero bytes) are decoded; a binary file or a device is refused in one line
    (`mechprobe.corpus.local`).

    If no source was given (``source=None``, no ``$MECHPROBE_TEXT``) and the default cannot be
    downloaded, a loud warning goes to stderr and the built-in sample text (original prose
    shipped with mechprobe) is used instead; the returned :class:`TextSource` says so
    (``fallback=True``). A source given explicitly, ``gutenberg:32154`` included, never falls
    back: its failure is an error.

    Args:
        source: Path, URL or ``gutenberg:ID``; ``None`` for ``$MECHPROBE_TEXT`` / default.
        timeout: Deadline in seconds for the whole download (redirects included).
        max_bytes: Largest download or local file accepted, enforced while reading (default
            32 MiB; `mechprobe.corpus.local.input_cap`).

    Returns:
        A :class:`TextSource` with the text, its origin and sha256.

    Raises:
        MechprobeError: A missing, unreadable, binary or oversized file, or a failed
            non-default download.

    Example:
        >>> _ = Path("story.txt").write_text("It can not be.", encoding="utf-8")
        >>> load_text("story.txt").text
        'It can not be.'
    """
    may_fall_back = source is None and not os.environ.get(TEXT_ENV)
    if source is None:
        source = os.environ.get(TEXT_ENV) or DEFAULT_TEXT_SOURCE
    if not source.strip():
        raise MechprobeError("the text source is empty: give a path, a URL or gutenberg:ID")
    kind, url = resolve_source(source)
    if kind == "path":
        from mechprobe.corpus.local import read_local

        path = Path(source).expanduser()
        return _from_bytes(read_local(path, "text file", max_bytes), source, str(path))

    assert url is not None
    if may_fall_back and url in _FELL_BACK:  # warned once; not tried again this run
        return _fallback(source)
    try:
        dest = cached_download(url, timeout=timeout, max_bytes=max_bytes)
    except MechprobeError as exc:
        if not may_fall_back:
            raise
        _FELL_BACK.add(url)
        sys.stderr.write(
            f"WARNING: {exc}; falling back to the built-in sample text {FALLBACK_TEXT} "
            "(original prose, NOT The Variable Man) -- results will differ from the course's\n"
        )
        return _fallback(source)
    return _from_bytes(dest.read_bytes(), source, str(dest))


def _fallback(source: str) -> TextSource:
    """The built-in sample text, standing in for the default ``source``."""
    from mechprobe.data import read_data_text

    data = read_data_text(FALLBACK_TEXT).encode("utf-8")
    return _from_bytes(data, source, f"mechprobe/data/{FALLBACK_TEXT}", fallback=True)
