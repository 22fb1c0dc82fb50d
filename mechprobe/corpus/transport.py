"""The transport of one bounded download: a deadline over every socket, http(s)-only redirects.

:mod:`mechprobe.corpus.download` builds on this: :func:`opener` gives a urllib opener whose
connections take their socket timeout from a :class:`Deadline` and register their sockets
with it, so that the caller can shut them when the deadline passes; redirects are followed
only between http(s) URLs, never from https down to http, at most :data:`MAX_REDIRECTS`.

Example:
    >>> check_redirect("https://example.org/a", "https://example.org/a.txt")
"""

from __future__ import annotations

import functools
import http.client
import re
import socket
import string
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

from mechprobe.errors import MechprobeError

#: Most redirects followed for one download.
MAX_REDIRECTS = 5

_SAFE = string.punctuation


class Failure(Exception):
    """Why a download failed, as the part of the message after ``could not download <url>:``."""


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line (control characters replaced), cut to ``limit`` characters."""
    flat = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Deadline:
    """The deadline of one download, and the sockets to shut when it passes.

    The fetch runs in a worker thread; the caller waits for it at most until the deadline,
    then calls :meth:`cancel`, which shuts the worker's sockets so that it ends promptly.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.monotonic() + timeout
        self._cancelled = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def left(self) -> float:
        """Seconds left (raises ``TimeoutError`` when none are, or after :meth:`cancel`)."""
        left = self.end - time.monotonic()
        if left <= 0 or self._cancelled:
            raise TimeoutError("deadline passed")
        return left

    def watch(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` at :meth:`cancel` (at once if already cancelled)."""
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self._cancelled:
                _shut(sock)

    def cancel(self) -> None:
        """Shut every watched socket; later connections fail at once."""
        with self._lock:
            self._cancelled = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown on the file descriptor (also for an SSLSocket): a blocked recv in
    # the worker returns at once.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


class _Watched:
    """Mixin for a connection whose socket timeout is the time left and whose socket is watched."""

    sock: Any
    timeout: float | None

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        self.timeout = self._deadline.left()
        super().connect()  # type: ignore[misc]
        self._deadline.watch(self.sock)


class _HTTPConnection(_Watched, http.client.HTTPConnection):
    """An HTTP connection under the download's deadline."""


class _HTTPSConnection(_Watched, http.client.HTTPSConnection):
    """An HTTPS connection under the download's deadline."""


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._deadline), req)


def check_redirect(old: str, new: str) -> None:
    """Refuse a redirect that leaves http(s) or goes from https down to plain http.

    Raises:
        MechprobeError: One line naming the refused target.

    Example:
        >>> check_redirect("http://example.org/a", "https://example.org/a.txt")
        >>> check_redirect("http://example.org/a", "ftp://example.org/a.txt")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: redirected to ftp://example.org/a.txt, which is not ...
    """
    scheme = urllib.parse.urlsplit(new).scheme.lower()
    if scheme not in ("http", "https"):
        raise MechprobeError(f"redirected to {one_line(new)}, which is not an http(s) URL")
    if scheme == "http" and urllib.parse.urlsplit(old).scheme.lower() == "https":
        raise MechprobeError(f"refused a redirect from https down to plain http ({one_line(new)})")


class RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows at most `MAX_REDIRECTS` http(s) redirects; never reads a redirect's body."""

    def http_error_302(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
    ) -> Any:
        fp.close()  # a redirect's body is never read: it could be anything, of any size
        location = headers.get("Location") or headers.get("URI")
        if not location:
            raise Failure(f"HTTP {code} redirect without a Location")
        # as urllib does: headers are decoded as latin-1; percent-encode what is not ASCII
        location = urllib.parse.quote(location.strip(), encoding="iso-8859-1", safe=_SAFE)
        new_url = urllib.parse.urljoin(req.full_url, location)
        try:
            check_redirect(req.full_url, new_url)
        except MechprobeError as exc:
            raise Failure(str(exc)) from None
        visited: list[str] = getattr(req, "mechprobe_visited", [req.full_url])
        if new_url in visited:
            raise Failure(f"redirect loop at {one_line(new_url)}")
        if len(visited) > MAX_REDIRECTS:
            raise Failure(f"more than {MAX_REDIRECTS} redirects")
        new = self.redirect_request(req, fp, code, msg, headers, new_url)
        if new is None:  # pragma: no cover - redirect_request raises instead for GET
            raise Failure(f"HTTP {code} redirect not followed")
        new.mechprobe_visited = [*visited, new_url]  # type: ignore[attr-defined]
        return self.parent.open(new, timeout=req.timeout)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    """An opener for http(s) only (proxies from the environment; no ftp, file or data URLs)."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _HTTPHandler(deadline),
        _HTTPSHandler(deadline),
        urllib.request.HTTPDefaultErrorHandler(),
        RedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    opener.addheaders = [
        ("User-Agent", "mechprobe"),
        ("Accept", "text/plain, text/*;q=0.9, */*;q=0.1"),
        ("Accept-Encoding", "identity"),
    ]
    return opener
