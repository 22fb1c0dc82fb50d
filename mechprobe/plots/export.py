"""Write plotly figures: interactive HTML always, static PNG when a headless browser is available.

PNG export goes through kaleido, which drives Chromium; all PNGs of one call are rendered in one
batch (starting the browser costs a few seconds, each further figure a fraction of a second).
Inside `png_session` (the runner holds one for a whole run) every call renders in the same
browser, started once, and in the same page (`_keep_page`). Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechprobe.io import atomic_path

if TYPE_CHECKING:
    import plotly.graph_objects as go

log = logging.getLogger(__name__)


def png_available() -> bool:
    """Whether a Chromium/Chrome for kaleido can be found (``MECHPROBE_NO_PNG=1`` disables PNG).

    Example:
        >>> isinstance(png_available(), bool)
        True
    """
    if os.environ.get("MECHPROBE_NO_PNG") == "1":
        return False
    if os.environ.get("BROWSER_PATH"):
        return True
    names = ("chromium", "chromium-browser", "google-chrome", "chrome")
    return any(shutil.which(n) for n in names)


def save_figures(
    figures: Mapping[str, go.Figure], directory: str | os.PathLike[str], *, png: bool | None = None
) -> list[Path]:
    """Write each figure as ``<name>.html`` and ``<name>.json`` (+ ``.png``) in ``directory``.

    HTML files share one ``plotly.min.js`` written beside them, so they open offline; the JSON
    spec lets ``mechprobe all`` embed the figure in its self-contained report.

    Args:
        figures: ``{name: plotly Figure}``.
        directory: Destination directory (created).
        png: Force PNG on/off; default: when a browser is available.

    Returns:
        The paths written.

    Example:
        >>> import plotly.graph_objects as go
        >>> save_figures({"curve": go.Figure(go.Scatter(y=[1, 2]))}, "out/figures", png=False)
        [PosixPath('out/figures/curve.html'), PosixPath('out/figures/curve.json')]
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, (name, fig) in enumerate(figures.items()):
        with atomic_path(out / f"{name}.html") as tmp:
            # The first file carries the bundle path; all share plotly.min.js in `out`.
            fig.write_html(str(tmp), include_plotlyjs="directory", full_html=True)
        written.append(out / f"{name}.html")
        with atomic_path(out / f"{name}.json") as tmp:  # the spec, for the one-page report
            tmp.write_text(fig.to_json(), encoding="utf-8")
        written.append(out / f"{name}.json")
        if i == 0 and not (out / "plotly.min.js").exists():
            from plotly.offline import get_plotlyjs

            with atomic_path(out / "plotly.min.js") as tmp:
                tmp.write_text(get_plotlyjs(), encoding="utf-8")
    if png if png is not None else png_available():
        written += _write_pngs(figures, out)
    return written


#: Seconds a batch of PNGs may take in a session's browser (plus this much per figure) before
#: the session is given up and the batch is rendered again, each figure in a browser of its own.
SESSION_TIMEOUT_S = 60.0
_session = {"open": False}


@contextlib.contextmanager
def png_session(png: bool | None = None) -> Iterator[bool]:
    """One headless browser for every PNG exported inside (kaleido's sync server).

    Without it each `save_figures` call starts and stops Chromium (a few seconds). Nested
    sessions share the outer one; where no browser is found (`png_available`) or ``png`` is
    False nothing starts. Yields whether a session is open.

    Example:
        >>> with png_session(png=False) as open_:
        ...     open_
        False
    """
    if _session["open"] or png is False or not png_available():
        yield _session["open"]
        return
    import kaleido

    try:
        kaleido.start_sync_server(silence_warnings=True)
    except Exception as exc:  # a browser that cannot start: each call starts its own
        log.warning("PNG session not started (%s)", type(exc).__name__)
        yield False
        return
    _session["open"] = True
    try:
        with _keep_page():
            yield True
    finally:
        _end_session()


@contextlib.contextmanager
def _keep_page() -> Iterator[None]:
    """Inside a session, render each figure in the page the last one used, not a reloaded one.

    kaleido 1.x reloads its tab after every figure, so each PNG parses plotly.js (3.5 MB) again:
    most of the ~0.5 s of browser CPU a figure took. ``Plotly.toImage`` draws in a detached
    element it removes, so the page holds nothing from one figure to the next: the 24 PNGs of a
    smollm2 run came out byte-identical either way, and the export took 6.0-6.5 s instead of
    9-16 s (``tests/test_png_session.py`` compares the bytes). The patch lives only while the
    session is open and is left out for a kaleido without the method it replaces.
    """
    try:
        from kaleido.kaleido import Kaleido
    except ImportError:
        yield
        return
    original = getattr(Kaleido, "_return_kaleido_tab", None)
    if original is None:
        yield
        return

    async def return_tab(self: Any, tab: Any) -> None:
        await self.tabs_ready.put(tab)

    Kaleido._return_kaleido_tab = return_tab
    try:
        yield
    finally:
        Kaleido._return_kaleido_tab = original


def _end_session() -> None:
    import kaleido

    if _session["open"]:
        _session["open"] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kaleido.stop_sync_server(silence_warnings=True)


def _render_pngs(figs: list[go.Figure], paths: list[Path]) -> None:
    import plotly.io as pio

    def render() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pio.write_images(
                figs,
                [str(p) for p in paths],
                width=[f.layout.width or 1000 for f in figs],
                height=[f.layout.height or 600 for f in figs],
            )

    if not _session["open"]:
        render()
        return
    # kaleido's server waits without a limit: a browser that died must not hang the run
    failed: list[BaseException] = []

    def guarded() -> None:
        try:
            render()
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=guarded, daemon=True)
    worker.start()
    worker.join(SESSION_TIMEOUT_S * (1 + len(figs)))
    if worker.is_alive():
        _end_session()
        raise TimeoutError("the PNG session's browser did not answer")
    if failed:
        raise failed[0]


def _write_pngs(figures: Mapping[str, go.Figure], out: Path) -> list[Path]:
    names = list(figures)
    tmps = {n: out / f".{n}.png.tmp.png" for n in names}
    try:
        _render_pngs([figures[n] for n in names], [tmps[n] for n in names])
        done = names
    except Exception:  # a batch can fail as a whole (seen with kaleido 1.x): go one by one
        done = []
        for n in names:
            try:
                _render_pngs([figures[n]], [tmps[n]])
                done.append(n)
            except Exception as exc:  # a broken browser must not lose the other results
                log.warning("PNG export of %s skipped (%s)", n, type(exc).__name__)
    paths = []
    for n in names:
        if n in done:
            os.replace(tmps[n], out / f"{n}.png")
            paths.append(out / f"{n}.png")
        tmps[n].unlink(missing_ok=True)
    return paths
