"""Bounded downloads (mechprobe.corpus.download) against a loopback HTTP server.

The server binds 127.0.0.1 only, on a free port; it accepts a bounded number of connections,
its handlers give up after a few seconds, and it shuts itself down after a short lifetime.
Every test points ``MECHPROBE_CACHE`` at ``tmp_path``.
"""

from __future__ import annotations

import email.message
import hashlib
import io
import os
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mechprobe.corpus import text as text_module
from mechprobe.corpus import transport
from mechprobe.corpus.download import cache_file, cached_download, check_redirect
from mechprobe.corpus.text import load_text
from mechprobe.errors import MechprobeError

pytestmark = [pytest.mark.unit, pytest.mark.faults]

GOOD = b"It is not here.\r\nShe could not see the boat, but she can swim.\r\n" * 40
CAP = 256 * 1024  # the size cap used in these tests
DEADLINE = 0.6  # the deadline of the tests that wait for it (seconds)
SLACK = 0.8  # how late an error may come after the deadline on a busy 2-core machine
HANDLER_LIMIT = 4.0  # no handler runs longer than this
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06" * 8


# ---------------------------------------------------------------- the loopback server


def _head(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
    h.send_response(status)
    for key, value in {"Connection": "close", **headers}.items():
        h.send_header(key, value)
    h.end_headers()


def _send(
    h: BaseHTTPRequestHandler,
    body: bytes,
    status: int = 200,
    ctype: str | None = "text/plain; charset=utf-8",
    length: int | None = None,
    **headers: str,
) -> None:
    hdrs = {"Content-Length": str(len(body) if length is None else length), **headers}
    if ctype is not None:
        hdrs["Content-Type"] = ctype
    _head(h, status, hdrs)
    h.wfile.write(body)


def _drip(h: BaseHTTPRequestHandler, data: bytes, every: float) -> None:
    for i in range(len(data)):
        h.wfile.write(data[i : i + 1])
        h.wfile.flush()
        time.sleep(every)


def _endless(h: BaseHTTPRequestHandler, chunked: bool) -> None:
    """Send 64 KiB blocks until the client goes away or HANDLER_LIMIT passes."""
    block = b"not a short text\n" * 3855  # 65535 bytes
    start = time.monotonic()
    while time.monotonic() - start < HANDLER_LIMIT:
        h.wfile.write(b"ffff\r\n" + block + b"\r\n" if chunked else block)
        h.server.sent += len(block)  # type: ignore[attr-defined]


def _reset(h: BaseHTTPRequestHandler) -> None:
    _send(h, GOOD[:10], length=len(GOOD))
    h.wfile.flush()
    time.sleep(0.05)
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    os.close(h.connection.detach())  # closing with SO_LINGER 0 sends a reset


def _redirect(target: str, code: int = 302, body: bytes = b"") -> Callable:
    def route(h: BaseHTTPRequestHandler) -> None:
        location = target.replace("{port}", str(h.server.server_address[1]))
        if body:
            _head(h, code, {"Location": location})
            _endless(h, chunked=False)
        else:
            _send(h, b"", status=code, ctype=None, Location=location)

    return route


def _chain(h: BaseHTTPRequestHandler) -> None:
    left = int(h.path.rsplit("/", 1)[1])
    _send(h, b"", status=302, ctype=None, Location=f"/chain/{left - 1}" if left else "/good.txt")


ROUTES: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {
    "/good.txt": lambda h: _send(h, GOOD),
    "/no-type.txt": lambda h: _send(h, GOOD, ctype=None),
    "/latin1.txt": lambda h: _send(h, "Il ne peut pas être là.\n".encode("latin-1") * 20),
    "/empty.txt": lambda h: _send(h, b""),
    "/short.txt": lambda h: _send(h, GOOD[:100], length=len(GOOD)),
    "/short-chunked.txt": lambda h: (
        _head(h, 200, {"Transfer-Encoding": "chunked", "Content-Type": "text/plain"}),
        h.wfile.write(b"400\r\n" + GOOD[:100]),
    ),
    "/reset.txt": _reset,
    "/declared-big.txt": lambda h: (
        _head(h, 200, {"Content-Length": str(CAP + 1), "Content-Type": "text/plain"}),
        time.sleep(HANDLER_LIMIT),
    ),
    "/endless.txt": lambda h: (
        _head(h, 200, {"Content-Type": "text/plain"}),
        _endless(h, chunked=False),
    ),
    "/endless-chunked.txt": lambda h: (
        _head(h, 200, {"Transfer-Encoding": "chunked", "Content-Type": "text/plain"}),
        _endless(h, chunked=True),
    ),
    "/slow.txt": lambda h: (
        _head(h, 200, {"Content-Length": "40", "Content-Type": "text/plain"}),
        _drip(h, GOOD[:40], every=0.1),
    ),
    "/slow-headers.txt": lambda h: _drip(h, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 40, 0.1),
    "/page.html": lambda h: _send(
        h, b"<html><body>It is not here.</body></html>", ctype="text/html"
    ),
    "/html-as-text.txt": lambda h: _send(
        h, b"\n  <!DOCTYPE html>\n<html lang='en'><p>It is not here.</p></html>"
    ),
    "/image.png": lambda h: _send(h, PNG, ctype="image/png"),
    "/binary.txt": lambda h: _send(h, PNG, ctype="application/octet-stream"),
    "/gzip.txt": lambda h: _send(h, b"\x1f\x8b\x08\x00" + PNG, **{"Content-Encoding": "gzip"}),
    "/error.txt": lambda h: _send(h, b"oops", status=500),
    "/to-good": _redirect("/good.txt", 301),
    "/to-good-endless-body": _redirect("/good.txt", 302, body=b"x"),
    "/to-file": _redirect("file:///etc/passwd"),
    "/to-ftp": _redirect("ftp://127.0.0.1:{port}/good.txt"),
    "/loop": _redirect("/loop", 307),
    "/no-location": lambda h: _send(h, b"", status=302, ctype=None),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = HANDLER_LIMIT  # socket timeout of each connection

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.paths.append(path)  # type: ignore[attr-defined]
        self.close_connection = True
        route = _chain if path.startswith("/chain/") else ROUTES.get(path)
        try:
            if route is None:
                _send(self, b"not found", status=404)
            else:
                route(self)
        except OSError:
            pass  # the client went away (as it should, after a refusal)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    """Loopback only, at most ``max_connections`` connections, stops after ``lifetime`` s."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, max_connections: int = 12, lifetime: float = 20.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths: list[str] = []
        self.sent = 0
        self._left = max_connections
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._timer = threading.Timer(lifetime, self.shutdown)
        self._timer.daemon = True

    def verify_request(self, request: object, client_address: object) -> bool:
        self._left -= 1
        return self._left >= 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def start(self) -> _Server:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MECHPROBE_CACHE", str(root))
    for var in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    return root


@pytest.fixture
def server(cache: Path) -> Iterator[_Server]:
    srv = _Server().start()
    yield srv
    srv.stop()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _fails(url: str, match: str, **kwargs: float) -> tuple[str, float]:
    """Call cached_download, expect a one-line MechprobeError matching ``match``."""
    start = time.monotonic()
    with pytest.raises(MechprobeError, match=match) as info:
        cached_download(url, **kwargs)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"could not download {url}: ")
    return message, elapsed


# ---------------------------------------------------------------- a good text


def test_good_text_cached_atomically_then_no_network(server, cache, monkeypatch):
    url = server.url("/good.txt")
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((Path(src), Path(dst)))
        assert Path(dst).name not in {p.name for p in _files(cache)}  # appears only now
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = cached_download(url, max_bytes=CAP)
    assert path == cache_file(url) and path.read_bytes() == GOOD
    [(tmp, dst)] = replaced
    assert dst == path and tmp.parent == path.parent and tmp.name.startswith(".")
    assert _files(cache) == [path]  # no temporary file left

    server.stop()  # a second call must not touch the network
    assert cached_download(url, max_bytes=CAP) == path
    assert server.paths == ["/good.txt"]


@pytest.mark.parametrize("route", ["/no-type.txt", "/latin1.txt", "/to-good", "/chain/4"])
def test_other_good_texts(server, cache, route):
    path = cached_download(server.url(route), timeout=5)
    assert path.is_file() and path.stat().st_size > 100


def test_redirect_body_is_not_read(server, cache):
    start = time.monotonic()
    path = cached_download(server.url("/to-good-endless-body"), timeout=5, max_bytes=CAP)
    assert path.read_bytes() == GOOD and time.monotonic() - start < 2.0
    assert server.paths == ["/to-good-endless-body", "/good.txt"]


def test_stale_cache_entries_are_replaced(server, cache):
    url = server.url("/good.txt")
    cache_file(url).write_bytes(b"<!doctype html><html></html>")  # cached by an older version
    assert cached_download(url).read_bytes() == GOOD
    cache_file(url).write_bytes(b"x" * (len(GOOD) + 1))  # over a later, smaller cap
    assert cached_download(url, max_bytes=len(GOOD)).read_bytes() == GOOD
    assert server.paths == ["/good.txt", "/good.txt"]


# ---------------------------------------------------------------- refused: one line each


@pytest.mark.parametrize(
    ("route", "match"),
    [
        ("/short.txt", rf"the body was cut short \(100 of {len(GOOD)} bytes\)"),
        ("/short-chunked.txt", r"the body was cut short \(100 bytes, then"),
        ("/reset.txt", r"connection was closed or reset|cut short"),
        ("/empty.txt", "empty body"),
        ("/error.txt", "the server answered HTTP 500"),
        ("/missing.txt", "the server answered HTTP 404 Not Found"),
        ("/to-file", r"redirected to file:///etc/passwd, which is not an http\(s\) URL"),
        ("/to-ftp", r"redirected to ftp://127\.0\.0\.1:\d+/good\.txt, which is not an http"),
        ("/loop", "redirect loop"),
        ("/chain/5", "more than 5 redirects"),
        ("/no-location", "redirect without a Location"),
        ("/page.html", r"an HTML page \(text/html\), not a plain text; hint: give the URL"),
        ("/html-as-text.txt", "an HTML page, not a plain text; hint: give the URL"),
        ("/image.png", r"a binary file \(image/png\), not a text; hint: mechprobe reads plain"),
        ("/binary.txt", r"a binary file \(control bytes\), not a text; hint:"),
        ("/gzip.txt", "gzip-compressed body; hint:"),
    ],
)
def test_refused(server, cache, route, match):
    _, elapsed = _fails(server.url(route), match, timeout=5, max_bytes=CAP)
    assert elapsed < 2.0
    assert _files(cache) == []


@pytest.mark.parametrize("route", ["/endless.txt", "/endless-chunked.txt"])
def test_oversized_body_refused_while_reading(server, cache, route):
    # the body never ends: only a cap enforced while reading can end the download before the
    # deadline, with this message
    message, elapsed = _fails(
        server.url(route),
        r"over the 256 KiB download limit \(stopped reading",
        timeout=5,
        max_bytes=CAP,
    )
    assert elapsed < 2.0 and "raise the limit" in message
    assert _files(cache) == []


def test_declared_oversize_refused_before_the_body(server, cache):
    _, elapsed = _fails(
        server.url("/declared-big.txt"),
        rf"is 256 KiB \({CAP + 1} bytes, per its Content-Length\), over the 256 KiB",
        timeout=5,
        max_bytes=CAP,
    )
    assert elapsed < 2.0  # the server sends no body: reading it would wait for the deadline
    assert _files(cache) == []


@pytest.mark.parametrize("route", ["/slow.txt", "/slow-headers.txt"])
def test_slow_server_hits_the_one_deadline(server, cache, route):
    # each byte comes well within any per-read timeout; the whole answer does not
    _, elapsed = _fails(server.url(route), rf"within the {DEADLINE:g} s deadline", timeout=DEADLINE)
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + SLACK
    assert _files(cache) == []


def test_connection_refused(cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _fails(f"http://127.0.0.1:{port}/x.txt", "the connection was refused$", timeout=5)
    assert _files(cache) == []


def test_dns_failure(cache, monkeypatch):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    _fails("http://no-such-host.invalid/x.txt", r"cannot resolve the host name \(Name or")
    assert _files(cache) == []


def test_hanging_dns_lookup_hits_the_deadline(cache, monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(HANDLER_LIMIT)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    try:
        _, elapsed = _fails("http://slow-dns.invalid/x.txt", "deadline", timeout=DEADLINE)
    finally:
        release.set()
    assert elapsed < DEADLINE + SLACK
    assert _files(cache) == []


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://127.0.0.1/x.txt", r"only http\(s\) URLs"),
        ("file:///etc/passwd", r"only http\(s\) URLs"),
        ("data:text/plain,hello", r"only http\(s\) URLs"),
        ("x.txt", r"only http\(s\) URLs"),
        ("http://[::1/x.txt", r"bad URL \(Invalid IPv6 URL\)"),
        ("http:///x.txt", "no host given"),
    ],
)
def test_only_http_urls(cache, url, match):
    _fails(url, match)


def test_bad_limits(cache):
    for timeout in (0, -1, float("inf"), float("nan")):
        with pytest.raises(MechprobeError, match="timeout must be a finite number > 0"):
            cached_download("http://127.0.0.1/x.txt", timeout=timeout)
    with pytest.raises(MechprobeError, match="size limit must be > 0"):
        cached_download("http://127.0.0.1/x.txt", max_bytes=0)


def test_cache_write_failure_leaves_nothing(server, cache, monkeypatch):
    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    _fails(server.url("/good.txt"), "cannot write the cache .*: No space left on device")
    assert _files(cache) == []


# ---------------------------------------------------------------- redirect policy


def test_redirect_policy():
    check_redirect("http://a.org/x", "https://a.org/x.txt")  # upgrade: fine
    check_redirect("https://a.org/x", "HTTPS://b.org/x.txt")
    check_redirect("http://a.org/x", "http://b.org/x.txt")
    with pytest.raises(MechprobeError, match="from https down to plain http"):
        check_redirect("https://a.org/x", "http://a.org/x.txt")
    for target in ("ftp://a.org/x", "file:///etc/passwd", "gopher://a.org/", "data:,x"):
        with pytest.raises(MechprobeError, match=r"not an http\(s\) URL"):
            check_redirect("http://a.org/x", target)


def test_https_to_http_redirect_is_refused_by_the_handler():
    # no TLS server here: drive the redirect handler with an https request directly
    headers = email.message.Message()
    headers["Location"] = "http://127.0.0.1:9/x.txt"
    request = urllib.request.Request("https://example.org/x.txt")
    with pytest.raises(transport.Failure, match="from https down to plain http"):
        transport.RedirectHandler().http_error_302(request, io.BytesIO(), 302, "Found", headers)


# ---------------------------------------------------------------- through load_text


@pytest.fixture
def gutenberg(server, monkeypatch):
    """Point ``gutenberg:ID`` at the loopback server: ``/epub/ID.txt`` (404 unless ID is 7)."""
    ROUTES["/epub/7.txt"] = ROUTES["/good.txt"]
    monkeypatch.setattr(text_module, "GUTENBERG_URL", server.url("/epub/{id}.txt"))
    monkeypatch.delenv(text_module.TEXT_ENV, raising=False)
    yield server
    del ROUTES["/epub/7.txt"]


def test_load_text_download_is_cached(gutenberg, cache):
    a = load_text("gutenberg:7")
    b = load_text("gutenberg:7")
    assert gutenberg.paths == ["/epub/7.txt"]
    assert a.text == b.text == GOOD.decode() and "\r\n" in a.text
    assert a.sha256 == hashlib.sha256(GOOD).hexdigest()
    assert a.origin == str(cache_file(gutenberg.url("/epub/7.txt")))
    assert a.origin.startswith(str(cache / "texts")) and not a.fallback


def test_load_text_default_download_failure_falls_back_loudly(gutenberg, cache, capsys):
    from mechprobe.data import read_data_text

    src = load_text()  # the default gutenberg:32154 -> HTTP 404 here
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("WARNING: could not download")
    assert "/epub/32154.txt" in err and "HTTP 404" in err and "sample" in err
    assert src.fallback and src.source == text_module.DEFAULT_TEXT_SOURCE
    assert src.text == read_data_text(text_module.FALLBACK_TEXT)
    assert src.sha256 == hashlib.sha256(src.text.encode()).hexdigest()
    assert _files(cache) == []


def test_load_text_other_download_failure_is_user_error(gutenberg, cache, capsys):
    with pytest.raises(MechprobeError, match=r"could not download .*/epub/11\.txt: .*HTTP 404"):
        load_text("gutenberg:11")
    with pytest.raises(MechprobeError, match=r"could not download .*/short\.txt: .*cut short"):
        load_text(gutenberg.url("/short.txt"))
    with pytest.raises(MechprobeError, match=r"could not download .*/epub/32154\.txt"):
        load_text("gutenberg:32154")  # the default, but asked for explicitly: no fallback
    assert capsys.readouterr().err == ""  # no fallback for these
    assert _files(cache) == []
