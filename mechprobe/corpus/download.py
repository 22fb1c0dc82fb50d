"""Bounded downloads of plain texts into mechprobe's cache, written atomically.

:func:`cached_download` fetches an ``http(s)`` URL once and keeps it in
``cache_dir("texts")``. A download is bounded in every direction:

* **http(s) only**, redirects included (at most :data:`MAX_REDIRECTS`); a redirect from https
  to plain http is refused (a text fetched over TLS is not silently fetched in the clear).
* **One deadline** (``timeout`` seconds) for the whole download: name lookup, connection,
  redirects, headers and body together, however slowly the server sends.
* **A size cap** (``max_bytes``, :data:`DEFAULT_MAX_BYTES` by default), enforced while
  reading: a larger ``Content-Length`` is refused before the body, a body without one is
  refused as soon as it passes the cap.
* **A whole body**: a body shorter than its ``Content-Length`` (or a chunked body cut short)
  is an error.
* **Text only**: an HTML page or a binary file is refused with a hint.
* **Atomic cache**: the file appears whole or not at all; nothing is cached after a failure.

Every failure is a :class:`~mechprobe.errors.MechprobeError` with a one-line message
``could not download <url>: <why>``.

Example:
    >>> cached_download("https://www.gutenberg.org/cache/epub/32154/pg32154.txt")  # doctest: +SKIP
    PosixPath('/root/.cache/mechprobe/texts/...-pg32154.txt')
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mechprobe.corpus.transport import (
    MAX_REDIRECTS,
    Deadline,
    Failure,
    check_redirect,
    one_line,
    opener,
)
from mechprobe.errors import MechprobeError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_REDIRECTS",
    "cache_file",
    "cached_download",
    "check_redirect",
]

#: Largest download accepted by default (32 MiB; *The Variable Man* is about 0.1 MiB).
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
#: Default deadline in seconds for a whole download (lookup, connection, redirects, body).
DEFAULT_TIMEOUT = 30.0

_BLOCK = 64 * 1024
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_BINARY_MAJOR_TYPES = frozenset({"image", "audio", "video", "font", "model", "multipart"})
_BINARY_TYPES = frozenset(
    {
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/epub+zip",
        "application/x-mobipocket-ebook",
        "application/msword",
    }
)
#: C0 controls other than tab, newline, vertical tab, form feed and carriage return, and DEL.
_CONTROL_BYTES = bytes([*range(0, 9), *range(14, 32), 127])
_HTML_START = re.compile(
    rb"^(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*"
    rb"<(?:!doctype\s+html|html|head|body)\b",
    re.IGNORECASE | re.DOTALL,
)
_HTML_HINT = (
    "hint: give the URL of the plain-text file itself (for a Project Gutenberg book, gutenberg:ID)"
)
_BINARY_HINT = "hint: mechprobe reads plain UTF-8 text; give the URL of a .txt file"


def cache_file(url: str) -> Path:
    """The cache path of a download: ``texts/<sha256(url)[:12]>-<file name>``.

    Example:
        >>> cache_file("https://example.org/a b.txt").name
        '4a9f2866427a-a_b.txt'
    """
    from mechprobe.models.cache import cache_dir

    name = Path(urllib.parse.urlparse(url).path).name or "download.txt"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return cache_dir("texts") / f"{digest}-{name}"


def _size(n: int) -> str:
    """A byte count for a message: ``256 KiB``, ``32.0 MiB``."""
    return f"{n / 2**10:.0f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------- text or not


def _check_content_type(headers: Any) -> None:
    """Refuse, before the body, a response whose headers say it is HTML, binary or compressed.

    Raises:
        Failure: An HTML or binary content type, or a compressed body.
    """
    encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Failure(f"the server sent a {one_line(encoding, 40)}-compressed body; {_BINARY_HINT}")
    if headers.get("Content-Type") is None:
        return
    ctype = headers.get_content_type()
    if ctype in _HTML_TYPES:
        raise Failure(f"it is an HTML page ({ctype}), not a plain text; {_HTML_HINT}")
    if ctype.split("/", 1)[0] in _BINARY_MAJOR_TYPES or ctype in _BINARY_TYPES:
        raise Failure(f"it is a binary file ({one_line(ctype, 80)}), not a text; {_BINARY_HINT}")


def _check_text(data: bytes) -> None:
    r"""Refuse a body that is empty, an HTML page or binary (NUL bytes or >1% control bytes).

    Raises:
        Failure: What the body is instead of a plain text.

    Example:
        >>> _check_text(b"It is not here.\r\n")
        >>> _check_text(b"<!DOCTYPE html><html><body>It is not here.</body></html>")
        Traceback (most recent call last):
        ...
        mechprobe.corpus.transport.Failure: it is an HTML page, not a plain text; hint: ...
    """
    if not data:
        raise Failure("the server sent an empty body")
    if _HTML_START.match(data[:4096]):
        raise Failure(f"it is an HTML page, not a plain text; {_HTML_HINT}")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise Failure(f"it is UTF-16 text; {_BINARY_HINT}")
    n_control = len(data) - len(data.translate(None, _CONTROL_BYTES))
    if b"\x00" in data or n_control > 0.01 * len(data):
        raise Failure(f"it is a binary file (control bytes), not a text; {_BINARY_HINT}")


# ---------------------------------------------------------------- one bounded fetch


def _fetch(url: str, deadline: Deadline, max_bytes: int) -> bytes:
    """Download the body of ``url`` (runs in the worker thread; bounded by ``max_bytes``).

    Raises:
        Failure: Refused (size, type, short body, redirect).
        OSError, http.client.HTTPException, ValueError: Network and protocol failures.
    """
    response = opener(deadline).open(url, timeout=deadline.left())
    with response:
        _check_content_type(response.headers)
        declared = response.length  # None without Content-Length (or when chunked)
        if declared is not None and declared > max_bytes:
            raise Failure(
                f"the body is {_size(declared)} ({declared} bytes, per its Content-Length), "
                f"over the {_size(max_bytes)} download limit; raise the limit to download it"
            )
        body = bytearray()
        try:
            while block := response.read(min(_BLOCK, max_bytes + 1 - len(body))):
                body += block
                if len(body) > max_bytes:
                    raise Failure(
                        f"the body is over the {_size(max_bytes)} download limit (stopped "
                        "reading there); raise the limit to download it"
                    )
        except http.client.IncompleteRead as exc:  # a chunked body cut short
            got = len(body) + len(exc.partial)
            if isinstance(exc.__cause__, http.client.IncompleteRead):
                got += len(exc.__cause__.partial)
            raise Failure(
                f"the body was cut short ({got} bytes, then the connection ended)"
            ) from None
        if declared is not None and len(body) < declared:
            raise Failure(f"the body was cut short ({len(body)} of {declared} bytes)")
    return bytes(body)


def _reason(exc: BaseException, deadline: Deadline) -> str:
    """One line saying why a fetch failed."""
    if isinstance(exc, Failure):
        return one_line(str(exc), 400)
    if isinstance(exc, urllib.error.HTTPError):
        return f"the server answered HTTP {exc.code} {one_line(str(exc.reason), 80)}"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, TimeoutError):  # socket.timeout too
        return f"no complete answer within the {deadline.timeout:g} s deadline"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({one_line(exc.strerror or str(exc), 80)})"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the body was cut short ({len(exc.partial)} bytes, then the connection ended)"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(exc, ConnectionError | http.client.RemoteDisconnected):
        return f"the connection was closed or reset ({type(exc).__name__})"
    if isinstance(exc, urllib.error.URLError):
        return one_line(str(exc.reason), 200)
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return one_line(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)


def _fetch_within(url: str, timeout: float, max_bytes: int) -> bytes:
    """Run :func:`_fetch` in a daemon thread and wait for it at most ``timeout`` seconds.

    The worker thread keeps the deadline exact even where a socket timeout cannot (a host name
    lookup, a server sending a byte at a time); at the deadline its sockets are shut.

    Raises:
        MechprobeError: One line: ``could not download <url>: <why>``.
    """
    deadline = Deadline(timeout)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["body"] = _fetch(url, deadline, max_bytes)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="mechprobe-download", daemon=True)
    worker.start()
    try:
        worker.join(max(0.0, deadline.end - time.monotonic()))
        timed_out = worker.is_alive()  # before cancel(), which makes the worker fail at once
    finally:
        deadline.cancel()
    where = one_line(url)
    if timed_out:
        raise MechprobeError(
            f"could not download {where}: no complete answer within the {timeout:g} s deadline"
        )
    error = outcome.get("error")
    if error is None:
        return outcome["body"]
    if isinstance(error, urllib.error.HTTPError):
        error.close()
    if isinstance(error, Failure | OSError | http.client.HTTPException | ValueError):
        raise MechprobeError(f"could not download {where}: {_reason(error, deadline)}") from error
    raise error  # a bug, not a network failure: keep its traceback


def _usable(path: Path, max_bytes: int) -> bool:
    """Whether a cached file can be used: a file within ``max_bytes`` that passes the text checks.

    A cached file that fails them (written by an older mechprobe without these checks) is removed.
    """
    if not path.is_file():
        return False
    try:
        size = path.stat().st_size
        if size <= max_bytes:
            _check_text(path.read_bytes())
            return True
    except FileNotFoundError:
        return False
    except (OSError, Failure):
        pass
    path.unlink(missing_ok=True)
    return False


def cached_download(
    url: str, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES
) -> Path:
    """Download the plain text at ``url`` once into the cache and return the cached file's path.

    A cached copy is used without any network access. Otherwise the text is fetched under the
    bounds in this module's description and written atomically; nothing is cached on failure.

    Args:
        url: An ``http://`` or ``https://`` URL.
        timeout: Deadline in seconds for the whole download (lookup, connection, redirects,
            headers and body together).
        max_bytes: Largest body accepted, enforced while reading (default 32 MiB).

    Returns:
        The path of the cached file (``cache_file(url)``).

    Raises:
        MechprobeError: One line, ``could not download <url>: <why>``, for any network failure,
            a refused redirect, a body cut short or over ``max_bytes``, an HTML page or binary
            file, or a cache that cannot be written.

    Example:
        >>> cached_download("https://example.org/story.txt", timeout=10)  # doctest: +SKIP
        PosixPath('.../texts/...-story.txt')
        >>> cached_download("ftp://example.org/story.txt")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: could not download ftp://example.org/story.txt: ...
    """
    from mechprobe.io import atomic_path

    where = one_line(url)
    if not 0 < timeout < float("inf"):
        raise MechprobeError(f"the download timeout must be a finite number > 0 s, got {timeout!r}")
    if not max_bytes > 0:
        raise MechprobeError(f"the download size limit must be > 0 bytes, got {max_bytes!r}")
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise MechprobeError(f"could not download {where}: bad URL ({exc})") from None
    if scheme not in ("http", "https"):
        raise MechprobeError(f"could not download {where}: only http(s) URLs are downloaded")
    dest = cache_file(url)
    if _usable(dest, max_bytes):
        return dest
    body = _fetch_within(url, timeout, max_bytes)
    try:
        _check_text(body)
    except Failure as exc:
        raise MechprobeError(f"could not download {where}: {exc}") from None
    try:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(body)
    except OSError as exc:
        why = one_line(exc.strerror or str(exc), 120)
        msg = f"could not download {where}: cannot write the cache {dest}: {why}"
        raise MechprobeError(msg) from None
    return dest
