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
