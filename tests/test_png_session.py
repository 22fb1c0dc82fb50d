"""A run's PNGs are rendered in one browser session, not one browser per step."""

from __future__ import annotations

import pytest

from mechprobe.plots import export
from tests.helpers import chromium

pytestmark = pytest.mark.browser


@pytest.fixture
def launches(monkeypatch):
    """Count kaleido's browser starts (each ``Kaleido`` context starts one Chromium)."""
    import kaleido
    import kaleido._sync_server

    chromium()
    monkeypatch.delenv("MECHPROBE_NO_PNG", raising=False)
    count = []

    class Counting(kaleido.Kaleido):
        def __init__(self, *args, **kwargs):
            count.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(kaleido, "Kaleido", Counting)
    monkeypatch.setattr(kaleido._sync_server, "Kaleido", Counting)
    return count


def _figures(k):
    import plotly.graph_objects as go

    return {
        f"f{k}{i}": go.Figure(go.Bar(y=[i, k]), layout={"width": 320, "height": 200})
        for i in range(2)
    }


def test_png_session_starts_the_browser_once_for_several_steps(tmp_path, launches):
    from PIL import Image

    with export.png_session() as opened:
        assert opened
        for k in range(3):  # three steps, each its own save_figures call
            export.save_figures(_figures(k), tmp_path / f"step{k}", png=True)
    assert len(launches) == 1
    for k in range(3):
        for i in range(2):
            with Image.open(tmp_path / f"step{k}" / f"f{k}{i}.png") as img:
                assert img.size == (320, 200)
    assert not export._session["open"]  # closed again: later calls start their own browser
    export.save_figures(_figures(9), tmp_path / "after", png=True)
    assert len(launches) == 2 and (tmp_path / "after" / "f90.png").is_file()


def test_no_session_without_png(launches):
    with export.png_session(png=False) as opened:
        assert not opened
    assert launches == []


def test_a_session_renders_the_same_bytes_as_a_fresh_browser(tmp_path, launches):
    """The session keeps its page between figures (no reload); the PNGs must not change."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sub = make_subplots(rows=1, cols=2)
    sub.add_trace(go.Scattergl(x=list(range(500)), y=[i % 7 for i in range(500)]), row=1, col=1)
    sub.add_trace(go.Scatter(x=[1, 2, 3], y=[1, 10, 100]), row=1, col=2)
    sub.update_yaxes(type="log", row=1, col=2)
    figures = {
        "heat": go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])),
        "box": go.Figure(go.Box(y=[1, 2, 3, 9])),
        "sub": sub,
        "bar": go.Figure(go.Bar(y=[3, 1]), layout={"title": {"text": "t<br><sup>s</sup>"}}),
    }
    for fig in figures.values():
        fig.update_layout(width=400, height=300)
    with export.png_session() as opened:
        assert opened
        for name, fig in figures.items():  # one call per figure: the page is reused in between
            export.save_figures({name: fig}, tmp_path / "session", png=True)
    for name, fig in figures.items():  # outside a session each call starts its own browser
        export.save_figures({name: fig}, tmp_path / "fresh", png=True)
    for name in figures:
        assert (tmp_path / "session" / f"{name}.png").read_bytes() == (
            tmp_path / "fresh" / f"{name}.png"
        ).read_bytes(), name
    from kaleido.kaleido import Kaleido

    assert Kaleido._return_kaleido_tab.__name__ == "_return_kaleido_tab"  # restored
